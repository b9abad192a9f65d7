"""PRM cost against steps per response: scoring every growing prefix (before) vs one pass per response (after).

A step-level env rewards each step when it is written. Scored naively, step k re-reads the question and all k
steps, so a K-step response costs 1 + 2 + ... + K step-reads: quadratic. In the ``response`` rollout mode the
env knows each whole response before its first step (``ReasoningStepEnv.plan_responses``) and, for a
prefix-causal PRM (a decoder-only backbone, where a step's score cannot read later tokens), scores it once and
reads every step's reward from that pass: linear, with rewards equal to the prefix scores (tests/test_rollout.py).

Setting: an HF token-classification PRM (a randomly initialised Qwen2, ``--hidden`` x ``--layers``, fp32, the
``pure_text`` layout) on the tiny tokenizer; ``--responses`` responses per batch, each of K steps of ~16 tokens,
K = 1, 2, 4 ... 32; the seconds are the env's own reward time (PRM + verifier), the median of ``--repeats``.
Both paths run side by side in one process and the table gives their ratio.

Run: ``python benchmarks/prm_cost.py [--hidden 256] [--layers 4] [--responses 8] [--max-steps 32] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def responses(tokenizer, n: int, steps: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text = "".join(
            f"Tom has {rng.randint(10, 99)} + {rng.randint(10, 99)} = {rng.randint(10, 200)} apples.\n\n"
            for _ in range(steps - 1)
        )
        out.append([*tokenizer.encode(text + f"So \\boxed{{{rng.randint(1, 99)}}}."), tokenizer.eos_token_id])
    return out


def reward_seconds(prm, tokenizer, batch: list[list[int]], steps: int, planned: bool) -> float:
    from envs.reasoning_env import ReasoningStepEnv
    from envs.tasks import ArithmeticTask
    from pure_rl.rollout import ResponseScript, rollout_responses

    prm.prefix_causal = planned
    env = ReasoningStepEnv(ArithmeticTask(1), prm, batch_size=len(batch), max_steps=steps, max_tokens=10_000)
    td = env.reset()
    script = ResponseScript(batch, tokenizer, "\n\n", [tokenizer.eos_token_id], 10_000)
    env.plan_responses(range(len(batch)), script.texts, script.steps)
    traj = rollout_responses(env, batch, tokenizer, [tokenizer.eos_token_id], tensordict=td)
    assert int(traj["next", "step_count"][:, -1].min()) == steps, "every response should have K steps"
    return env.reward_seconds


def main(argv: list[str] | None = None) -> list[dict]:
    from transformers import Qwen2Config, Qwen2ForTokenClassification

    from agents.tiny import build_tiny_tokenizer
    from envs.prm import HFTokenClassificationPRM

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--responses", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 32,
        num_key_value_heads=args.hidden // 32,
        num_labels=2,
        max_position_embeddings=4096,
    )
    model = Qwen2ForTokenClassification(config).eval()
    prm = HFTokenClassificationPRM(model, tokenizer, layout="pure_text", batch_size=args.responses, max_length=4096)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"PRM: Qwen2 token classification {args.hidden}x{args.layers} ({params:.1f}M parameters), fp32, "
        f"{args.threads} threads; {args.responses} responses per batch; median of {args.repeats}"
    )
    print(
        "| steps per response | tokens per response | before: s per response | after: s per response | before / after |"
    )
    print("| --- | --- | --- | --- | --- |")
    rows = []
    k = 1
    while k <= args.max_steps:
        batch = responses(tokenizer, args.responses, k, seed=k)
        reward_seconds(prm, tokenizer, batch, k, planned=True)  # warm-up
        before = statistics.median(reward_seconds(prm, tokenizer, batch, k, False) for _ in range(args.repeats))
        after = statistics.median(reward_seconds(prm, tokenizer, batch, k, True) for _ in range(args.repeats))
        tokens = sum(map(len, batch)) / len(batch)
        row = {"steps": k, "tokens": tokens, "before_s": before / len(batch), "after_s": after / len(batch)}
        rows.append(row)
        print(
            f"| {k} | {tokens:.0f} | {row['before_s']:.4f} | {row['after_s']:.4f} | {before / after:.1f}x |", flush=True
        )
        k *= 2
    return rows


if __name__ == "__main__":
    main()
