"""The paper's claims decided by rules fixed before the runs: ``python -m pure_rl.experiments.claims SWEEP_OUT``.

A sweep file's ``claims`` section maps the roles below to its method names; every rule reads the runs'
greedy held-out accuracy (``eval_accuracy``, logged at iteration 0 with ``train.eval_at_start`` and every
``train.eval_every``) and their steps per response, from ``SWEEP_OUT/results/METHOD_seedK.json``. The rules are
docs/results.md's pre-registration ("The study with a learned PRM") written as code, so that the verdicts are
rebuilt with the figures and are the same for whoever re-runs the study with other seeds.

    role              the method that plays it
    vr_only           the verifiable reward alone (claim 3's reference)
    sum_prm           sum-form credit, PRM only          (claim 1)
    sum_prm_vr        sum-form credit, PRM + VR          (claims 1 and 2)
    min_prm_vr        min-form credit, PRM + VR          (claim 2; against Clip and Delta)
    min_prm_vr_share  min-form PRM + VR on a share of the prompts (claim 3)
    min_softmin_prm   min-form PRM only, softmin         (claim 4; the details' default)
    min_exact_prm     min-form PRM only, exact min       (claim 4)
    clip, delta       Gao et al. 2024's bounded-reward fixes, PRM + VR
    masked, n_minus_1, ref_whiten   min-form PRM only with one reference-code detail switched (H2, H3, H4)

Per run (acc = greedy held-out accuracy, one value per evaluation):

- *collapsed*: its last acc is below half of its best acc;
- *hacked*: its steps per response over the last ``window`` iterations average at least the budget minus half a
  step (``env.max_steps`` - 0.5), or its repeated-step share there is above 0.5;
- *holds*: its last acc is within 5 points of its best.

A verdict is ``confirmed``, ``refuted``, ``partial`` (neither rule's condition is met) or ``pending`` (a run it
needs is missing or unfinished).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pure_rl.experiments.records import prm_record_path

__all__ = ["ROLES", "RunOutcome", "decide_claims", "format_claims", "load_outcomes"]

ROLES = (
    "vr_only",
    "sum_prm",
    "sum_prm_vr",
    "min_prm_vr",
    "min_prm_vr_share",
    "min_softmin_prm",
    "min_exact_prm",
    "clip",
    "delta",
    "masked",
    "n_minus_1",
    "ref_whiten",
)
HOLD = 0.05  # "within 5 points of its best"
EQUAL = 0.05  # two methods' final means within 5 points are "alike"
APART = 0.10  # claim 4's refutation: more than 10 points apart


@dataclass
class RunOutcome:
    """What the rules read from one finished run."""

    eval_iterations: list[int]  # where greedy held-out accuracy was measured
    eval_accuracy: list[float]
    steps_start: float  # mean steps per response over the first `window` iterations
    steps_end: float  # ... and over the last `window`
    repeated_end: float  # mean repeated-step share over the last `window` iterations (nan if not logged)
    budget: int  # env.max_steps
    finished: bool

    @property
    def best(self) -> float:
        return max(self.eval_accuracy)

    @property
    def last(self) -> float:
        return self.eval_accuracy[-1]

    @property
    def collapsed(self) -> bool:
        return self.last < 0.5 * self.best

    @property
    def hacked(self) -> bool:
        return self.steps_end >= self.budget - 0.5 or (np.isfinite(self.repeated_end) and self.repeated_end > 0.5)

    @property
    def holds(self) -> bool:
        return self.last >= self.best - HOLD


def load_outcomes(out: str | Path, window: int = 10) -> dict[str, dict[int, RunOutcome]]:
    """Every run of a sweep's ``results/`` folder, by method and seed."""
    outcomes: dict[str, dict[int, RunOutcome]] = {}
    for path in sorted(Path(out, "results").glob("*.json")):
        r = json.loads(path.read_text())
        it = np.asarray(r["iteration"], dtype=float)
        acc = np.asarray(r["eval_accuracy"], dtype=float)
        steps = np.asarray(r["steps_per_response"], dtype=float)
        repeated = np.asarray(r.get("repeated_step_ratio", [np.nan] * len(it)), dtype=float)
        trained = np.isfinite(steps)  # the iteration-0 row holds evaluation metrics only
        outcomes.setdefault(r["method"], {})[int(r["seed"])] = RunOutcome(
            eval_iterations=[int(i) for i in it[np.isfinite(acc)]],
            eval_accuracy=[float(a) for a in acc[np.isfinite(acc)]],
            steps_start=float(np.mean(steps[trained][:window])),
            steps_end=float(np.mean(steps[trained][-window:])),
            repeated_end=float(np.nanmean(repeated[trained][-window:])) if np.isfinite(repeated).any() else np.nan,
            budget=int(r["max_steps"]),
            finished="unfinished" not in r["summary"],
        )
    return outcomes


