"""PURE training: ``python -m pure_rl.train --config configs/NAME.yaml [--run-dir DIR] [--resume DIR] [k=v ...]``.

One iteration, top to bottom: a TorchRL collector rolls out a grouped batch of episodes (policy + step-level
env) -> token batch -> reference log-probs (KL) -> value estimator (min-form or sum-form credit, RLOO
baselines) -> token-level PPO-clip with gradient accumulation -> optimiser step -> weight sync to the
generation engine -> metrics, samples, evaluation, checkpoint. Every hyperparameter is in the config
(``--print-config`` lists them).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from pure_rl.checkpoint import CheckpointError
from pure_rl.config import (
    DEFAULT_CONFIG,
    ConfigError,
    RunConfig,
    config_to_dict,
    describe,
    load_config,
    precision_warnings,
    save_config,
)
from pure_rl.run_dir import RunDirError, RunLock, claim_new_run, record_changes, resume_config
from pure_rl.startup import import_torchrl_without_vllm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pure_rl.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help=f"YAML run config (default: {DEFAULT_CONFIG.name})")
    p.add_argument("--run-dir", default=None, help="where config, metrics, checkpoints, plot and summary go")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-keys", action="store_true", help="list every config key with its help and exit")
    p.add_argument("--dry-run", action="store_true", help="load and validate the config, build nothing, exit")
    p.add_argument(
        "--device-memory",
        type=device_memory_gib,
        default=None,
        metavar="GIB",
        help="with --dry-run: print the memory plan for devices of this many GiB (exit 3 when it does not fit)",
    )
    p.add_argument(
        "--world-size",
        type=int,
        default=None,
        metavar="N",
        help="with --dry-run --device-memory: plan each of N devices of a torchrun job (FSDP unless parallel=ddp)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="a new run into a folder that holds a run deletes that run first"
    )
    p.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: apply overrides (or config.yaml edits) that change the experiment; they are recorded",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. algo.temperature=0.05 train.lr=3e-6")
    return p.parse_intermixed_args(argv)  # flags may follow the overrides


def device_memory_gib(text: str) -> float:
    """``--device-memory``: a positive, finite number of GiB."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GiB, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive, finite number of GiB (e.g. 80), got {text!r}")
    return value


def resolve_config(args: argparse.Namespace) -> tuple[RunConfig, Path]:
    """The run config and its folder (on ``--resume``, checked against what the folder holds)."""
    if args.resume:
        given = [flag for flag, value in (("--config", args.config), ("--run-dir", args.run_dir)) if value]
        if given:
            raise ConfigError(
                f"--resume continues the run in its folder with its own config.yaml; {' and '.join(given)} would be "
                "ignored: drop them (change keys with dotted overrides and --allow-changes)"
            )
        run_dir = Path(args.resume)
        cfg, _ = resume_config(run_dir, args.overrides, args.allow_changes)
        return cfg, run_dir
    if args.allow_changes:
        raise ConfigError("--allow-changes applies to --resume only")
    cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    run_dir = Path(args.run_dir or cfg.log.run_dir.format(name=cfg.log.name))
    return cfg, run_dir


