"""The GPU check: what pure-rl does on one CUDA device, in one table, with no model hub and no network.

Rows (each in its own process, so each peak is its own; a row that fails is reported and the others still run):

- ``tiny``: ``configs/tiny.yaml`` on the device with bf16-mixed (fp32 masters), 3 iterations.
- ``single_gpu``: ``configs/single_gpu_qwen1.5b_prm_vr.yaml`` with random-weight models of the real shapes (a
  Qwen2.5-Math-1.5B-shaped policy with its 151,936-token vocabulary, a token-classification PRM of the same
  shape in place of PURE-PRM-7B, the embedded SmolLM2 tokenizer), shortened to 8 prompts x 4 samples, 256
  tokens, 3 iterations, the transformers backend (vLLM is not on the lent machines), training prompts from the
  shipped MATH-500 file. Its memory plan is printed beside ``torch.cuda.max_memory_allocated`` of the run and of
  each phase (rollout, update), and the final checkpoint's size and the run's wall time beside it.
- ``lora``: the same with ``lora.rank=16``.
- ``torchrun``: the ``single_gpu`` row under ``torchrun --standalone --nproc_per_node 1`` with
  ``train.parallel=fsdp`` (NCCL, FSDP2 with bf16 all-gathers, sharded DCP checkpoints, the generation copy and
  its tensor-by-tensor sync): the multi-process path on one device, beside the one-process row.
- ``trl``: pure-rl against TRL's GRPOTrainer on the same work on that device (``benchmarks/vs_trl.py`` with the
  1.5B-shaped policy, bf16-mixed in both, verifier reward only).
- ``update``: where the update's seconds go (``benchmarks/update_phases.py`` on the 1.5B-shaped policy, the
  ``trl`` row's work): reference pass, loss forward + backward and AdamW step of each log-prob pass variant beside
  a plain whole-sequence pass, and the top device operators of the default one.

Random weights never stop before the token budget and never answer, so every row does the full work of its
shape; rewards are meaningless, and accuracy is not reported.

Run on a GPU machine: ``bash benchmarks/gpu_check.sh`` (it installs the wheels carried in ``.whl/`` and uses
the tokenizer carried in ``.gpu/tokenizer``; ``benchmarks/gpu_wheels.sh`` prepares both on a machine with
PyPI). On CPU with tiny shapes (the test suite does this): ``python benchmarks/gpu_check.py --tiny --device cpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROWS = ("tiny", "single_gpu", "lora", "torchrun", "trl", "update")
# Qwen2.5-Math-1.5B's config.json (the shape; the weights are random).
QWEN_MATH_1_5B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=4096,
    rope_theta=10000.0,
    tie_word_embeddings=True,
)
# CPU test size: the same code paths in seconds (head size 32).
TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=None,  # the tokenizer's
    max_position_embeddings=1024,
    rope_theta=10000.0,
    tie_word_embeddings=True,
)


def build_models(out: Path, tokenizer_dir: str, shape: dict, device: str) -> tuple[Path, Path]:
    """Random-weight ``policy`` and ``prm`` folders of ``shape`` under ``out`` (bf16 safetensors + tokenizer),
    built on ``device`` (fast on a GPU), reused when already there."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification

    policy_dir, prm_dir = out / "policy", out / "prm"
    if (policy_dir / "config.json").is_file() and (prm_dir / "config.json").is_file():
        return policy_dir, prm_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = {**shape, "vocab_size": shape["vocab_size"] or len(tokenizer)}
    ids = dict(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    for cls, folder, extra in (
        (Qwen2ForCausalLM, policy_dir, {}),
        (Qwen2ForTokenClassification, prm_dir, {"num_labels": 2}),
    ):
        with torch.device(device):
            model = cls(Qwen2Config(**shape, **ids, **extra)).to(torch.bfloat16)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model
    return policy_dir, prm_dir


def row_config(name: str, policy_dir: Path, prm_dir: Path, device: str, tiny: bool) -> tuple[str, list[str]]:
    """The config file and overrides of a training row."""
    if name == "tiny":
        return "configs/tiny.yaml", [
            f"policy.device={device}",
            "train.precision=bf16-mixed",
            f"train.iterations={2 if tiny else 3}",
        ]
    overrides = [
        f"policy.model={policy_dir}",
        f"env.prm_model={prm_dir}",
        f"policy.device={device}",
        f"env.prm_device={device}",
        "policy.backend=transformers",
        "env.dataset=math500",
        "env.filter_field=",
        "train.prompts_per_iter=" + ("2" if tiny else "8"),
        "train.samples_per_prompt=4",
        "env.max_tokens=" + ("16" if tiny else "256"),
        "env.max_steps=" + ("4" if tiny else "64"),
        "train.iterations=" + ("2" if tiny else "3"),
        "train.mini_batch_size=" + ("4" if tiny else "16"),
        "train.micro_batch_size=4",
        "train.eval_every=0",
        "train.checkpoint_every=1000",
        "warmup.steps=0",
        "log.sample_every=0",
        "log.loggers=[csv]",
    ]
    if name == "lora":
        overrides.append("lora.rank=16")
    if name == "torchrun":
        overrides.append("train.parallel=fsdp")
    return "configs/single_gpu_qwen1.5b_prm_vr.yaml", overrides


def device_gib(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30


UPDATE_PHASES = ("policy_token_batch", "add_credit", "ppo_update")


def time_update_phases(device: str) -> dict[str, list[float]]:
    """Wrap the update's module functions (``pure_rl.update``, which the loop imports at run time) with timers
    that synchronise the device around each call; the seconds of each call, by phase."""
    import torch

    from pure_rl import update

    times: dict[str, list[float]] = {name: [] for name in UPDATE_PHASES}

    def timed(name, fn):
        def wrapper(*a, **kw):
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - t0)
            return out

        return wrapper

    for name in UPDATE_PHASES:
        setattr(update, name, timed(name, getattr(update, name)))
    return times


def run_training_row(name: str, args) -> dict:
    """One training row in this process: the memory plan, the run, its timings and peaks."""
    import torch

    from pure_rl.checkpoint import checkpoint_shards
    from pure_rl.config import load_config
    from pure_rl.memory_plan import memory_plan
    from pure_rl.parallel import setup_parallel
    from pure_rl.plots import read_metrics
    from pure_rl.train import train

    models = Path(args.out) / "models"
    config, overrides = row_config(name, models / "policy", models / "prm", args.device, args.tiny)
    cfg = load_config(ROOT / config, overrides)
    from pure_rl.startup import import_torchrl_without_vllm

    import_torchrl_without_vllm(cfg.policy.backend)  # a row is a process of its own
    par = setup_parallel(cfg)  # joins torchrun's process group in the torchrun row
    plan = memory_plan(cfg, device_gib(args.device), world_size=par.world)
    run_dir = Path(args.out) / "runs" / name
    on_cuda = args.device.startswith("cuda")
    phase_times = time_update_phases(args.device)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(cfg, run_dir, overwrite=True, parallel=par)
    wall = time.perf_counter() - t0
    par.close()
    rows = read_metrics(run_dir / "logs" / "scalars")
    later = rows[1:] or rows  # the first iteration warms kernels and caches up

    def mean(key):
        values = [r[key] for r in later if key in r]
        return sum(values) / len(values) if values else None

    def phase(name):
        return [r[f"peak_gib_{name}"] for r in rows if f"peak_gib_{name}" in r]

    # A sharded run's weights and optimiser are in the shard folder its checkpoint names, beside checkpoint.pt.
    shards = checkpoint_shards(run_dir)
    files = [run_dir / "checkpoint.pt", *(shards.iterdir() if shards else [])]
    checkpoint_bytes = sum(f.stat().st_size for f in files if f.is_file())
    device = next(iter(plan.devices))
    return {
        "row": name,
        "config": config,
        "overrides": overrides,
        "iterations": len(rows),
        "wall_s": wall,
        "rollout_s": mean("rollout_s"),
        "update_s": mean("update_s"),
        # The update's parts (token tensors; old/reference passes and credit; the PPO passes and steps), the
        # first iteration left out as above.
        "update_phases_s": {k: sum(v[1:] or v) / len(v[1:] or v) for k, v in phase_times.items() if v},
        "tokens_per_s": mean("tokens_per_s"),
        "response_tokens": mean("response_tokens"),
        "plan_gib": plan.total(device) / 2**30,
        "plan": plan.lines(),
        # The loop resets the peak counter at every phase: the run's peak is the largest of the phases' and of
        # what came after the last reset (the final checkpoint).
        "peak_gib": max([torch.cuda.max_memory_allocated() / 2**30, *phase("rollout"), *phase("update")])
        if on_cuda
        else None,
        "peak_gib_rollout": max(phase("rollout"), default=None),
        "peak_gib_update": max(phase("update"), default=None),
        "checkpoint_gib": checkpoint_bytes / 2**30 if checkpoint_bytes else None,
    }


def run_trl_row(args) -> dict:
    """pure-rl and TRL's GRPOTrainer on the same work on the device (``benchmarks/vs_trl.py``)."""
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        raise RuntimeError("TRL is not installed (pip install trl==1.16.0, or carry its wheel)")
    out = Path(args.out) / "vs_trl.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "vs_trl.py"),
        "--backends",
        "transformers",
        "--rounds",
        "1",
        "--iterations",
        "2" if args.tiny else "3",
        "--model",
        str(Path(args.out) / "models" / "policy"),
        "--device",
        args.device,
        "--precision",
        "fp32" if args.tiny else "bf16-mixed",
        "--prompts",
        "1" if args.tiny else "8",
        "--max-new",
        "8" if args.tiny else "256",
        "--json",
        str(out),
        "--stream",
    ]
    # Its output goes straight to this row's log: a row stopped by its time limit still shows how far it got.
    done = subprocess.run(cmd, cwd=ROOT, env={**child_env(), "PYTHONUNBUFFERED": "1"})
    if done.returncode:
        raise RuntimeError(f"vs_trl.py exited {done.returncode}")
    result = json.loads(out.read_text())
    return {"row": "trl", **{f"{k}": v for k, v in result.items()}}