def _runs(outcomes: dict, roles: dict[str, str], role: str) -> list[RunOutcome] | None:
    runs = list(outcomes.get(roles.get(role, ""), {}).values())
    if not runs or not all(r.finished and r.eval_accuracy for r in runs):
        return None
    return runs


def _final_mean(runs: list[RunOutcome]) -> float:
    return float(np.mean([r.last for r in runs]))


def _pending(*roles: str) -> dict:
    return {"verdict": "pending", "evidence": f"needs finished runs of {', '.join(roles)}"}


def _collapses_with_the_hack(runs: list[RunOutcome]) -> bool:
    """Claim 1's rule for one method: collapsed and hacked on at least 2 of 3 seeds (2/3 of the seeds)."""
    return sum(r.collapsed and r.hacked for r in runs) >= 2 * len(runs) / 3


def _per_seed(runs: list[RunOutcome]) -> str:
    return "; ".join(
        f"acc {r.eval_accuracy[0]:.2f}->{r.last:.2f} (best {r.best:.2f}), steps {r.steps_start:.1f}->{r.steps_end:.1f}"
        for r in runs
    )


def claim_1(outcomes: dict, roles: dict) -> dict:
    """Sum-form PRM-only and PRM+VR collapse (>= 2 of 3 seeds) with the hack; refuted if every seed holds."""
    verdicts, evidence = [], []
    for role in ("sum_prm", "sum_prm_vr"):
        runs = _runs(outcomes, roles, role)
        if runs is None:
            return _pending("sum_prm", "sum_prm_vr")
        if _collapses_with_the_hack(runs):
            verdicts.append("confirmed")
        elif all(r.holds for r in runs):
            verdicts.append("refuted")
        else:
            verdicts.append("partial")
        evidence.append(f"{roles[role]}: {verdicts[-1]} ({_per_seed(runs)})")
    verdict = verdicts[0] if verdicts[0] == verdicts[1] else "partial"
    return {"verdict": verdict, "evidence": " | ".join(evidence)}


def claim_2(outcomes: dict, roles: dict) -> dict:
    """Min-form PRM+VR holds (every seed within 5 points of its best, steps within +-1 of the start) while
    sum-form PRM+VR collapses; refuted if a min-form seed collapses or hacks."""
    mins, sums = _runs(outcomes, roles, "min_prm_vr"), _runs(outcomes, roles, "sum_prm_vr")
    if mins is None or sums is None:
        return _pending("min_prm_vr", "sum_prm_vr")
    steady = all(r.holds and abs(r.steps_end - r.steps_start) <= 1.0 for r in mins)
    sum_hacked = _collapses_with_the_hack(sums)
    if any(r.collapsed or r.steps_end >= r.budget - 0.5 for r in mins):
        verdict = "refuted"
    elif steady and sum_hacked:
        verdict = "confirmed"
    else:
        verdict = "partial"
    evidence = f"{roles['min_prm_vr']}: {_per_seed(mins)} | sum-form collapses with the hack (claim 1): {sum_hacked}"
    return {"verdict": verdict, "evidence": evidence}


def claim_3(outcomes: dict, roles: dict) -> dict:
    """Min-form PRM+VR on a share of prompts reaches VR-only's final mean acc by half the iterations (its own
    seed mean, at an evaluation) and ends at or above it; refuted if its mean never reaches it."""
    shares, vr = _runs(outcomes, roles, "min_prm_vr_share"), _runs(outcomes, roles, "vr_only")
    if shares is None or vr is None:
        return _pending("min_prm_vr_share", "vr_only")
    target = _final_mean(vr)
    # Seed means at each evaluation the runs share (equal schedules: the same config but for one key).
    points = sorted(set.intersection(*(set(r.eval_iterations) for r in shares)))
    means = [float(np.mean([r.eval_accuracy[r.eval_iterations.index(p)] for r in shares])) for p in points]
    reached = [p for p, m in zip(points, means) if m >= target - 1e-9]
    half = max(points) / 2
    if reached and reached[0] <= half and means[-1] >= target - 1e-9:
        verdict = "confirmed"
    elif not reached:
        verdict = "refuted"
    else:
        verdict = "partial"
    curve = ", ".join(f"{p}: {m:.3f}" for p, m in zip(points, means))
    evidence = (
        f"VR-only final mean {target:.3f} ({len(vr)} seeds); {roles['min_prm_vr_share']} seed mean by iteration "
        f"{curve}; first reaches it at {reached[0] if reached else 'never'} (bar: by {half:g})"
    )
    return {"verdict": verdict, "evidence": evidence}