def main(argv: list[str] | None = None, *, own_process: bool = False) -> dict:
    """The command line; ``own_process``: this process runs this one job and nothing after it."""
    args = parse_args(argv)
    if args.list_keys:
        print("\n".join(describe()))
        return {}
    try:
        cfg, run_dir = resolve_config(args)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))
        return {}
    if args.dry_run:
        for warning in precision_warnings(cfg):  # a real run prints them as it starts
            print(f"warning: {warning}")
        print(
            f"config OK: {cfg.policy.model} ({cfg.policy.backend}), {cfg.algo.estimator}, "
            f"{cfg.env.reward_mode}, {cfg.train.iterations} iterations -> {run_dir}"
        )
        if args.device_memory is not None:
            from pure_rl.memory_plan import memory_plan

            plan = memory_plan(cfg, args.device_memory, run_dir, world_size=args.world_size or 1)
            print("\n".join(plan.lines()))
            if not plan.fits:
                sys.exit(3)
        return {}
    if args.device_memory is not None or args.world_size is not None:
        sys.exit(
            "config error: --device-memory and --world-size go with --dry-run (a run reads its devices' memory and "
            "its number of processes itself)"
        )
    if own_process:
        import_torchrl_without_vllm(cfg.policy.backend)
    from pure_rl.parallel import setup_parallel

    try:
        par = setup_parallel(cfg)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    try:
        with par.main_only(RunLock(run_dir)):
            if args.resume and par.is_main:
                # Under the lock: re-check, since another process may have resumed meanwhile.
                cfg, changes = resume_config(run_dir, args.overrides, args.allow_changes)
                record_changes(run_dir, cfg, changes)
            return train(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite, parallel=par)
    except (RunDirError, CheckpointError, ConfigError) as e:
        sys.exit(f"error{par.rank_label}: {e}")
    finally:
        par.close()


def train(
    cfg: RunConfig,
    run_dir: Path,
    resume: bool = False,
    *,
    env=None,
    eval_env=None,
    prm=None,
    verifier=None,
    overwrite: bool = False,
    parallel=None,
) -> dict:
    """Train per ``cfg`` into ``run_dir`` (``resume``: continue from its checkpoint); returns the summary.

    Objects built by hand replace the configured ones: ``env`` (a ``ReasoningStepEnv``, or any env with its
    keys and batch layout), ``eval_env``, or just its ``prm`` / ``verifier`` inside the configured env. A new run
    refuses a folder that holds a run unless ``overwrite``; the folder is locked while the run trains
    (:mod:`pure_rl.run_dir`). ``parallel``: this process's place in a run on several
    (:func:`pure_rl.parallel.setup_parallel`; by default made here from ``train.parallel`` and closed at the end).
    """
    from pure_rl.parallel import setup_parallel

    if cfg.train.ray_rollout_workers and any(x is not None for x in (env, eval_env, prm, verifier)):
        # The workers build their envs from the config: objects made here would silently not reach them.
        raise ConfigError(
            "train.ray_rollout_workers: the Ray workers build the configured env, PRM and verifier, so objects "
            "passed to train() by hand would not reach them; register them as plug-ins (the config's plugins: "
            "key) and select them by name, or set train.ray_rollout_workers=0"
        )
    par = parallel or setup_parallel(cfg)
    try:
        refuse_if_it_cannot_fit(cfg, run_dir, par.world)
        with par.main_only(RunLock(run_dir)):
            if not resume and par.is_main:
                claim_new_run(run_dir, overwrite)
                save_config(cfg, run_dir / "config.yaml")
            par.barrier()  # the folder is claimed before any rank writes into it
            return _train(cfg, run_dir, resume, par, env=env, eval_env=eval_env, prm=prm, verifier=verifier)
    finally:
        if parallel is None:
            par.close()


def refuse_if_it_cannot_fit(cfg: RunConfig, run_dir: Path, world_size: int = 1) -> None:
    """Stop before any model loads when the memory plan does not fit: a CUDA device's memory, or anywhere the run
    folder's disk (three checkpoints at a save), ``/dev/shm`` (the vLLM sync) or host RAM."""
    from pure_rl.memory_plan import memory_plan

    device = torch.device(cfg.policy.device)
    total = None
    if device.type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(device.index or 0).total_memory / 2**30
    plan = memory_plan(cfg, total, run_dir, world_size=world_size)
    if not plan.fits:
        print("\n".join(plan.lines()))
        sys.exit(3)


