"""Method x seed sweeps: ``python -m pure_rl.experiments.sweep configs/sweeps/NAME.yaml [--out DIR] [--jobs N]``.

A sweep spec (YAML) names a base run config, overrides shared by every run, optional supervised warm-up of a
tiny model (its folder becomes ``policy.model``), the seeds and the methods (each a set of overrides). Every
(method, seed) is an ordinary ``python -m pure_rl.train`` run under ``OUT/METHOD/seedK``, so each has its own
config, CSV metrics, checkpoints, plot and summary; ``--jobs`` runs several at once, each with
``cores / jobs`` threads. Running the command again skips finished runs and resumes interrupted ones from
their last checkpoint; a run directory holding a different config is an error, never overwritten.

At the end it writes, from the runs' own metrics:
    OUT/results/METHOD_seedK.json   every logged metric per iteration, plus the run's summary
    OUT/sweep.json                  the spec, per-run wall times, the comparison table as data
    OUT/sweep.png                   greedy held-out accuracy at each evaluation (when the runs evaluate), then
                                    sampled accuracy, steps per response, response length, PRM reward vs
                                    iteration: one line per method (mean over seeds), seeds as a band (min-max)
    OUT/table.md                    the comparison table (see :func:`comparison_table`)
    OUT/samples.md                  what each method writes at its start, middle and end, with the PRM's scores
    OUT/claims.md, claims.json      with a ``claims`` section: the pre-registered verdicts (pure_rl.experiments.claims)
``--report`` only rebuilds those from finished runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from pure_rl.config import ConfigError, flat_config, load_config
from pure_rl.experiments.claims import ROLES, format_claims, write_claims
from pure_rl.experiments.records import (
    comparable_config,
    read_record,
    record_differences,
    record_path,
    sampled_iterations,
    weights_digest,
    write_prm_record,
    write_record,
)
from pure_rl.plots import smooth

__all__ = ["SweepSpec", "comparison_table", "load_spec", "plot_sweep", "run_sweep"]

REPO_ROOT = Path(__file__).resolve().parents[2]
FIGURE_PANELS = [
    ("eval_accuracy", "greedy held-out accuracy"),  # what pre-registered claims are read from
    ("accuracy", "verifier accuracy (sampled)"),
    ("steps_per_response", "steps per response"),
    ("response_tokens", "response tokens"),
    ("prm_reward_mean", "PRM reward (mean step)"),
]
SERIES = [
    "accuracy",
    "eval_accuracy",
    "steps_per_response",
    "response_tokens",
    "prm_reward_mean",
    "prm_reward_min",
    "repeated_step_ratio",
    "no_boxed_share",
    "reward_return",
    "kl",
    "mixed_group_share",
    "grad_norm",
    "rollout_s",
    "update_s",
    "sync_s",
]


@dataclass
class SweepSpec:
    """What a sweep file holds (keys of the YAML file, with their meaning)."""

    name: str  # sweep name; runs are logged as NAME_METHOD
    config: str  # base run config, relative to the repository root
    methods: dict[str, dict]  # method name -> dotted overrides ({} = the base config as is)
    seeds: list[int] = field(default_factory=lambda: [0])  # train.seed of each run
    method_seeds: dict[str, list[int]] = field(default_factory=dict)  # a method's own seeds, instead of `seeds`
    overrides: dict = field(default_factory=dict)  # dotted overrides applied to every run
    warmup: dict | None = None  # tiny-model warm-up: hidden_size, layers, steps, batch_size, lr, seed
    prm: dict | None = None  # a learned PRM built first: config (a PRM recipe), best_of, problems (see build_prm)
    reference: str | None = None  # the method whose final accuracy the table's "reaches" column uses
    claims: dict[str, str] = field(default_factory=dict)  # role -> method, decided into claims.md (claims.py)
    smooth: int = 10  # moving-average window (iterations) for the figure and the table
    jobs: int = 1  # runs at once
    record: str | None = None  # folder (repository-relative) where finished runs are recorded (records.py)
    description: str = ""

    def record_dir(self) -> Path | None:
        return None if self.record is None else REPO_ROOT / self.record


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep file; errors name the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist (shipped sweeps are in configs/sweeps/)")
    data = yaml.safe_load(path.read_text()) or {}
    known = set(SweepSpec.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    for key in ("name", "config", "methods"):
        if key not in data:
            raise ConfigError(f"sweep file {path}: '{key}' is required")
    spec = SweepSpec(**data)
    if not spec.methods:
        raise ConfigError(f"sweep file {path}: 'methods' must name at least one method")
    strays = set(spec.method_seeds) - set(spec.methods)
    if strays:
        raise ConfigError(f"sweep file {path}: method_seeds names {sorted(strays)}, not methods of this sweep")
    if spec.prm is not None:
        unknown = set(spec.prm) - {"config", "best_of", "problems"}
        if unknown or "config" not in spec.prm:
            raise ConfigError(
                f"sweep file {path}: prm takes config (a PRM recipe such as configs/prm/study.yaml, required), "
                f"best_of and problems; got {sorted(spec.prm)}"
            )
        if "env.prm_model" in spec.overrides:
            raise ConfigError(
                f"sweep file {path}: env.prm_model is the PRM the prm stage builds; remove it from overrides"
            )
    bad_roles = set(spec.claims) - set(ROLES)
    if bad_roles:
        raise ConfigError(f"sweep file {path}: claims names roles {sorted(bad_roles)}; the roles are {list(ROLES)}")
    bad_methods = {role: m for role, m in spec.claims.items() if m not in spec.methods}
    if bad_methods:
        raise ConfigError(f"sweep file {path}: claims {bad_methods} name methods this sweep does not run")
    if spec.record is not None and git_ignores(spec.record_dir() / "run.json"):
        raise ConfigError(
            f"sweep file {path}: record: {spec.record} is ignored by git (see `git check-ignore -v`), so the records "
            "would never be committed: name a folder git tracks, e.g. docs/results/NAME/records"
        )
    if spec.reference is not None and spec.reference not in spec.methods:
        raise ConfigError(f"sweep file {path}: reference '{spec.reference}' is not one of {list(spec.methods)}")
    return spec


def git_ignores(path: Path) -> bool:
    """Whether the repository's git ignores ``path`` (False outside a git checkout or without git)."""
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", str(path)], capture_output=True)
    except OSError:
        return False
    return done.returncode == 0


