"""The pre-registered claim rules, on runs written the way a sweep writes them (results/METHOD_seedK.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pure_rl.config import ConfigError
from pure_rl.experiments.claims import decide_claims, format_claims, load_outcomes, write_claims
from pure_rl.experiments.records import write_prm_record
from pure_rl.experiments.sweep import load_spec

ROLES = {
    "vr_only": "vr",
    "sum_prm": "sum",
    "sum_prm_vr": "sum_vr",
    "min_prm_vr": "min_vr",
    "min_prm_vr_share": "min_vr10",
    "min_softmin_prm": "soft",
    "min_exact_prm": "exact",
    "clip": "clip",
    "delta": "delta",
    "masked": "masked",
    "n_minus_1": "n1",
    "ref_whiten": "white",
}
ITERS = 150


def write_run(out, method, seed, evals, steps, repeated=0.0, budget=8, finished=True):
    """One run as the sweep stores it: an iteration-0 evaluation row, then 150 trained iterations."""
    it = np.arange(0, ITERS + 1, dtype=float)
    acc = np.full(len(it), np.nan)
    for point, value in evals.items():
        acc[point] = value
    start, end = steps
    s = np.concatenate([[np.nan], np.linspace(start, end, ITERS)])
    s[-10:] = end  # the last window at the end value exactly
    s[1:11] = start
    rep = np.concatenate([[np.nan], np.full(ITERS, repeated)])
    (out / "results").mkdir(parents=True, exist_ok=True)
    record = {
        "method": method,
        "seed": seed,
        "run_dir": str(out / method / f"seed{seed}"),
        "max_steps": budget,
        "summary": {"iterations": ITERS} if finished else {"unfinished": True},
        "iteration": it.tolist(),
        "eval_accuracy": acc.tolist(),
        "steps_per_response": s.tolist(),
        "repeated_step_ratio": rep.tolist(),
    }
    (out / "results" / f"{method}_seed{seed}.json").write_text(json.dumps(record))


def curve(a0, a50, a100, a150):
    return {0: a0, 50: a50, 100: a100, 150: a150}


PAPER = {  # every run as the paper says it goes
    "vr": [curve(0.30, 0.36, 0.40, 0.42)] * 5,
    "sum": [curve(0.30, 0.20, 0.05, 0.00)] * 3,
    "sum_vr": [curve(0.30, 0.25, 0.18, 0.12)] * 3,  # below half its best (0.30), not far below
    "min_vr": [curve(0.30, 0.40, 0.45, 0.44)] * 3,
    "min_vr10": [curve(0.30, 0.43, 0.46, 0.47)] * 5,
    "soft": [curve(0.30, 0.32, 0.33, 0.33)] * 3,
    "exact": [curve(0.30, 0.31, 0.33, 0.31)] * 3,
    "clip": [curve(0.30, 0.32, 0.33, 0.33)] * 3,
    "delta": [curve(0.30, 0.35, 0.42, 0.43)] * 3,
    "masked": [curve(0.30, 0.32, 0.33, 0.32)] * 3,
    "n1": [curve(0.30, 0.32, 0.33, 0.32)] * 3,
    "white": [curve(0.30, 0.32, 0.33, 0.33)] * 3,
}
HACK = {"sum": (3.0, 8.0), "sum_vr": (3.0, 7.8), "n1": (3.0, 4.0)}


def build(out, runs=PAPER, hack=HACK):
    for method, evals in runs.items():
        for seed, e in enumerate(evals):
            write_run(out, method, seed, e, hack.get(method, (3.0, 3.2)))


def verdicts(out, hackability=None):
    decided = decide_claims(load_outcomes(out), ROLES, hackability)
    flat = {k.split(".")[0]: v["verdict"] for k, v in decided["claims"].items()}
    return flat, decided


def test_runs_as_the_paper_describes_them_confirm_every_claim(tmp_path):
    build(tmp_path)
    flat, decided = verdicts(tmp_path)
    assert flat == {"1": "confirmed", "2": "confirmed", "3": "confirmed", "4": "confirmed"}
    assert decided["against_bounded_rewards"]["clip"]["verdict"] == "min-form better"  # 0.44 vs 0.33
    assert decided["against_bounded_rewards"]["delta"]["verdict"] == "equal"  # 0.44 vs 0.43
    details = decided["reference_details"]
    assert details["H1"]["verdict"] == "pending"  # no hackability table given
    assert details["H2"]["verdict"] == details["H4"]["verdict"] == "confirmed"
    assert details["H3"]["verdict"] == "confirmed"  # 4.0 end steps against 3.2
    table = format_claims(decided)
    assert table.count("\n") == 2 + 4 + 2 + 4 - 1 and "**confirmed**" in table


def test_what_we_saw_with_the_rule_prm_refutes_claims_2_and_3(tmp_path):
    runs = dict(PAPER)
    runs["min_vr"] = [curve(0.30, 0.20, 0.05, 0.01)] * 3  # min-form collapses too
    runs["min_vr10"] = [curve(0.30, 0.25, 0.15, 0.05)] * 5  # never reaches VR-only's 0.42
    build(tmp_path, runs, hack=dict(HACK, min_vr=(3.0, 6.5)))
    flat, _ = verdicts(tmp_path)
    assert flat["1"] == "confirmed" and flat["2"] == "refuted" and flat["3"] == "refuted"


def test_claim_1_is_refuted_when_sum_form_holds_and_partial_when_only_one_form_collapses(tmp_path):
    runs = dict(PAPER, sum=[curve(0.30, 0.33, 0.34, 0.33)] * 3, sum_vr=[curve(0.30, 0.33, 0.34, 0.32)] * 3)
    build(tmp_path / "held", runs, hack={})
    assert verdicts(tmp_path / "held")[0]["1"] == "refuted"
    # Claim 2 cannot be confirmed without a sum-form collapse to compare with.
    assert verdicts(tmp_path / "held")[0]["2"] == "partial"
    build(tmp_path / "one", dict(PAPER, sum_vr=[curve(0.30, 0.33, 0.34, 0.33)] * 3), hack={"sum": (3.0, 8.0)})
    assert verdicts(tmp_path / "one")[0]["1"] == "partial"


def test_a_collapse_without_the_hack_is_not_claim_1(tmp_path):
    # Accuracy falls but the steps stay where they were and nothing repeats: not the reward hack.
    build(tmp_path, hack={})
    assert verdicts(tmp_path)[0]["1"] == "partial"
    # A repeated-step share above 0.5 counts as the hack even within the step budget.
    repeats = tmp_path / "repeat"
    for method, evals in PAPER.items():
        for seed, e in enumerate(evals):
            write_run(repeats, method, seed, e, (3.0, 3.2), repeated=0.7 if method.startswith("sum") else 0.0)
    assert verdicts(repeats)[0]["1"] == "confirmed"


def test_claim_3_needs_the_target_by_half_the_iterations(tmp_path):
    late = dict(PAPER, min_vr10=[curve(0.30, 0.36, 0.43, 0.44)] * 5)  # reaches 0.42 at 100, not by 75
    build(tmp_path, late)
    flat, decided = verdicts(tmp_path)
    assert flat["3"] == "partial"
    assert "first reaches it at 100" in decided["claims"]["3. PRM+VR learns faster than VR alone"]["evidence"]


def test_claim_4_is_refuted_when_one_form_collapses_and_the_other_does_not(tmp_path):
    build(tmp_path, dict(PAPER, exact=[curve(0.30, 0.20, 0.10, 0.02)] * 3), hack=dict(HACK, exact=(3.0, 8.0)))
    assert verdicts(tmp_path)[0]["4"] == "refuted"


def test_h1_reads_the_prms_hackability_table(tmp_path):
    empty_low = {"empty": {"mean": -0.6}, "honest_wrong": {"mean": -0.4}, "honest_correct": {"mean": 0.0}}
    build(tmp_path / "stays")
    assert verdicts(tmp_path / "stays", empty_low)[1]["reference_details"]["H1"]["verdict"] == "confirmed"
    build(tmp_path / "short", hack={"soft": (3.0, 1.2)})  # min-form PRM-only shortened to under half
    assert verdicts(tmp_path / "short", empty_low)[1]["reference_details"]["H1"]["verdict"] == "refuted"
    empty_high = dict(empty_low, empty={"mean": 0.3})
    assert verdicts(tmp_path / "short", empty_high)[1]["reference_details"]["H1"]["verdict"] == "confirmed"


def test_h1_reads_the_hackability_of_the_prm_the_runs_scored_with(tmp_path):
    """A records-only clone has no PRM folder: H1 reads the PRM stage record of the PRM the min-form PRM-only
    runs scored with, and the local PRM's table only when those runs are no records of one PRM."""
    low = {"empty": {"mean": -0.6}, "honest_wrong": {"mean": -0.4}, "honest_correct": {"mean": 0.0}}
    high = dict(low, empty={"mean": 0.3})
    build(tmp_path, hack={"soft": (3.0, 1.2)})  # shortened: "refuted" under the low table, "confirmed" under high
    record = tmp_path / "record"
    write_prm_record(record, "aaaa", "cpu", train={}, best_of_n={"samples": [1]}, hackability={"probes": low})
    write_prm_record(record, "bbbb", "cpu", train={}, best_of_n={}, hackability={"probes": high})
    assert "samples" not in json.loads((record / "prm_aaaa.json").read_text())["best_of_n"]  # stays local

    def h1(fingerprints: list[str | None]) -> str:
        for seed, fp in enumerate(fingerprints):
            path = tmp_path / "results" / f"soft_seed{seed}.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "prm_fingerprint": fp}))
        return write_claims(tmp_path, ROLES, 10, record)["reference_details"]["H1"]["verdict"]

    assert h1(["aaaa"] * 3) == "refuted" and h1(["bbbb"] * 3) == "confirmed"
    assert h1([None] * 3) == "pending"  # run folders, and no PRM stage here
    (tmp_path / "prm").mkdir()
    (tmp_path / "prm" / "hackability.json").write_text(json.dumps({"prm_dtype": "float32", "probes": high}))
    assert h1([None] * 3) == "confirmed"  # run folders read this machine's PRM stage
    assert h1(["aaaa", "bbbb", "aaaa"]) == "confirmed"  # runs of two PRMs: no one record is theirs
    assert h1(["aaaa"] * 3) == "refuted"  # the records' PRM, not this machine's


