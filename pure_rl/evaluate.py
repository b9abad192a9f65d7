"""Evaluation on held-out problems: ``python -m pure_rl.evaluate --config X [--run-dir RUN] [k=v ...]``.

Accuracy is the verifier's (last ``\\boxed{}`` against the reference), with greedy decoding, one sample per
problem; ``--samples K`` also samples K responses per problem at the policy's temperature (what training
sees) and reports their accuracy and pass@K; ``--best-of N`` samples N and picks one by the PRM's aggregated
step scores (:mod:`pure_rl.best_of_n`), beside majority vote and pass@n, writing a table, JSON and a plot.
With ``--run-dir`` the policy weights come from that run's checkpoint (a LoRA run's adapters on its base model);
without it, from the config's starting model (after its ``warmup`` section, if any: the cached warmed-up model).

``--benchmarks paper`` scores greedy pass@1 on the PURE paper's five benchmarks (AIME24, AMC23, MATH-500, Minerva
Math, OlympiadBench: the shipped files), every problem once, and prints them with their average as the paper's
table does; ``--benchmarks`` also takes a comma-separated list of dataset presets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch

__all__ = ["PAPER_BENCHMARKS", "evaluate", "evaluate_benchmarks", "greedy"]

# The PURE paper's evaluation table, in its column order (dataset presets of envs.datasets).
PAPER_BENCHMARKS = ("aime24", "amc23", "math500", "minerva", "olympiadbench")


@contextlib.contextmanager
def greedy(policy):
    """Temporarily decode greedily (temperature 0) with the policy's backend."""
    backend = policy.backend
    saved = backend.temperature
    backend.temperature = 0.0
    try:
        yield policy
    finally:
        backend.temperature = saved


def evaluate(env, policy, mode: str = "response", sampled: bool = False) -> dict[str, float]:
    """Accuracy and response statistics on one batch of the (held-out) env: ``eval_*`` metrics, greedy; or,
    with ``sampled``, ``eval_sampled_*`` at the policy's temperature, with ``pass_at_n`` over each group of
    the env (``group_size`` samples per problem).

    The env is rewound first, so every evaluation of a run scores the same problems.
    """
    from pure_rl.metrics import rollout_metrics
    from pure_rl.rollout import collect

    env.rewind()
    with contextlib.nullcontext(policy) if sampled else greedy(policy), torch.no_grad():
        traj = collect(env, policy, mode)
    m = rollout_metrics(traj)
    keys = ("accuracy", "steps_per_response", "response_tokens", "no_boxed_share", "prm_reward_mean")
    if sampled:
        return {f"eval_sampled_{k}": m[k] for k in (*keys, "pass_at_n") if k in m}
    return {f"eval_{k}": m[k] for k in keys if k in m}


def evaluate_benchmarks(cfg, policy, names, problems: int | None = None) -> dict[str, dict]:
    """Greedy pass@1 on each named held-out set (``env.eval_dataset`` set to it), every problem once (the first
    ``problems`` of each when given); returns ``{name: metrics}`` with each set's ``problems`` count."""
    import dataclasses

    from envs import make_env

    out = {}
    prm = None
    for name in names:
        bench_cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, eval_dataset=name))
        env = make_env(bench_cfg, split="eval", batch_size=problems or 10**9, prm=prm)
        prm = env.prm  # one PRM for all sets
        out[name] = {**evaluate(env, policy, cfg.policy.rollout_mode), "problems": env.batch_size[0]}
    return out


def benchmark_table(results: dict[str, dict]) -> str:
    """The paper's layout: one row, a column per benchmark and their unweighted average, pass@1 in percent."""
    names = list(results)
    accuracy = [100 * results[n]["eval_accuracy"] for n in names]
    head = "| " + " | ".join(f"{n} ({results[n]['problems']})" for n in names) + " | average |"
    rule = "| " + " | ".join("---" for _ in names) + " | --- |"
    row = "| " + " | ".join(f"{a:.1f}" for a in accuracy) + f" | {sum(accuracy) / len(accuracy):.1f} |"
    return "\n".join([head, rule, row])