def run_overrides(
    spec: SweepSpec, method: str, seed: int, model_dir: Path | None, prm_dir: Path | None = None
) -> list[str]:
    """The dotted overrides of one run: shared, then the method's, then seed, name, the warmed-up model and the
    learned PRM."""
    values = {**spec.overrides, **(spec.methods[method] or {})}
    if prm_dir is not None:
        values["env.prm_model"] = str(prm_dir)
    values["train.seed"] = seed
    values["log.name"] = f"{spec.name}_{method}"
    if model_dir is not None:
        values["policy.model"] = str(model_dir)
    return [f"{k}={_yaml_scalar(v)}" for k, v in values.items()]


def _yaml_scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


# --- warm-up ---------------------------------------------------------------------------------------------


def build_warm_model(spec: SweepSpec, out: Path, threads: int) -> Path:
    """The sweep's starting policy: a tiny model taught the task by supervised warm-up (built once, then reused)."""
    w = dict(spec.warmup or {})
    target = out / "warmup" / "model"
    stamp = out / "warmup" / "warmup.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("spec") == w:
        return target.resolve()
    import torch

    from agents.tiny import build_tiny_causal_lm, build_tiny_tokenizer
    from pure_rl.warmup import warmup_configured_policy

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    prm_dir = prm_model_dir(out) if spec.prm is not None else None  # not built yet: only the path is read
    base = load_config(REPO_ROOT / spec.config, run_overrides(spec, next(iter(spec.methods)), 0, None, prm_dir))
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_causal_lm(
        tokenizer, hidden_size=int(w.get("hidden_size", 64)), layers=int(w.get("layers", 2)), seed=w.get("seed", 0)
    )
    print(f"warm-up: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter tiny model")
    init = out / "warmup" / "init"
    model.save_pretrained(init)
    tokenizer.save_pretrained(init)
    base.policy.model = str(init)
    steps = int(w.get("steps", 300))
    losses = warmup_configured_policy(
        base,
        target,
        steps=steps,
        batch_size=int(w.get("batch_size", 16)),
        lr=float(w.get("lr", 3e-3)),
        seed=int(w.get("seed", 0)),
        log_every=max(1, steps // 5),
    )
    seconds = time.perf_counter() - t0
    stamp.write_text(json.dumps({"spec": w, "loss_first": losses[0], "loss_last": losses[-1], "seconds": seconds}))
    print(f"warm-up done in {seconds:.0f}s (loss {losses[0]:.3f} -> {losses[-1]:.3f}): {target}")
    return target.resolve()


# --- learned PRM -----------------------------------------------------------------------------------------


def prm_model_dir(out: Path) -> Path:
    """Where a sweep's learned PRM is built (see :func:`build_prm`)."""
    return (out / "prm" / "model").resolve()


def build_prm(spec: SweepSpec, out: Path, model_dir: Path | None, threads: int) -> Path:
    """The sweep's learned PRM, from its starting policy, in ``OUT/prm/``: Monte-Carlo step labels
    (``labels.jsonl``), the trained PRM (``model/``, its held-out step metrics in ``model/prm_train.json``), then
    the measurements that say whether it is worth optimising: best-of-N on held-out problems (``best_of_n/``)
    and what it pays for steps that do no work (``hackability.json``/``.md``).

    Each stage is the ``pure_rl.prm`` / ``pure_rl.evaluate`` command a user would run, skipped when its output
    is complete and resumed when it was interrupted. The labelling policy is the sweep's warmed-up model itself.
    """
    folder = out / "prm"
    folder.mkdir(parents=True, exist_ok=True)
    config = str(REPO_ROOT / spec.prm["config"])
    start = [f"policy.model={model_dir}", "warmup.steps=0"] if model_dir is not None else []
    labels, model = folder / "labels.jsonl", prm_model_dir(out)
    recipe = load_config(config, start)
    use = ["env.prm=hf", f"env.prm_model={model}", f"env.prm_layout={recipe.prm.layout}"]
    if "env.prm_dtype" in spec.overrides:  # measured as the runs score with it
        use.append(f"env.prm_dtype={spec.overrides['env.prm_dtype']}")
    trained = (model / "prm_train.json").is_file()
    if (model / "config.yaml").is_file():  # the recipe it was (being) trained with: another one is refused
        have, want = flat_config(load_config(model / "config.yaml")), flat_config(recipe)
        diff = config_differences(have, want)
        if diff:
            raise ConfigError(
                f"{model} holds a PRM of another recipe ({'; '.join(diff)}): delete {folder} or use another --out"
            )

    def stage(name: str, args: list[str], log: str) -> None:
        t0 = time.perf_counter()
        print(f"prm: {name} ({folder / log})")
        launch_command(["-m", *args], folder / log, threads)
        print(f"prm: {name} done in {time.perf_counter() - t0:.0f}s")

    if not trained:  # a trained PRM's labels were complete (the trainer keeps their digest)
        # Measurements of a PRM that is no longer there must not pass for the new one's.
        shutil.rmtree(folder / "best_of_n", ignore_errors=True)
        for name in ("hackability.json", "hackability.md"):
            (folder / name).unlink(missing_ok=True)
        # The labeller resumes a file holding the same settings and refuses one made with others.
        stage("labels", ["pure_rl.prm", "label", "--config", config, "--out", str(labels), *start], "label.log")
        # A training stopped before its first checkpoint left only its folder: same recipe (checked above) and
        # nothing to resume, so it starts over rather than stopping the sweep.
        if (model / "checkpoint.pt").is_file():
            resume = ["--resume"]
        else:
            resume = ["--overwrite"] if (model / "config.yaml").is_file() else []
        train = ["pure_rl.prm", "train", "--config", config, "--labels", str(labels), "--out", str(model)]
        stage("training", [*train, *resume, *start], "train.log")
    # A measurement of the PRM in another dtype than the runs score with is not this PRM's: measured again,
    # the earlier one kept beside it.
    dtype = load_config(config, [*start, *use]).env.prm_dtype
    for measured, outputs in (
        (folder / "best_of_n" / "best_of_n.json", [folder / "best_of_n"]),
        (folder / "hackability.json", [folder / "hackability.json", folder / "hackability.md"]),
    ):
        had = measured_dtype(json.loads(measured.read_text())) if measured.is_file() else dtype
        if had != dtype:
            kept = [set_aside(path, f"{had}_dtype") for path in outputs if path.exists()]
            print(
                f"prm: {measured} measured the PRM in dtype {had}, the runs score in {dtype}: measuring again "
                f"(the earlier measurement is now {', '.join(map(str, kept))})"
            )
    best_of = int(spec.prm.get("best_of", 0))
    if best_of and not (folder / "best_of_n" / "best_of_n.json").is_file():
        evaluate = ["pure_rl.evaluate", "--config", config, "--best-of", str(best_of)]
        evaluate += ["--out", str(folder / "best_of_n")]
        problems = ["--problems", str(spec.prm["problems"])] if "problems" in spec.prm else []
        stage(f"best-of-{best_of}", [*evaluate, *problems, *start, *use], "best_of_n.log")
    if not (folder / "hackability.json").is_file():
        probe = ["pure_rl.prm", "probe", "--config", config, "--labels", str(labels)]
        probe += ["--out", str(folder / "hackability")]
        stage("hackability probe", [*probe, *start, *use], "probe.log")
    return model


def measured_dtype(measurement: dict) -> str:
    """The dtype a PRM measurement (the parsed ``best_of_n.json`` or ``hackability.json``) scored in; files from
    before the field say ``unrecorded``, which matches no dtype, so they are measured again."""
    return measurement.get("prm_dtype", "unrecorded")


def set_aside(path: Path, label: str) -> Path:
    """Rename ``path`` to a free ``STEM_LABEL[_K]SUFFIX`` beside it; returns the new path."""
    for k in range(1000):
        new = path.with_name(f"{path.stem}_{label}{f'_{k}' if k else ''}{path.suffix}")
        if not new.exists():
            return path.rename(new)
    raise FileExistsError(f"{path}: no free name to set it aside under")


# --- runs ------------------------------------------------------------------------------------------------


def uses_learned_prm(cfg) -> bool:
    """Whether a run's rewards come from the ``hf`` (learned) PRM; VR-only runs load no PRM at all."""
    return cfg.env.prm == "hf" and cfg.env.reward_mode != "vr"


def config_differences(have: dict, want: dict) -> list[str]:
    """The flat config keys where a folder's saved config (``have``) differs from the sweep's (``want``)."""
    return sorted(f"{k}: {have.get(k)!r} (there) vs {v!r} (sweep)" for k, v in want.items() if have.get(k) != v)


def run_state(run_dir: Path, expected: dict, iterations: int) -> str:
    """'new', 'done' or 'resume'; raises if the folder holds a run of a different config."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return "new"
    have = flat_config(load_config(saved))
    if have != expected:
        diff = config_differences(have, expected)
        raise ConfigError(f"{run_dir} holds a different run ({'; '.join(diff)}): delete it or use another --out")
    summary = run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("iterations") == iterations:
        return "done"
    return "resume" if (run_dir / "checkpoint.pt").is_file() else "new"


def launch(run_dir: Path, config: Path, overrides: list[str], state: str, threads: int) -> float:
    """One training run in a subprocess (its output to RUN_DIR/train.log); returns its wall seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    args = ["-m", "pure_rl.train"]
    # A run that died before its first checkpoint starts over (its folder holds only its config and logs).
    new = ["--config", str(config), "--run-dir", str(run_dir), "--overwrite"]
    args += ["--resume", str(run_dir)] if state == "resume" else new
    args += overrides if state == "new" else []
    return launch_command(args, run_dir / "train.log", threads)


def launch_command(args: list[str], log_path: Path, threads: int) -> float:
    """``python ARGS`` in a subprocess with ``threads`` threads, its output appended to ``log_path``; returns its
    wall seconds, raises naming the log if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with log_path.open("a") as log:
        proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"python {' '.join(args[:2])} failed (exit {proc.returncode}); see {log_path}")
    return time.perf_counter() - t0


def record_run(
    folder: Path, method: str, seed: int, run_dir: Path, flat: dict, prm_dir: Path | None, wall: float | None = None
) -> Path:
    """Record a finished run in ``folder`` (see pure_rl.experiments.records)."""
    from pure_rl.samples import read_samples

    per_key, summary = run_series(run_dir)
    return write_record(
        folder,
        method,
        seed,
        config=comparable_config(flat),
        fingerprints={
            "policy": weights_digest(flat["policy.model"]) if Path(str(flat["policy.model"])).is_dir() else None,
            "prm": weights_digest(prm_dir) if prm_dir is not None else None,
        },
        machine=machine_description(),
        wall_seconds=wall,
        summary=summary,
        samples=sampled_iterations(read_samples(run_dir / "samples.jsonl")),
        series=per_key,
    )


def record_prm_stage(record_dir: Path, out: Path, dtype: str | None) -> Path | None:
    """Record what the PRM stage in ``OUT/prm`` measured (records.py), once all of it is there and measured the
    PRM in the ``dtype`` the runs score with (None: the runs disagree, so no measurement is theirs)."""
    folder = out / "prm"
    files = {
        "train": prm_model_dir(out) / "prm_train.json",
        "best_of_n": folder / "best_of_n" / "best_of_n.json",
        "hackability": folder / "hackability.json",
    }
    if dtype is None or not all(f.is_file() for f in files.values()):
        return None
    measured = {name: json.loads(f.read_text()) for name, f in files.items()}
    if any(measured_dtype(measured[name]) != dtype for name in ("best_of_n", "hackability")):
        return None
    return write_prm_record(record_dir, weights_digest(prm_model_dir(out)), machine_description(), **measured)


def run_sweep(spec: SweepSpec, out: Path, jobs: int | None = None, report_only: bool = False) -> dict:
    """Warm up (if asked), run every (method, seed) not finished yet, then write results, figure and table."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs or spec.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    t_start = time.perf_counter()
    model_dir = None
    if spec.warmup is not None and report_only:  # a report never trains: it reads what the sweep built
        model_dir = (out / "warmup" / "model").resolve()
        # A clone that only reports its records has no warm-up; records are compared without policy.model.
        model_dir = model_dir if model_dir.is_dir() else None
    elif spec.warmup is not None:
        model_dir = build_warm_model(spec, out, threads=os.cpu_count() or 1)
    prm_dir = prm_model_dir(out) if spec.prm is not None else None  # its path is part of every run's config
    record_dir = spec.record_dir()
    runs, prm_users = [], set()
    for method in spec.methods:
        for seed in spec.method_seeds.get(method, spec.seeds):
            overrides = run_overrides(spec, method, seed, model_dir, prm_dir)
            cfg = load_config(REPO_ROOT / spec.config, overrides)
            run_dir = out / method / f"seed{seed}"
            flat = flat_config(cfg)
            state = run_state(run_dir, flat, cfg.train.iterations)
            if state != "done" and record_dir is not None and record_path(record_dir, method, seed).is_file():
                recorded = record_path(record_dir, method, seed)
                diff = record_differences(read_record(recorded), flat)
                if diff:
                    raise ConfigError(f"{recorded} records a run of another config ({'; '.join(diff)}): delete it")
                state = "recorded"
            runs.append((method, seed, run_dir, overrides, state, flat))
            if prm_dir is not None and uses_learned_prm(cfg):
                prm_users.add(method)
    todo = [r for r in runs if r[4] not in ("done", "recorded")]
    if report_only and todo:
        # A report half way through a long sweep covers what exists, and says loudly what it leaves out.
        missing = [r for r in todo if not (r[2] / "logs" / "scalars").is_dir()]
        if len(missing) == len(runs):
            raise ConfigError(f"--report: no run of {out} has metrics or a record yet; run the sweep first")
        if missing:
            names = ", ".join(f"{m}/seed{k}" for m, k, *_ in missing)
            print(f"WARNING: the report leaves out {len(missing)} runs with no metrics and no record: {names}")
            runs = [r for r in runs if r not in missing]
        if len(todo) > len(missing):
            print(f"WARNING: {len(todo) - len(missing)} runs are not finished; the report covers what they logged")
        todo = []
    # The learned PRM (hours on a CPU) is built only when a run still to do scores with it: VR-only and
    # rule-PRM methods (--methods), or a sweep whose PRM runs are all recorded, run without it.
    if any(r[0] in prm_users for r in todo):
        build_prm(spec, out, model_dir, threads=os.cpu_count() or 1)
    if record_dir is not None and prm_users:
        dtypes = {flat["env.prm_dtype"] for m, _, _, _, _, flat in runs if m in prm_users}
        record_prm_stage(record_dir, out, dtypes.pop() if len(dtypes) == 1 else None)
    if record_dir is not None:  # runs finished before they were recorded (an earlier invocation, or a kill)
        earlier = out / "sweep.json"
        earlier_walls = json.loads(earlier.read_text()).get("run_wall_seconds", {}) if earlier.is_file() else {}
        for method, seed, run_dir, _, state, flat in runs:
            if state == "done" and not record_path(record_dir, method, seed).is_file():
                wall = earlier_walls.get(f"{method}/seed{seed}")
                record_run(record_dir, method, seed, run_dir, flat, prm_dir if method in prm_users else None, wall)
    print(
        f"sweep {spec.name}: {len(runs)} runs ({len(spec.methods)} methods, {len(spec.seeds)} seeds each unless "
        f"method_seeds says otherwise), "
        f"{len(todo)} to run, {jobs} at a time with {threads} threads each -> {out}"
    )
    wall = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(todo), desc="runs", unit="run") as bar:
        futures = {
            pool.submit(launch, run_dir, REPO_ROOT / spec.config, overrides, state, threads): (method, seed)
            for method, seed, run_dir, overrides, state, _ in todo
        }
        flats = {(m, k): flat for m, k, _, _, _, flat in todo}
        for future in as_completed(futures):
            method, seed = futures[future]
            wall[f"{method}/seed{seed}"] = future.result()
            if record_dir is not None:  # at once: a sweep killed later keeps this run's record
                run_dir, prm = out / method / f"seed{seed}", prm_dir if method in prm_users else None
                record_run(record_dir, method, seed, run_dir, flats[method, seed], prm, wall[f"{method}/seed{seed}"])
            bar.update(1)
            bar.set_postfix_str(f"{method} seed {seed}: {wall[f'{method}/seed{seed}']:.0f}s")
    # A recorded run is reported from its record, whichever machine ran it, so every clone reports alike.
    recorded = {(m, k) for m, k, *_ in runs if record_dir is not None and record_path(record_dir, m, k).is_file()}
    sources = [(m, k, record_path(record_dir, m, k) if (m, k) in recorded else d) for m, k, d, *_ in runs]
    results = write_results(spec, out, sources)
    sweep_seconds = time.perf_counter() - t_start
    previous = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").is_file() else {}
    invocations = previous.get("invocations", [])
    if not report_only:  # a --report only rebuilds the artefacts: it is not part of the sweep's wall time
        invocations.append(
            {
                "command": " ".join(["python -m pure_rl.experiments.sweep", *sys.argv[1:]]),
                "runs_run": len(todo),
                "wall_seconds": sweep_seconds,
                "machine": machine_description(),
            }
        )
    record = {
        "spec": spec.__dict__,
        "invocations": invocations,
        "run_wall_seconds": {**previous.get("run_wall_seconds", {}), **wall},
        "table": results["table"],
    }
    if spec.claims:  # the pre-registered verdicts, rebuilt with the table from the same runs
        record["claims"] = write_claims(out, spec.claims, spec.smooth, record_dir)
        print(format_claims(record["claims"]) + "\n")
    (out / "sweep.json").write_text(json.dumps(record, indent=2))
    print(results["markdown"])
    print(f"\nwrote {out / 'sweep.png'}, {out / 'table.md'}, {out / 'sweep.json'}, {out / 'results'}/*.json")
    return record