def test_an_unfinished_or_missing_run_leaves_its_claims_pending(tmp_path):
    build(tmp_path, {k: v for k, v in PAPER.items() if k != "vr"})
    write_run(tmp_path, "vr", 0, PAPER["vr"][0], (3.0, 3.2), finished=False)
    flat, _ = verdicts(tmp_path)
    assert flat["3"] == "pending" and flat["1"] == "confirmed"
    decided = write_claims(tmp_path, {k: v for k, v in ROLES.items() if k != "masked"}, window=10)
    assert decided["reference_details"]["H2"]["verdict"] == "pending"
    assert (tmp_path / "claims.md").read_text().count("**pending**") >= 2


def test_a_sweep_files_claims_must_name_known_roles_and_its_own_methods(tmp_path):
    base = {"name": "s", "config": "configs/sweeps/small_run.yaml", "methods": {"a": {}, "b": {}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**base, "claims": {"vr_only": "a", "min_prm_vr": "b"}}))
    assert load_spec(path).claims == {"vr_only": "a", "min_prm_vr": "b"}
    path.write_text(yaml.safe_dump({**base, "claims": {"vr_alone": "a"}}))
    with pytest.raises(ConfigError, match=r"claims names roles \['vr_alone'\]"):
        load_spec(path)
    path.write_text(yaml.safe_dump({**base, "claims": {"vr_only": "c"}}))
    with pytest.raises(ConfigError, match=r"claims \{'vr_only': 'c'\} name methods this sweep does not run"):
        load_spec(path)