def run_best_of_n(cfg, policy, problems: int, args, config: str) -> dict:
    """Best-of-N over ``problems`` held-out problems with the configured PRM (even when training is VR-only)."""
    from tqdm import tqdm

    from envs import make_env
    from pure_rl.best_of_n import (
        best_of_n,
        best_of_n_table,
        sample_scored,
        within_problem_accuracy,
        write_best_of_n,
    )
    from pure_rl.registry import get

    prm = get("prm", cfg.env.prm)(cfg)
    n = args.best_of
    per_batch = max(1, args.best_of_batch // n)  # problems per rollout: bounds the generation's memory
    samples: list[dict] = []
    bar = tqdm(total=problems, desc=f"best-of-{n}", unit="problem", dynamic_ncols=True)
    for start in range(0, problems, per_batch):
        count = min(per_batch, problems - start)
        env = make_env(cfg, split="eval", batch_size=count * n, group_size=n, prm=prm)
        env.stream.position = start  # the held-out order, continued: every problem once
        samples += sample_scored(env, policy, cfg.policy.rollout_mode)
        bar.update(count)
    bar.close()
    table = best_of_n(samples, args.aggregate, args.best_of)
    pairs = within_problem_accuracy(samples, args.aggregate)
    out = args.out or (f"{args.run_dir}/best_of_n" if args.run_dir else "runs/best_of_n")
    title = f"best-of-N, {problems} problems, PRM {cfg.env.prm} ({cfg.env.prm_model or 'built in'})"
    meta = {
        "config": str(config),
        "prm": cfg.env.prm,
        "prm_model": cfg.env.prm_model,
        "prm_dtype": cfg.env.prm_dtype,
        "within_problem_accuracy": pairs,
        "problems": problems,
        "n_max": args.best_of,
        "title": title,
    }
    write_best_of_n(table, samples, out, meta)
    print(best_of_n_table(table))
    print(
        "a correct response outscores a wrong one to the same problem in: "
        + ", ".join(f"{name} {v:.3f}" for name, v in pairs.items())
    )
    print(f"wrote {out}/best_of_n.json and best_of_n.png")
    return {**{str(n): row for n, row in table.items()}, "within_problem_accuracy": pairs}


def main(argv: list[str] | None = None, *, own_process: bool = False) -> dict:
    """The command line; ``own_process``: this process runs this one command and nothing after it."""
    from agents import make_policy
    from envs import make_env
    from pure_rl.checkpoint import load_checkpoint
    from pure_rl.config import DEFAULT_CONFIG, ConfigError, load_config
    from pure_rl.warmup import warmed_up_model

    p = argparse.ArgumentParser(prog="python -m pure_rl.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="YAML run config (default: the run's, else configs/default.yaml)")
    p.add_argument("--run-dir", default=None, help="evaluate the policy saved in this run's checkpoint")
    p.add_argument("--problems", type=int, default=None, help="held-out problems (default: train.eval_prompts)")
    p.add_argument(
        "--samples", type=int, default=0, help="also sample this many responses per problem (accuracy, pass@K)"
    )
    p.add_argument(
        "--best-of", type=int, default=0, help="sample N per problem and select by the PRM (env.prm) for n = 1..N"
    )
    p.add_argument(
        "--aggregate", nargs="+", default=None, help="best-of-N: step-score aggregations (default: min last prod mean)"
    )
    p.add_argument("--out", default=None, help="best-of-N: folder for best_of_n.json/.png (default: runs/best_of_n)")
    p.add_argument(
        "--best-of-batch", type=int, default=256, help="best-of-N: responses generated at once (problems x N)"
    )
    p.add_argument(
        "--benchmarks",
        default=None,
        help="'paper' (AIME24, AMC23, MATH-500, Minerva Math, OlympiadBench) or comma-separated dataset presets: "
        "greedy pass@1 on each, every problem once, and their average",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. env.eval_dataset=gsm8k")
    args = p.parse_args(argv)
    if args.samples < 0:
        sys.exit(f"--samples must be >= 0 (0: greedy only), got {args.samples}")
    if args.best_of < 0:
        sys.exit(f"--best-of must be >= 0 (0: no best-of-N), got {args.best_of}")
    if args.best_of_batch < 1:
        sys.exit(f"--best-of-batch must be >= 1, got {args.best_of_batch}")
    if args.problems is not None and args.problems < 1:
        sys.exit(f"--problems must be >= 1 (leave it out for train.eval_prompts), got {args.problems}")
    if args.aggregate is not None and not args.best_of:
        sys.exit("--aggregate chooses best-of-N's step-score aggregations: give --best-of N with it")
    args.aggregate = args.aggregate or ["min", "last", "prod", "mean"]
    from pure_rl.best_of_n import AGGREGATIONS

    unknown = [a for a in args.aggregate if a not in AGGREGATIONS]
    if unknown:
        sys.exit(f"--aggregate {unknown[0]!r} is not an aggregation; choose from {', '.join(AGGREGATIONS)}")
    config = args.config or (f"{args.run_dir}/config.yaml" if args.run_dir else DEFAULT_CONFIG)
    try:
        cfg = load_config(config, args.overrides)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    if own_process:
        from pure_rl.startup import import_torchrl_without_vllm

        import_torchrl_without_vllm(cfg.policy.backend)
    benchmarks = None
    if args.benchmarks:
        from envs.datasets import PRESETS

        benchmarks = PAPER_BENCHMARKS if args.benchmarks == "paper" else tuple(args.benchmarks.split(","))
        unknown = [b for b in benchmarks if b not in PRESETS]
        if unknown:
            sys.exit(f"--benchmarks: {unknown[0]!r} is not a dataset preset; use 'paper' or of {', '.join(PRESETS)}")
    # A run's checkpoint replaces the weights, so only a config's own starting point needs its warm-up (and a LoRA
    # run's, whose adapters sit on that starting point).
    lora = cfg.lora.rank > 0
    policy = make_policy(cfg, model_name=None if args.run_dir and not lora else warmed_up_model(cfg))
    if args.run_dir:
        state = load_checkpoint(args.run_dir)["model"]
        if lora:
            # A LoRA run's checkpoint holds its adapters: put them on the starting model the config names.
            from agents.lora import apply_lora, load_adapter_state

            policy.model = apply_lora(
                policy.model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules
            )
            load_adapter_state(policy.model, state)
        else:
            policy.model.load_state_dict(state)
        policy.sync_weights()
    if benchmarks:
        results = evaluate_benchmarks(cfg, policy, benchmarks, args.problems)
        print(benchmark_table(results))
        return results
    env = make_env(cfg, split="eval", batch_size=args.problems)
    result = evaluate(env, policy, cfg.policy.rollout_mode)
    problems = env.batch_size[0]
    if args.samples:
        env = make_env(cfg, split="eval", batch_size=problems * args.samples, group_size=args.samples)
        result.update(evaluate(env, policy, cfg.policy.rollout_mode, sampled=True))
    if args.best_of:
        result["best_of_n"] = run_best_of_n(cfg, policy, problems, args, config)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(own_process=True)