def machine_description() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():  # the model name says which CPU kind ran it; timings compare only within one kind
        text = info.read_text()
        names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
        cpu += " with AMX" if "amx_bf16" in text else " with AVX-512" if "avx512f" in text else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.platform()}"


# --- results ---------------------------------------------------------------------------------------------


def run_series(run_dir: Path) -> tuple[dict[str, list[float]], dict]:
    """A run folder's metrics the sweep reads (``SERIES``, per logged iteration) and its summary."""
    from pure_rl.plots import read_metrics

    rows = read_metrics(run_dir / "logs" / "scalars")
    per_key = {k: [r.get(k, float("nan")) for r in rows] for k in ["iteration", *SERIES]}
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"unfinished": True}
    return per_key, summary


def write_results(spec: SweepSpec, out: Path, runs: list[tuple[str, int, Path]]) -> dict:
    """``runs``: (method, seed, source), the source a run folder or a record file (records.py)."""
    (out / "results").mkdir(exist_ok=True)
    series: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    origins: dict[str, list[str]] = {}  # "policy / PRM fingerprints, machine" -> the runs that share them
    without_prm: set[str] = set()
    for method, seed, source in runs:
        record = read_record(source) if source.suffix == ".json" else None
        per_key, summary = (record["series"], record["summary"]) if record else run_series(source)
        config = record["config"] if record else flat_config(load_config(source / "config.yaml"))
        if config["env.reward_mode"] == "vr":  # its PRM columns are zeros, not scores
            without_prm.add(method)
        result = {"method": method, "seed": seed, "run_dir": str(source), "max_steps": config["env.max_steps"]}
        result["prm_fingerprint"] = record["fingerprints"]["prm"] if record else None  # which PRM's stage record
        (out / "results" / f"{method}_seed{seed}.json").write_text(
            json.dumps({**result, "summary": summary, **per_key})
        )
        if record:
            fp = record["fingerprints"]
            origin = f"policy {fp['policy']}, PRM {fp['prm'] or '(none)'}, on {record['machine'].split(',')[0]}"
            origins.setdefault(origin, []).append(f"{method}/{seed}")
        series.setdefault(method, {})[seed] = {k: np.asarray(v, dtype=float) for k, v in per_key.items()}
    for seeds in series.values():  # unfinished runs (a --report half way) are cut to the shortest seed's length
        length = min(len(r["iteration"]) for r in seeds.values())
        for seed, r in seeds.items():
            seeds[seed] = {k: v[:length] for k, v in r.items()}
    table = comparison_table(series, spec.reference, spec.smooth)
    markdown = format_table(table, spec.smooth, spec.reference)
    markdown += "\n\n" + runs_table(series, spec.smooth, without_prm)
    if origins:  # runs from several machines start from sibling policies and score with sibling PRMs
        markdown += "\n\nRecorded runs by starting policy and PRM (sha256 prefixes of their weights):\n"
        markdown += "\n".join(f"- {origin}: {', '.join(names)}" for origin, names in origins.items())
    (out / "table.md").write_text(markdown + "\n")
    (out / "samples.md").write_text(samples_report(runs))
    plot_sweep(series, out / "sweep.png", spec.smooth, title=f"sweep {spec.name}: mean over seeds, band = min-max")
    return {"table": table, "markdown": markdown}