def run_update_row(args) -> dict:
    """The update's phases on the device (``benchmarks/update_phases.py``), the ``trl`` row's work."""
    out = Path(args.out) / "update_phases.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "update_phases.py"), "--model",
           str(Path(args.out) / "models" / "policy"), "--device", args.device, "--json", str(out)]  # fmt: skip
    if args.tiny:
        cmd += ["--precision", "fp32", "--prompts", "2", "--samples", "2", "--prompt-tokens", "12"]
        cmd += ["--response-tokens", "8", "--micro", "2", "--peer-micro", "4", "--repeats", "1"]
    else:
        cmd += ["--precision", "bf16-mixed", "--profile"]
    done = subprocess.run(cmd, cwd=ROOT, env={**child_env(), "PYTHONUNBUFFERED": "1"})
    if done.returncode:
        raise RuntimeError(f"update_phases.py exited {done.returncode}")
    return {"row": "update", "phases": json.loads(out.read_text())}


def child_env() -> dict:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[dict]) -> list[str]:
    lines = [
        "| row | iterations | s / iteration (rollout + update) | response tokens / s | plan GiB | peak GiB "
        "(rollout / update) | checkpoint GiB | run wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {r['error']} | | | | | | |")
        elif r["row"] == "update":
            for name, t in r["phases"].items():
                lines.append(
                    f"| update: {name} | median | {fmt(t['total'], '.2f')} (reference {fmt(t['ref'], '.2f')}, loss "
                    f"{fmt(t['loss'], '.2f')}, AdamW {fmt(t['step'], '.2f')}) | | | | | |"
                )
        elif r["row"] == "trl":
            for name, med in ((k, v) for k, v in r.items() if isinstance(v, dict)):
                lines.append(
                    f"| vs TRL: {name} | median | {fmt(med['total'])} (gen {fmt(med['gen'])}, update "
                    f"{fmt(med['update'])}) | {fmt(med['response_tokens'] / med['total'])} | | | | |"
                )
        else:
            peaks = f"{fmt(r['peak_gib'])} ({fmt(r['peak_gib_rollout'])} / {fmt(r['peak_gib_update'])})"
            parts = ", ".join(f"{k} {v:.2f}" for k, v in r.get("update_phases_s", {}).items())
            update = fmt(r["update_s"]) + (f": {parts}" if parts else "")
            lines.append(
                f"| {r['row']} | {r['iterations']} | {fmt((r['rollout_s'] or 0) + (r['update_s'] or 0))} "
                f"({fmt(r['rollout_s'])} + {update}) | {fmt(r['tokens_per_s'])} | {fmt(r['plan_gib'])} "
                f"| {peaks} | {fmt(r['checkpoint_gib'])} | {fmt(r['wall_s'], '.0f')} |"
            )
    return lines