def claim_4(outcomes: dict, roles: dict) -> dict:
    """Exact min and softmin end within 5 points (seed means) and 1 step; refuted if more than 10 points apart or
    one collapses by claim 1's rule and the other does not."""
    soft, exact = _runs(outcomes, roles, "min_softmin_prm"), _runs(outcomes, roles, "min_exact_prm")
    if soft is None or exact is None:
        return _pending("min_softmin_prm", "min_exact_prm")
    gap = abs(_final_mean(soft) - _final_mean(exact))
    step_gap = abs(np.mean([r.steps_end for r in soft]) - np.mean([r.steps_end for r in exact]))
    if gap > APART or _collapses_with_the_hack(soft) != _collapses_with_the_hack(exact):
        verdict = "refuted"
    elif gap <= EQUAL and step_gap <= 1.0:
        verdict = "confirmed"
    else:
        verdict = "partial"
    evidence = (
        f"final mean acc softmin {_final_mean(soft):.3f}, exact {_final_mean(exact):.3f} (gap {gap:.3f}); "
        f"end steps gap {step_gap:.2f}"
    )
    return {"verdict": verdict, "evidence": evidence}


def against_bounded_rewards(outcomes: dict, roles: dict) -> dict[str, dict]:
    """Min-form PRM+VR against Clip and Delta: better / equal / worse by more than 5 points of final mean acc."""
    result = {}
    mins = _runs(outcomes, roles, "min_prm_vr")
    for role in ("clip", "delta"):
        other = _runs(outcomes, roles, role)
        if mins is None or other is None:
            result[role] = _pending("min_prm_vr", role)
            continue
        diff = _final_mean(mins) - _final_mean(other)
        verdict = "min-form better" if diff > EQUAL else "min-form worse" if diff < -EQUAL else "equal"
        evidence = f"final mean acc {_final_mean(mins):.3f} vs {roles[role]} {_final_mean(other):.3f}"
        result[role] = {"verdict": verdict, "evidence": evidence}
    return result


def reference_details(outcomes: dict, roles: dict, hackability: dict | None) -> dict[str, dict]:
    """H1-H4 of the pre-registration (the reference code's details, one switched at a time)."""
    base = _runs(outcomes, roles, "min_softmin_prm")
    result: dict[str, dict] = {}
    # H1: the empty-step hack needs a PRM that scores an empty step above the honest steps' minimum.
    if base is None or hackability is None:
        result["H1"] = _pending("min_softmin_prm", "the PRM's hackability table")
    else:
        empty, wrong, correct = (hackability[k]["mean"] for k in ("empty", "honest_wrong", "honest_correct"))
        shortened = any(r.steps_end < 0.5 * r.steps_start for r in base)
        if empty < wrong:
            verdict = "refuted" if shortened else "confirmed"
        elif empty > correct:
            verdict = "confirmed" if shortened else "refuted"
        else:
            verdict = "no prediction (empty between honest wrong and correct)"
        evidence = (
            f"empty {empty:.3f}, honest wrong {wrong:.3f}, honest correct {correct:.3f}; a seed shortened to "
            f"under half its start: {shortened} ({_per_seed(base)})"
        )
        result["H1"] = {"verdict": verdict, "evidence": evidence}
    for name, role in (("H2", "masked"), ("H4", "ref_whiten")):
        other = _runs(outcomes, roles, role)
        if base is None or other is None:
            result[name] = _pending("min_softmin_prm", role)
            continue
        gap = abs(_final_mean(base) - _final_mean(other))
        same_fate = _collapses_with_the_hack(base) == _collapses_with_the_hack(other)
        verdict = "confirmed" if gap < EQUAL and (name == "H4" or same_fate) else "refuted"
        evidence = (
            f"final mean acc {_final_mean(base):.3f} vs {_final_mean(other):.3f}; "
            f"the same fate by claim 1's rule (collapse with the hack): {same_fate}"
        )
        result[name] = {"verdict": verdict, "evidence": evidence}
    other = _runs(outcomes, roles, "n_minus_1")
    if base is None or other is None:
        result["H3"] = _pending("min_softmin_prm", "n_minus_1")
    else:
        longer = np.mean([r.steps_end for r in other]) - np.mean([r.steps_end for r in base])
        result["H3"] = {
            "verdict": "confirmed" if longer > 0.5 else "refuted",
            "evidence": f"end steps per response {longer:+.2f} against the default",
        }
    return dict(sorted(result.items()))