def samples_report(runs: list[tuple[str, int, Path]], shown: int = 2) -> str:
    """What each method's first seed writes at its first, middle and last sampled iteration (a run folder's
    ``samples.jsonl`` or a record's samples): the batch's share correct, steps and mean PRM step score, and its
    first ``shown`` responses step by step."""
    from pure_rl.samples import format_response, read_samples, start_middle_end

    lines = []
    firsts = {}
    for method, seed, source in runs:
        firsts.setdefault(method, (seed, source))
    for method, (seed, source) in firsts.items():
        records = read_record(source)["samples"] if source.suffix == ".json" else read_samples(source / "samples.jsonl")
        lines.append(f"## {method} (seed {seed})\n")
        iterations = start_middle_end(records)
        if not iterations:
            lines.append("no samples logged (log.sample_every: 0, or the run has not started)\n")
            continue
        for it in iterations:
            batch = [r for r in records if r["iteration"] == it]
            scores = [s for r in batch for s in r["prm"]]
            lines.append(
                f"iteration {it}: {sum(r['correct'] for r in batch)}/{len(batch)} correct, "
                f"{np.mean([len(r['steps']) for r in batch]):.1f} steps, mean PRM step score {np.mean(scores):+.2f}\n"
            )
            lines.extend(["```", *(format_response(r) for r in batch[:shown]), "```\n"])
    return "\n".join(lines)