def environment(device: str) -> str:
    import torch
    import transformers

    what = f"torch {torch.__version__}, transformers {transformers.__version__}"
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        what = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, " + what
    return what


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--out", default="runs/gpu-check", help="models, runs and the table (gpu_check.md, .json)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the embedded SmolLM2's)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and runs (the CPU test)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    p.add_argument("--row-timeout", type=float, default=300.0, help="seconds a row may take before it is stopped")
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)  # one row, in a child process
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.row:
        run = {"trl": run_trl_row, "update": run_update_row}.get(args.row)
        result = run(args) if run else run_training_row(args.row, args)
        (out / f"row_{args.row}.json").write_text(json.dumps(result, indent=2))
        return [result]

    rows = args.rows.split(",")
    unknown = set(rows) - set(ROWS)
    if unknown:
        sys.exit(f"--rows: unknown {sorted(unknown)}; choose from {', '.join(ROWS)}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.tokenizer is None:
        from agents.models import resolve_model_dir

        args.tokenizer = str(resolve_model_dir("smollm2-135m-instruct"))
    build_models(out / "models", args.tokenizer, TINY_SHAPE if args.tiny else QWEN_MATH_1_5B, args.device)
    print(f"models built in {time.perf_counter() - t0:.0f}s: {out / 'models'}", flush=True)
    results = []
    for name in rows:
        t1 = time.perf_counter()
        cmd = [sys.executable, __file__, "--row", name, "--device", args.device, "--out", str(out)]
        if name == "torchrun":
            torchrun = str(Path(sys.executable).with_name("torchrun"))
            cmd = [torchrun, "--standalone", "--nproc_per_node", "1", *cmd[1:]]
        cmd += ["--tiny"] if args.tiny else []
        log = out / f"row_{name}.log"
        try:
            with log.open("w") as f:
                done = subprocess.run(cmd, cwd=ROOT, env=child_env(), stdout=f, stderr=subprocess.STDOUT,
                                      timeout=args.row_timeout)  # fmt: skip
            if done.returncode:
                tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"exit {done.returncode}: {tail[0][:160]}")
            result = json.loads((out / f"row_{name}.json").read_text())
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            result = {"row": name, "error": str(e) if isinstance(e, RuntimeError) else f"over {args.row_timeout:.0f}s"}
            print("\n".join(log.read_text().splitlines()[-25:]), flush=True)
        results.append(result)
        print(f"row {name}: {time.perf_counter() - t1:.0f}s", flush=True)
        for line in result.get("plan", []):
            print(f"  plan: {line}")
        # Written after every row: a check stopped by its time limit still leaves the rows it finished.
        report = [f"GPU check on {environment(args.device)}; {time.perf_counter() - t0:.0f}s in all", ""]
        report += table(results)
        (out / "gpu_check.md").write_text("\n".join(report) + "\n")
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    print("\n" + (out / "gpu_check.md").read_text(), flush=True)
    return results


if __name__ == "__main__":
    main()