def decide_claims(outcomes: dict, roles: dict[str, str], hackability: dict | None = None) -> dict:
    """Every verdict, as data."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"claims: unknown roles {sorted(unknown)}; the roles are {list(ROLES)}")
    return {
        "claims": {
            "1. sum-form credit is hacked, then collapses": claim_1(outcomes, roles),
            "2. min-form credit prevents the hack": claim_2(outcomes, roles),
            "3. PRM+VR learns faster than VR alone": claim_3(outcomes, roles),
            "4. exact min and softmin behave alike": claim_4(outcomes, roles),
        },
        "against_bounded_rewards": against_bounded_rewards(outcomes, roles),
        "reference_details": reference_details(outcomes, roles, hackability),
    }


def format_claims(decided: dict) -> str:
    """The verdicts as a markdown table."""
    lines = ["| question | verdict | evidence |", "| --- | --- | --- |"]
    for section, prefix in (("claims", ""), ("against_bounded_rewards", "min-form vs "), ("reference_details", "")):
        for name, row in decided[section].items():
            lines.append(f"| {prefix}{name} | **{row['verdict']}** | {row['evidence']} |")
    return "\n".join(lines)


def prm_hackability(out: Path, roles: dict[str, str], record_dir: Path | None = None) -> dict | None:
    """The hackability probes of the PRM that the min-form PRM-only runs scored with: its PRM stage record
    (``prm_FINGERPRINT.json`` in ``record_dir``, when all those runs are records of one PRM), else the table the
    PRM stage wrote in ``OUT/prm``; None when there is neither (H1 is then pending)."""
    base = roles.get("min_softmin_prm", "")
    runs = [json.loads(p.read_text()) for p in sorted(Path(out, "results").glob(f"{base}_seed*.json"))]
    prms = {r.get("prm_fingerprint") for r in runs}
    if record_dir is not None and len(prms) == 1 and None not in prms:
        stage = prm_record_path(record_dir, prms.pop())
        if stage.is_file():
            return json.loads(stage.read_text())["hackability"]["probes"]
    local = Path(out, "prm", "hackability.json")
    return json.loads(local.read_text())["probes"] if local.is_file() else None


def write_claims(out: Path, roles: dict[str, str], window: int, record_dir: Path | None = None) -> dict:
    """``OUT/claims.json`` and ``OUT/claims.md`` from the runs and the PRM stage's hackability table."""
    decided = decide_claims(load_outcomes(out, window), roles, prm_hackability(out, roles, record_dir))
    (out / "claims.json").write_text(json.dumps(decided, indent=2))
    (out / "claims.md").write_text(format_claims(decided) + "\n")
    return decided


def main(argv: list[str] | None = None) -> dict:
    from pure_rl.experiments.sweep import load_spec

    p = argparse.ArgumentParser(prog="python -m pure_rl.experiments.claims", description=__doc__.splitlines()[0])
    p.add_argument("sweep", help="the sweep file (its `claims` section names the roles' methods)")
    p.add_argument("--out", default=None, help="the sweep's output folder (default runs/sweeps/NAME)")
    args = p.parse_args(argv)
    spec = load_spec(args.sweep)
    if not spec.claims:
        raise SystemExit(f"{args.sweep} has no `claims` section: nothing to decide")
    out = Path(args.out or f"runs/sweeps/{spec.name}")
    decided = write_claims(out, spec.claims, spec.smooth, spec.record_dir())
    print(format_claims(decided))
    return decided


if __name__ == "__main__":
    main()