def comparison_table(series: dict, reference: str | None, window: int) -> dict[str, dict]:
    """Per method, over seeds (mean and std), on ``window``-iteration moving averages of each run's curves:

    - final / best accuracy: the last point, and the maximum (from the ``window``-th iteration on), of the
      smoothed sampled accuracy;
    - final greedy accuracy on held-out problems (the last evaluation);
    - reaches reference: the first iteration (from the ``window``-th on) at which the method's seed-mean
      smoothed accuracy reaches the reference method's final (seed-mean) smoothed accuracy (None if never);
    - steps per response at the start (first ``window`` iterations) and end (last ``window``);
    - hack onset: the first iteration at which the seed-mean smoothed steps per response exceeds its start
      value by more than one step and stays above it to the end (None if never).
    """
    table: dict[str, dict] = {}
    target = None
    if reference in series:
        target = float(np.mean([smooth(r["accuracy"], window)[-1] for r in series[reference].values()]))
    for method, seeds in series.items():
        runs = list(seeds.values())  # equal lengths: write_results cut unfinished seeds
        acc = np.stack([smooth(r["accuracy"], window) for r in runs])
        steps = np.stack([smooth(r["steps_per_response"], window) for r in runs])
        raw_steps = np.stack([r["steps_per_response"] for r in runs])
        iters = runs[0]["iteration"]
        eval_final = [r["eval_accuracy"][np.isfinite(r["eval_accuracy"])] for r in runs]
        start_steps = np.nanmean(raw_steps[:, :window], axis=1)
        end_steps = np.nanmean(raw_steps[:, -window:], axis=1)
        mean_acc = acc.mean(axis=0)
        mean_steps = steps.mean(axis=0)
        reaches = None
        if target is not None:
            # Only once a full window is averaged: a single early iteration is noise, not "reaching" anything.
            hit = np.nonzero((mean_acc >= target - 1e-9) & (np.arange(len(mean_acc)) >= window - 1))[0]
            reaches = int(iters[hit[0]]) if len(hit) else None
        above = mean_steps > float(start_steps.mean()) + 1.0
        onset = None
        if above.any() and above[-1]:
            first_of_last_run = len(above) - int(np.argmin(above[::-1])) if not above.all() else 0
            onset = int(iters[first_of_last_run])
        table[method] = {
            "seeds": len(runs),
            "iterations": int(iters[-1]),
            "final_accuracy": _mean_std(acc[:, -1]),
            "best_accuracy": _mean_std(np.nanmax(acc[:, min(window, acc.shape[1]) - 1 :], axis=1)),
            "final_eval_accuracy": _mean_std(np.array([e[-1] if len(e) else np.nan for e in eval_final])),
            "reaches_reference_at": reaches,
            "reference_final_accuracy": target,
            "steps_start": _mean_std(start_steps),
            "steps_end": _mean_std(end_steps),
            # nanmean: a run evaluated before its first update has an iteration-0 row with eval metrics only.
            "response_tokens_start": _mean_std(np.nanmean(np.stack([r["response_tokens"][:window] for r in runs]), 1)),
            "response_tokens_end": _mean_std(np.nanmean(np.stack([r["response_tokens"][-window:] for r in runs]), 1)),
            "hack_onset": onset,
            # Rollout + update + sync seconds summed over iterations (evaluation and start-up not included).
            "train_minutes": _mean_std(
                np.array([np.nansum(r["rollout_s"] + r["update_s"] + r["sync_s"]) / 60 for r in runs])
            ),
        }
    return table