def _train(cfg: RunConfig, run_dir: Path, resume: bool, par, *, env, eval_env, prm, verifier) -> dict:
    # Heavy imports after the config is validated: a typo never waits for torch models to load.
    from tqdm import tqdm

    from pure_rl.build import build_training
    from pure_rl.group_filter import fill_batch
    from pure_rl.loggers import make_loggers
    from pure_rl.metrics import (
        boundary_probabilities,
        cuda_peak_gib,
        rollout_metrics,
        separator_token_ids,
        token_metrics,
    )
    from pure_rl.plots import plot_run, read_metrics
    from pure_rl.rollout import make_collector
    from pure_rl.update import add_credit, policy_token_batch, ppo_update

    t_setup = time.perf_counter()
    run = build_training(cfg, run_dir, resume, par, env=env, eval_env=eval_env, prm=prm, verifier=verifier)
    cfg, env, eval_env, sampled_eval_env = run.cfg, run.env, run.eval_env, run.sampled_eval_env
    policy, model, tokenizer, reference = run.policy, run.model, run.tokenizer, run.reference
    loss_module, estimator, optimizer, scheduler, scaler = (
        run.loss_module,
        run.estimator,
        run.optimizer,
        run.scheduler,
        run.scaler,
    )
    sampler, start, start_model = run.sampler, run.start, run.start_model
    loggers = par.main_only_loggers(make_loggers, cfg, run_dir)
    scalars_dir = run_dir / "logs" / "scalars"

    # A TorchRL collector: one grouped batch of fresh episodes per step of its iterator (built after a resume, at
    # the restored data position); with train.ray_rollout_workers, TorchRL's RayCollector over workers that start
    # from the trainer's weights.
    if cfg.train.ray_rollout_workers:
        from pure_rl.ray_rollout import make_ray_collector  # imports Ray

        collector = make_ray_collector(cfg, env, start_model)
        collector.push_weights(model)
    else:
        collector = make_collector(env, policy, cfg.policy.rollout_mode)
    batches = iter(collector)

    def checkpoint(done_iterations: int) -> None:
        run.save_checkpoint(run_dir, par, done_iterations, collector.env_state())

    stop = {"requested": False}

    def on_interrupt(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        name = signal.Signals(signum).name
        print(f"\n{name}: finishing this iteration, saving a checkpoint, exiting (Ctrl-C again to abort)")

    # Ctrl-C, and SIGTERM (what schedulers and container runtimes send before a kill), end the run cleanly.
    # Signal handlers can only be set from the main thread; a run started in another thread keeps the defaults.
    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous_handlers = {sig: signal.signal(sig, on_interrupt) for sig in handled}

    par.print(
        f"setup {time.perf_counter() - t_setup:.1f}s: {start_model} ({cfg.policy.backend}), "
        f"{cfg.algo.estimator} credit, {cfg.env.reward_mode}, {env.batch_size[0] * par.world} episodes per iteration "
        f"({cfg.train.prompts_per_iter} prompts x {cfg.train.samples_per_prompt}{par.describe()}) -> {run_dir}"
    )
    history: list[dict] = []
    separators: list[int] = []  # the probe's separator tokens, found once
    progress = tqdm(
        range(start, cfg.train.iterations),
        initial=start,
        total=cfg.train.iterations,
        desc="train",
        dynamic_ncols=True,
        disable=not par.is_main,
    )
    if eval_env is not None and cfg.train.eval_at_start and start == 0:
        # Before the first update: the baseline the run's later evaluations compare with.
        for name, value in held_out_metrics(eval_env, sampled_eval_env, policy, sampler, 0, par).items():
            loggers.log_scalar(name, value, 0)
    for iteration in progress:
        step = iteration + 1
        # 1. Rollout: the policy writes steps, the env scores them (PRM) and the final answer (verifier).
        t0 = time.perf_counter()
        env.reward_seconds = 0.0
        with torch.no_grad():
            traj = par.gather_batch(next(batches))  # this rank's groups -> the global batch, on every rank
            if cfg.algo.group_filter != "none":  # dynamic sampling: more rollouts until the groups carry signal
                traj, filtered = fill_batch(traj, batches, estimator, cfg)
        rollout_s = time.perf_counter() - t0
        reward_s = env.reward_seconds
        policy.release_engine()  # with policy.vllm_sleep the update gets the engine's memory until the sync
        peaks = {"peak_gib_rollout": cuda_peak_gib(cfg.policy.device)}

        # 2. Tokens, old-policy and reference log-probs, KL in the reward (k1), credit assignment.
        t1 = time.perf_counter()
        tokens = policy_token_batch(traj, policy, cfg)
        add_credit(traj, tokens, model, reference, estimator, cfg, tokenizer=tokenizer, parallel=par)

        # 3. PPO update: micro-batches with gradient accumulation, one optimiser step per epoch.
        stats = ppo_update(loss_module, optimizer, tokens, traj, cfg, scheduler, scaler, parallel=par)
        update_s = time.perf_counter() - t1
        peaks["peak_gib_update"] = cuda_peak_gib(cfg.policy.device)

        # 4. Weight sync: the generation engine samples from the updated policy next iteration.
        t2 = time.perf_counter()
        policy.sync_weights()
        collector.push_weights(model)  # rollout workers on Ray (a no-op for the trainer's own collector)
        sync_s = time.perf_counter() - t2

        # 5. Metrics, samples, evaluation, checkpoint.
        metrics = rollout_metrics(traj)
        metrics.update(token_metrics(traj, tokens))
        if cfg.log.probe_every and step % cfg.log.probe_every == 0:
            separators = separators or separator_token_ids(tokenizer, cfg.env.step_separator)
            local = par.local_rows(tokens)  # the probe's forward pass, each rank on its rows
            metrics.update(par.mean(boundary_probabilities(model, local, policy.eos_token_ids, separators)))
        generated = tokens["response_mask"].sum().item()
        metrics.update(stats)
        if cfg.algo.group_filter != "none":
            metrics.update(filtered)
        metrics.update(
            rollout_s=rollout_s,
            reward_s=reward_s,
            update_s=update_s,
            sync_s=sync_s,
            tokens_per_s=generated / max(rollout_s, 1e-9),
        )
        metrics.update({k: v for k, v in peaks.items() if v is not None})  # CUDA only
        if cfg.train.eval_every and (step % cfg.train.eval_every == 0 or step == cfg.train.iterations):
            metrics.update(held_out_metrics(eval_env, sampled_eval_env, policy, sampler, step, par))
        for name, value in metrics.items():
            loggers.log_scalar(name, value, step)
        history.append({"iteration": step, **metrics})
        progress.set_postfix(
            reward=f"{metrics['reward_return']:.2f}",
            acc=f"{metrics.get('accuracy', 0):.2f}",
            steps=f"{metrics['steps_per_response']:.1f}",
            kl=f"{metrics['kl']:.3f}",
        )
        if cfg.log.sample_every and (step % cfg.log.sample_every == 0 or step == 1) and par.is_main:
            from pure_rl.samples import append_samples, format_response, sample_records

            records = [{"iteration": step, **r} for r in sample_records(traj)]  # all kept; the log shows the first
            append_samples(run_dir / "samples.jsonl", records)
            print(f"\n--- sample at iteration {step}: {records[0]['question'][:200]}\n{format_response(records[0])}")
        stopping = par.any(stop["requested"])  # a signal one rank got stops every rank after this iteration
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.iterations or stopping:
            checkpoint(step)
        if stopping:
            par.print(f"stopped after iteration {step}; resume with: python -m pure_rl.train --resume {run_dir}")
            break
    progress.close()
    collector.shutdown()
    loggers.close()
    for sig, handler in previous_handlers.items():
        signal.signal(sig, handler)

    # --- artefacts: plot and summary ----------------------------------------------------------------------
    if not par.is_main:
        return {"run_dir": str(run_dir), "rank": par.rank}
    # From the logs, not `history`: a resumed run's summary covers the iterations before the resume too.
    summary = summarize(read_metrics(scalars_dir) if scalars_dir.is_dir() else history, cfg, run_dir)
    summary["start_model"] = start_model
    if scalars_dir.is_dir():
        plot_run(
            scalars_dir,
            run_dir / "curves.png",
            title=f"{cfg.log.name}: {cfg.algo.estimator}, {cfg.env.reward_mode}, {cfg.policy.model}",
        )
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    return summary


def held_out_metrics(eval_env, sampled_env, policy, sampler: torch.Generator | None, step: int, par=None) -> dict:
    """Greedy held-out metrics (``eval_*``), and sampled ones (``eval_sampled_*``) when ``sampled_env`` is given,
    printed on one line. Sampling here leaves the training sampler's state as it found it, so evaluating does not
    change what training draws (the transformers backend; vLLM's engine has one generator for both). With
    several processes each rank scores its equal share of the problems and the means are averaged (``par``)."""
    from tqdm import tqdm

    from pure_rl.evaluate import evaluate

    metrics = evaluate(eval_env, policy)
    if sampled_env is not None:
        state = sampler.get_state() if sampler is not None else None
        metrics.update(evaluate(sampled_env, policy, sampled=True))
        if state is not None:
            sampler.set_state(state)
    world = 1
    if par is not None:
        metrics, world = par.mean(metrics), par.world
    line = f"held-out at iteration {step}: greedy accuracy {metrics['eval_accuracy']:.3f}"
    if sampled_env is not None:
        n = sampled_env.group_size
        line += (
            f", sampled accuracy {metrics['eval_sampled_accuracy']:.3f} and pass@{n} "
            f"{metrics.get('eval_sampled_pass_at_n', float('nan')):.3f} ({n} samples per problem)"
        )
    if par is None or par.is_main:
        tqdm.write(f"{line} ({eval_env.batch_size[0] * world} problems)")
    return metrics


def summarize(history: list[dict], cfg: RunConfig, run_dir: Path) -> dict:
    def first_last(key: str) -> dict:
        # One iteration's batch is small and noisy: the means of the first and last five say more.
        values = [h[key] for h in history if key in h]
        if not values:
            return {}
        ends = {"mean_first_5": float(np.mean(values[:5])), "mean_last_5": float(np.mean(values[-5:]))}
        return {"first": values[0], "last": values[-1], "best": max(values), **ends}

    timing = {
        k: float(np.mean([h[k] for h in history if k in h]))
        for k in ("rollout_s", "reward_s", "update_s", "sync_s", "tokens_per_s")
        if any(k in h for h in history)
    }
    return {
        "run_dir": str(run_dir),
        "iterations": int(history[-1]["iteration"]) if history else 0,
        "model": cfg.policy.model,
        "estimator": cfg.algo.estimator,
        "reward_mode": cfg.env.reward_mode,
        "accuracy": first_last("accuracy"),
        "eval_accuracy": first_last("eval_accuracy"),
        "eval_sampled_accuracy": first_last("eval_sampled_accuracy"),
        "steps_per_response": first_last("steps_per_response"),
        "response_tokens": first_last("response_tokens"),
        "prm_reward_mean": first_last("prm_reward_mean"),
        "seconds_per_iteration": timing,
    }


def format_summary(summary: dict) -> str:
    lines = [f"\nsummary ({summary['iterations']} iterations, {summary['estimator']}, {summary['reward_mode']}):"]
    keys = ("accuracy", "eval_accuracy", "eval_sampled_accuracy", "steps_per_response", "response_tokens")
    for key in (*keys, "prm_reward_mean"):
        v = summary.get(key) or {}
        if v:
            lines.append(
                f"  {key:<20} first {v['first']:.3f}  last {v['last']:.3f}  best {v['best']:.3f}  "
                f"(mean of first 5 {v['mean_first_5']:.3f}, last 5 {v['mean_last_5']:.3f})"
            )
    t = summary.get("seconds_per_iteration", {})
    if t:
        lines.append("  seconds/iteration    " + "  ".join(f"{k} {v:.1f}" for k, v in t.items()))
    lines.append(
        f"  artefacts in {summary['run_dir']}: config.yaml, logs/scalars/*.csv, samples.jsonl, checkpoint.pt, "
        "curves.png, summary.json"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main(own_process=True)
