"""Rollout throughput: useful generated tokens/s of plain HF ``generate``, pure-rl's transformers path and its
vLLM path, beside this machine's compute roofline.

Setting: SmolLM2-135M-Instruct fp32, 128 sequences = 32 arithmetic prompts x 4 samples, sampling at
temperature 0.7, natural stopping at EOS, up to 256 new tokens. "Useful" tokens are those up to and including
each sequence's EOS (plain ``generate`` keeps computing rows that already stopped; that work is not useful).
The roofline is 2 x parameters FLOPs per token over the FLOP/s of a large fp32 matmul measured here, before
the paths run and again after them. Each row prints its share of the first timing as it finishes; the summary
at the end reads every figure against the higher of the two (the stricter roofline), because one timing can
read low on a busy machine.

The vLLM path is timed ``--vllm-repeats`` times on one engine (prefix cache reset before each, so each repeat
prefills its prompts again; each draws new samples, so token counts differ) and reported per repeat and as the
median tok/s: run to run, the same generation varies by several percent on this machine.

Run: ``python benchmarks/rollout.py [--prompts 32] [--samples 4] [--max-new-tokens 256] [--skip-vllm]
[--skip-hf] [--skip-transformers] [--vllm-block-size 32 128] [--vllm-max-batched-tokens N] [--vllm-repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def useful_tokens(rows: list[list[int]], eos: set[int]) -> int:
    total = 0
    for row in rows:
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        total += len(row) if stop is None else stop + 1
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--skip-vllm", action="store_true", help="leave out the vLLM path")
    parser.add_argument("--skip-hf", action="store_true", help="leave out plain HF generate")
    parser.add_argument("--skip-transformers", action="store_true", help="leave out pure-rl's transformers path")
    parser.add_argument(
        "--vllm-block-size", type=int, nargs="+", default=[32], help="KV block sizes to time (one engine each)"
    )
    parser.add_argument(
        "--vllm-max-batched-tokens", type=int, default=None, help="vLLM max_num_batched_tokens (default: vLLM's)"
    )
    parser.add_argument("--vllm-repeats", type=int, default=3, help="timed vLLM generations per engine (median)")
    args = parser.parse_args()
    if args.vllm_repeats < 1:
        parser.error(f"--vllm-repeats must be at least 1, got {args.vllm_repeats}")

    from agents import make_policy
    from agents.generation import TransformersBackend
    from envs import make_env
    from pure_rl.config import load_config

    overrides = [
        f"train.prompts_per_iter={args.prompts}",
        f"train.samples_per_prompt={args.samples}",
        f"env.max_tokens={args.max_new_tokens}",
        f"policy.temperature={args.temperature}",
        "policy.backend=transformers",  # the benchmark builds each engine itself
    ]
    cfg = load_config("configs/default.yaml", overrides)
    policy = make_policy(cfg)
    model, tok = policy.model, policy.tokenizer
    n_params = sum(p.numel() for p in model.parameters())
    env = make_env(cfg)
    prompts = [policy.prompt_ids(p) for p in env.reset().get("prompt").tolist()]
    eos = set(policy.eos_token_ids)
    flops_before = matmul_flops()
    roofline = flops_before / (2 * n_params)
    print(
        f"rollout benchmark: {len(prompts)} sequences ({args.prompts} prompts x {args.samples}), up to "
        f"{args.max_new_tokens} new tokens, T={args.temperature}, SmolLM2-135M fp32 ({n_params / 1e6:.1f}M params), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"compute roofline: fp32 matmul {flops_before / 1e9:.0f} GFLOP/s -> {roofline:.0f} tok/s "
        "(timed again at the end)"
    )
    results = {}
    shares = []  # (name, tok/s), re-read against the final roofline at the end
    header = f"{'path':<62}{'useful tok':>11}{'seconds':>9}{'tok/s':>8}{'roofline':>10}{'vs HF':>7}"

    def report(name: str, tokens: int, seconds: float) -> None:
        results[name] = (tokens, seconds)
        base = results.get("plain HF generate")
        rate = tokens / seconds
        shares.append((name, rate))
        vs = f"{rate / (base[0] / base[1]):.2f}x" if base else "-"
        print(f"{name:<62}{tokens:>11}{seconds:>9.1f}{rate:>8.1f}{rate / roofline:>9.0%}{vs:>7}", flush=True)

    print(header, flush=True)

    if not args.skip_hf:
        torch.manual_seed(0)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        tok.padding_side = "left"
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=args.max_new_tokens,
                do_sample=True,
                temperature=args.temperature,
                top_p=1.0,
                pad_token_id=tok.pad_token_id,
                eos_token_id=list(eos),
            )
        seconds = time.perf_counter() - t0
        report("plain HF generate", useful_tokens(out[:, width:].tolist(), eos), seconds)

    if not args.skip_transformers:
        backend = TransformersBackend(model, tok, temperature=args.temperature, seed=0, eos_token_ids=list(eos))
        t0 = time.perf_counter()
        gens = backend.generate(prompts, [args.max_new_tokens] * len(prompts), stop_at_step=False)
        seconds = time.perf_counter() - t0
        label = "pure-rl transformers (row-dropping decode loop)"
        report(label, useful_tokens([g.token_ids for g in gens], eos), seconds)

    if not args.skip_vllm:
        from agents.models import resolve_model_dir
        from agents.vllm_backend import VLLMBackend

        for block_size in args.vllm_block_size:
            t0 = time.perf_counter()
            vb = VLLMBackend(
                resolve_model_dir(cfg.policy.model),
                tok,
                temperature=args.temperature,
                seed=0,
                dtype="float32",
                max_model_len=1024,
                eos_token_ids=list(eos),
                block_size=block_size,
                max_num_batched_tokens=args.vllm_max_batched_tokens,
            )
            start = time.perf_counter() - t0
            vb.generate(prompts[:4], [8] * 4, stop_at_step=False)  # warm-up
            engine = vb.llm.llm_engine.vllm_config
            label = (
                f"pure-rl vLLM-CPU, vLLMWrapper (block {engine.cache_config.block_size}, batched tokens "
                f"{engine.scheduler_config.max_num_batched_tokens}, start {start:.0f}s)"
            )
            rates = []
            for repeat in range(args.vllm_repeats):
                vb.llm.reset_prefix_cache()  # every repeat prefills its prompts, as a training iteration does
                t0 = time.perf_counter()
                gens = vb.generate(prompts, [args.max_new_tokens] * len(prompts), stop_at_step=False)
                seconds = time.perf_counter() - t0
                tokens = useful_tokens([g.token_ids for g in gens], eos)
                rates.append(tokens / seconds)
                report(f"{label} #{repeat + 1}", tokens, seconds)
            vb.shutdown()
            median = statistics.median(rates)
            shares.append((f"{label} median of {len(rates)}", median))
            print(f"{label}: median {median:.1f} tok/s over {len(rates)} repeats", flush=True)

    flops_after = matmul_flops()
    flops = max(flops_before, flops_after)
    roofline = flops / (2 * n_params)
    bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")  # set by VLLMBackend on CPU, so only once vLLM ran
    print(
        f"\ncompute roofline re-timed: fp32 matmul {flops_before / 1e9:.0f} GFLOP/s before, {flops_after / 1e9:.0f} "
        f"after; shares against the higher, {roofline:.0f} tokens/s"
        + (f" (vLLM threads bound to {bind})" if bind else "")
        + ":"
    )
    for name, rate in shares:
        print(f"  {name:<100}{rate:>8.1f} tok/s {rate / roofline:>5.0%}")


if __name__ == "__main__":
    main()