def _mean_std(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=float)
    if not np.isfinite(x).any():  # e.g. no evaluation in these runs
        return {"mean": float("nan"), "std": float("nan"), "per_seed": [float(v) for v in x]}
    return {"mean": float(np.nanmean(x)), "std": float(np.nanstd(x)), "per_seed": [float(v) for v in x]}


def format_table(table: dict, window: int, reference: str | None) -> str:
    def ms(v: dict, digits: int = 3) -> str:
        if not np.isfinite(v["mean"]):
            return "—"
        return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"

    ref = f"reaches {reference}'s final acc. at iter." if reference else "reaches reference"
    lines = [
        f"| method | seeds | final acc. | best acc. | final greedy held-out acc. | {ref} | steps start → end "
        f"| tokens start → end | hack onset (iter.) | train min. per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, row in table.items():
        reaches = row["reaches_reference_at"] or "—"
        lines.append(
            f"| {method} | {row['seeds']} | {ms(row['final_accuracy'])} | {ms(row['best_accuracy'])} "
            f"| {ms(row['final_eval_accuracy'])} | {reaches} "
            f"| {ms(row['steps_start'], 2)} → {ms(row['steps_end'], 2)} "
            f"| {row['response_tokens_start']['mean']:.1f} → {row['response_tokens_end']['mean']:.1f} "
            f"| {row['hack_onset'] if row['hack_onset'] else '—'} | {row['train_minutes']['mean']:.1f} |"
        )
    lines.append(
        f"\nAccuracies are {window}-iteration moving averages of the sampled training accuracy, mean ± std over "
        "seeds; steps and tokens are means of the first and last "
        f"{window} iterations. Hack onset: first iteration after which the smoothed steps per response stay more "
        "than one step above their start."
    )
    return "\n".join(lines)


def runs_table(series: dict, window: int, without_prm: set[str] = frozenset()) -> str:
    """Every run on its own row (``series``: method -> seed -> key -> per-iteration array): greedy held-out
    accuracy at each evaluation, then steps per response and the PRM's lowest step score over the first and last
    ``window`` iterations (none for ``without_prm`` methods), and the KL to the start over the last ones. The
    seed bands of the table above hide which seed did what; this does not."""
    evaluated = sorted(
        {
            int(i)
            for seeds in series.values()
            for r in seeds.values()
            for i in r["iteration"][np.isfinite(r["eval_accuracy"])]
        }
    )

    def start_end(v: np.ndarray, fmt: str) -> str:
        if not np.isfinite(v).any():
            return "—"
        return f"{np.nanmean(v[:window]):{fmt}} → {np.nanmean(v[-window:]):{fmt}}"

    lines = [
        "| method | seed | " + " | ".join(str(i) for i in evaluated) + " | steps | PRM min step | KL at end |",
        "| --- | --- | " + " | ".join("---" for _ in evaluated) + " | --- | --- | --- |",
    ]
    for method, seeds in series.items():
        for seed, r in sorted(seeds.items()):
            at = dict(zip(r["iteration"].astype(int), r["eval_accuracy"]))
            accs = [f"{at[i]:.3f}" if np.isfinite(at.get(i, np.nan)) else "—" for i in evaluated]
            prm_min = "—" if method in without_prm else start_end(r["prm_reward_min"], "+.2f")
            kl = f"{np.nanmean(r['kl'][-window:]):.2f}" if np.isfinite(r["kl"][-window:]).any() else "—"
            lines.append(
                f"| {method} | {seed} | {' | '.join(accs)} | {start_end(r['steps_per_response'], '.1f')} "
                f"| {prm_min} | {kl} |"
            )
    lines.append(
        "\nEvery run: greedy held-out accuracy at each evaluation (columns: iterations), then means over the "
        f"first and last {window} iterations."
    )
    return "\n".join(lines)


def panel_curves(seeds: dict, key: str, window: int) -> tuple[np.ndarray, np.ndarray]:
    """One figure panel's data for one method: ``(x [T], curves [seeds, T])``.

    Per-iteration metrics are smoothed over ``window`` iterations. Held-out accuracy is measured at a few
    iterations only (NaN between): those points themselves, unsmoothed, so a band is the seeds' spread there.
    """
    x = next(iter(seeds.values()))["iteration"]
    if key != "eval_accuracy":
        return x, np.stack([smooth(r[key], window) for r in seeds.values()])
    curves = np.stack([r[key] for r in seeds.values()])
    measured = np.isfinite(curves).any(axis=0)
    return x[measured], curves[:, measured]


def plot_sweep(series: dict, out_png: Path, window: int, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluated = any(np.isfinite(r["eval_accuracy"]).any() for seeds in series.values() for r in seeds.values())
    panels = [(key, label) for key, label in FIGURE_PANELS if evaluated or key != "eval_accuracy"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6))
    # The default cycle repeats after 10 colours; a larger sweep gets tab20's, so no two methods share one.
    palette = [f"C{i}" for i in range(10)] if len(series) <= 10 else list(plt.get_cmap("tab20").colors)
    for ax, (key, label) in zip(axes, panels):
        for i, (method, seeds) in enumerate(series.items()):
            x, curves = panel_curves(seeds, key, window)
            color = palette[i % len(palette)]
            marker = "o" if key == "eval_accuracy" else None
            with warnings.catch_warnings():  # the iteration-0 row (evaluation only) is all NaN: a gap, not news
                warnings.simplefilter("ignore", RuntimeWarning)
                ax.plot(x, np.nanmean(curves, axis=0), color=color, label=method, marker=marker, markersize=3)
                if len(curves) > 1:
                    ax.fill_between(x, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), color=color, alpha=0.2)
        ax.set_title(label if key == "eval_accuracy" else f"{label} ({window}-iter. avg)")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    # Beside the panels, not on one: with a dozen methods a legend inside hides the curves it names.
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.savefig(out_png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out_png


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m pure_rl.experiments.sweep", description=__doc__.splitlines()[0])
    p.add_argument("spec", help="sweep file, e.g. configs/sweeps/small.yaml")
    p.add_argument("--out", default=None, help="output folder (default: runs/sweeps/NAME)")
    p.add_argument("--jobs", type=int, default=None, help="runs at once (default: the sweep file's jobs)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="only these seeds (of every method)")
    p.add_argument("--methods", nargs="+", default=None, help="only these methods")
    p.add_argument("--iterations", type=int, default=None, help="override train.iterations (smaller runs)")
    p.add_argument("--warmup-steps", type=int, default=None, help="override the warm-up's steps")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more dotted overrides for every run")
    p.add_argument("--report", action="store_true", help="only rebuild results, figure and table")
    args = p.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        if args.methods:
            missing = [m for m in args.methods if m not in spec.methods]
            if missing:
                raise ConfigError(f"--methods: {missing} not in the sweep's methods {list(spec.methods)}")
            spec.methods = {m: spec.methods[m] for m in args.methods}
            if spec.reference not in spec.methods:
                spec.reference = None
        if args.seeds:  # a method's own seeds are narrowed too: --seeds 0 runs one block of every method
            spec.seeds = args.seeds
            spec.method_seeds = {m: [k for k in ks if k in args.seeds] for m, ks in spec.method_seeds.items()}
        if args.iterations:
            spec.overrides = {**spec.overrides, "train.iterations": args.iterations}
            spec.smooth = max(1, min(spec.smooth, args.iterations // 3))
        if args.warmup_steps is not None and spec.warmup is not None:
            spec.warmup = {**spec.warmup, "steps": args.warmup_steps}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
            spec.overrides = {**spec.overrides, key: yaml.safe_load(value)}
        out = Path(args.out or f"runs/sweeps/{spec.name}")
        return run_sweep(spec, out, jobs=args.jobs, report_only=args.report)
    except ConfigError as e:
        sys.exit(f"sweep error: {e}")


if __name__ == "__main__":
    main()
