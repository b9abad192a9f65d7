"""Does the RL loop learn what a verifiable reward asks for? ``python benchmarks/learnability.py [--quick]``.

Each (task, model size) is a sweep (:mod:`pure_rl.experiments.sweep`) of VR-only runs of
``configs/sweeps/learnability_run.yaml`` over seeds, all from one tiny model warmed up on the task's reference
solutions (the task's steps for every size; the lr falls with width, ``SIZES``). Tasks, from certain to hard:

- ``answer_format``: "Repeat the number 0."; 70% of the warm-up's solutions leave the answer unboxed, which the
  verifier does not read, so the warmed-up model has both forms and RL has to select the boxed one (certain);
- ``copy_number``: the same with numbers 0-9, so the model has to copy the number too (tiny models learn the
  copy late and abruptly in warm-up: where it has not, the format is all RL can fix);
- ``arithmetic``: level-1 arithmetic word problems (the small sweep's task). The 0.4M model learns the sums
  late and abruptly in warm-up (greedy ~0.1 at 1000 steps, ~0.3 at 1500, ~0.9 at 3000), so its warm-up stops
  at 1500 steps: the model has part of the skill, and RL has the rest to select.

For every run it reads, from the run's own metrics, held-out greedy accuracy (the warmed-up model's before RL,
then every ``train.eval_every`` iterations), sampled accuracy on the training batches (first and last 10
iterations), and the iteration at which greedy accuracy first reaches the start + ``--bar``; and, to say why a
variant does not learn: the share of groups with mixed outcomes (signal: only those groups move a verifiable
reward), the gradient norm and KL (noise), and, with ``--capacity``, the greedy accuracy of supervised warm-up
alone at 3x the steps (capacity). It prints one table row per (task, size) with the mean and standard deviation
over seeds, and writes ``OUT/learnability.json``.

``--quick`` runs the short version the slow test runs (``tests/test_learnability.py``): the answer-format task, the
smallest model, fewer iterations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pure_rl.experiments.sweep import SweepSpec, build_warm_model, run_sweep  # noqa: E402

RUN_CONFIG = "configs/sweeps/learnability_run.yaml"
# name -> tiny Qwen2 shape (parameters as built by agents.tiny, vocabulary included) and its warm-up lr. The lr
# falls with width as usual: at 3e-3 the 2.7M model's warm-up loss plateaus at 0.36 by 1500 steps (the 0.4M
# model's 0.09) and it has none of the arithmetic; at 1e-3 its loss is 0.10 by step 500. 9M's is scaled
# the same way, not measured.
SIZES = {
    "0.4M": {"hidden_size": 128, "layers": 2, "lr": 3.0e-3},
    "2.7M": {"hidden_size": 256, "layers": 4, "lr": 1.0e-3},
    "9M": {"hidden_size": 384, "layers": 6, "lr": 5.0e-4},
}
# benchmark task -> (env.task, its overrides, warm-up steps)
TASKS = {
    "answer_format": ("copy_number", {"env.copy_largest": 0, "env.copy_unboxed_share": 0.7}, 300),
    "copy_number": ("copy_number", {"env.copy_largest": 9}, 300),
    "arithmetic": ("arithmetic", {"env.difficulty": 1}, 1500),
}
WARMUP = {"batch_size": 16, "seed": 0}


def spec_for(
    task: str, size: str, seeds: list[int], iterations: int, warmup_steps: int | None, jobs: int, extra: dict
) -> SweepSpec:
    """One (task, size) as a sweep of VR-only runs (``extra``: more dotted overrides of the run config;
    ``warmup_steps``: None for the task's own)."""
    return SweepSpec(
        name=f"learn_{task}_{size}",
        config=RUN_CONFIG,
        methods={"vr_only": {}},
        seeds=seeds,
        overrides={
            "env.task": TASKS[task][0],
            **TASKS[task][1],
            "train.iterations": iterations,
            "train.eval_every": max(1, iterations // 5),
            **extra,
        },
        warmup={**WARMUP, **SIZES[size], "steps": TASKS[task][2] if warmup_steps is None else warmup_steps},
        jobs=jobs,
        description=f"VR-only learnability: {task}, {size} tiny model",
    )


def greedy_accuracy(config: Path, model: Path, seed: int) -> float:
    """Held-out greedy accuracy of ``model`` on the run's evaluation problems (those every eval of it scores)."""
    from pure_rl.evaluate import main as evaluate

    result = evaluate(["--config", str(config), f"policy.model={model}", f"train.seed={seed}"])
    return result["eval_accuracy"]


def run_summary(run_dir: Path, start: float, bar: float) -> dict:
    """One run's learning curve summary, from its logged metrics."""
    from pure_rl.plots import read_metrics

    rows = read_metrics(run_dir / "logs" / "scalars")
    evals = [(int(r["iteration"]), r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]
    sampled = [r["accuracy"] for r in rows]
    mixed = [r.get("mixed_group_share", float("nan")) for r in rows]
    crossed = next((it for it, acc in evals if acc >= start + bar), None)
    k = min(10, len(rows))
    return {
        "greedy_start": start,
        "greedy_curve": evals,
        "greedy_end": evals[-1][1],
        "greedy_best": max(a for _, a in evals),
        "crosses_bar_at": crossed,
        "sampled_first10": statistics.fmean(sampled[:k]),
        "sampled_last10": statistics.fmean(sampled[-k:]),
        "mixed_groups_first10": statistics.fmean(mixed[:k]),
        "mixed_groups_last10": statistics.fmean(mixed[-k:]),
        "grad_norm_mean": statistics.fmean(r["grad_norm"] for r in rows),
        "kl_last10": statistics.fmean(r["kl"] for r in rows[-k:]),
        "response_tokens_first10_last10": (
            statistics.fmean(r["response_tokens"] for r in rows[:k]),
            statistics.fmean(r["response_tokens"] for r in rows[-k:]),
        ),
    }


def measure(task: str, size: str, args: argparse.Namespace, out: Path) -> dict:
    extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    spec = spec_for(task, size, args.seeds, args.iterations, args.warmup_steps, args.jobs, extra)
    folder = out / f"{task}_{size}"
    t0 = time.perf_counter()
    record = run_sweep(spec, folder)
    config = folder / "vr_only" / f"seed{args.seeds[0]}" / "config.yaml"
    model = folder / "warmup" / "model"
    runs = {}
    for seed in args.seeds:
        run_dir = folder / "vr_only" / f"seed{seed}"
        start = greedy_accuracy(run_dir / "config.yaml", model, seed)
        runs[seed] = run_summary(run_dir, start, args.bar)
    result = {"task": task, "size": size, "runs": runs, "wall_seconds": time.perf_counter() - t0}
    result["sweep_wall_seconds"] = record["run_wall_seconds"]
    if args.capacity:
        longer = SweepSpec(**{**spec.__dict__, "warmup": {**spec.warmup, "steps": 3 * spec.warmup["steps"]}})
        longer_dir = out / f"{task}_{size}_warmup_x3"
        result["warmup_x3_greedy"] = greedy_accuracy(config, build_warm_model(longer, longer_dir, threads=2), 0)
    return result


def ms(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    sd = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


def format_table(results: list[dict], bar: float) -> str:
    head = (
        f"| task | model | seeds | greedy before RL | greedy at end | sampled first 10 -> last 10 | "
        f"reaches start + {bar:.2f} at iteration | mixed groups first -> last 10 | KL last 10 | warm-up x3 alone |"
    )
    lines = [head, "| " + " | ".join(["---"] * 10) + " |"]
    for r in results:
        runs = list(r["runs"].values())
        crossings = ", ".join(str(x["crosses_bar_at"]) if x["crosses_bar_at"] else "never" for x in runs)
        lines.append(
            f"| {r['task']} | {r['size']} | {len(runs)} | {ms([x['greedy_start'] for x in runs])} | "
            f"{ms([x['greedy_end'] for x in runs])} | {ms([x['sampled_first10'] for x in runs])} -> "
            f"{ms([x['sampled_last10'] for x in runs])} | {crossings} | "
            f"{ms([x['mixed_groups_first10'] for x in runs])} -> {ms([x['mixed_groups_last10'] for x in runs])} | "
            f"{ms([x['kl_last10'] for x in runs], 3)} | {r.get('warmup_x3_greedy', 'not run')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the slow test's version: copy task, 0.4M, 1 seed")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {list(TASKS)}")
    p.add_argument("--sizes", default="0.4M,2.7M", help=f"comma-separated, of {list(SIZES)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--warmup-steps", type=int, default=None, help="for every task (default: each task's own)")
    p.add_argument("--bar", type=float, default=0.10, help="the gain in held-out greedy accuracy that counts")
    p.add_argument("--capacity", action="store_true", help="also measure supervised warm-up alone at 3x steps")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run-config overrides, e.g. train.lr=1e-4")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "learnability")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.sizes, args.seeds, args.iterations = "answer_format", "0.4M", [0], 40
    tasks, sizes = args.tasks.split(","), args.sizes.split(",")
    for t in tasks:
        if t not in TASKS:
            p.error(f"--tasks: {t!r} is not one of {list(TASKS)}")
    for s in sizes:
        if s not in SIZES:
            p.error(f"--sizes: {s!r} is not one of {list(SIZES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = [measure(t, s, args, args.out) for t in tasks for s in sizes]
    (args.out / "learnability.json").write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results}, indent=2)
    )
    print(format_table(results, args.bar))
    print(f"\nwrote {args.out / 'learnability.json'}")
    return results


if __name__ == "__main__":
    main()
