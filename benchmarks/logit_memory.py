"""Peak memory of the loss's log-prob pass against vocabulary size, with the LM head whole or in chunks.

For each vocabulary size, a small Qwen2 decoder (hidden 64, 2 layers: the vocabulary-sized tensors dominate, as
they do at 7B with long responses) runs :func:`agents.log_probs.token_log_probs` with entropy, forward and
backward, on a micro-batch of ``--rows`` x ``--tokens`` tokens, once with ``chunk_tokens=0`` (transformers'
whole ``[B, T, V]`` logits, log-softmax and entropy in fp32) and once with ``train.logit_chunk_tokens``' default
(1024 positions at a time, each recomputed in the backward). Each measurement runs in its own process; the figure
is the process's peak resident memory above what it held just before the pass (sampled every millisecond), next
to the size of one fp32 ``[B, T, V]`` tensor.

Run: ``python benchmarks/logit_memory.py [--rows 4] [--tokens 1024] [--vocab 32768,65536,151936]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peak_memory import peak_during  # noqa: E402


def measure(vocab: int, rows: int, tokens: int, chunk: int) -> dict:
    """One pass in this process: peak extra resident bytes and seconds."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agents.log_probs import token_log_probs

    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=vocab, max_position_embeddings=tokens + 1)  # fmt: skip
    model = Qwen2ForCausalLM(config)
    ids = torch.randint(0, vocab, (rows, tokens))
    mask = torch.ones_like(ids)

    def step():
        log_probs, entropy = token_log_probs(model, ids, mask, with_entropy=True, chunk_tokens=chunk)
        (log_probs.sum() + entropy.sum()).backward()

    seconds, peak = peak_during(step)
    return {"peak_bytes": peak, "seconds": seconds}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--vocab", default="32768,65536,151936")
    p.add_argument("--chunk", type=int, default=1024, help="the chunked run's positions per chunk")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "vocab,chunk": one measurement, as JSON
    args = p.parse_args(argv)
    if args.one:
        vocab, chunk = map(int, args.one.split(","))
        print(json.dumps(measure(vocab, args.rows, args.tokens, chunk)))
        return []
    results = []
    print(f"micro-batch {args.rows} x {args.tokens} tokens, hidden 64, 2 layers; log-probs and entropy, forward and "
          "backward; peak resident memory above the start of the pass")  # fmt: skip
    chunked = f"chunks of {args.chunk}: peak MiB (s)"
    print(f"| vocabulary | one fp32 [B, T, V] MiB | whole: peak MiB (s) | {chunked} | chunked / whole |")
    print("| --- | --- | --- | --- | --- |")
    for vocab in map(int, args.vocab.split(",")):
        row = {"vocab": vocab}
        for name, chunk in (("whole", 0), ("chunked", args.chunk)):
            cmd = [sys.executable, __file__, "--one", f"{vocab},{chunk}", "--rows", str(args.rows),
                   "--tokens", str(args.tokens)]  # fmt: skip
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            row[name] = json.loads(done.stdout.strip().splitlines()[-1])
        whole, chunked = row["whole"], row["chunked"]
        tensor = args.rows * args.tokens * vocab * 4 / 2**20
        print(
            f"| {vocab} | {tensor:.0f} | {whole['peak_bytes'] / 2**20:.0f} ({whole['seconds']:.1f}) | "
            f"{chunked['peak_bytes'] / 2**20:.0f} ({chunked['seconds']:.1f}) | "
            f"{chunked['peak_bytes'] / whole['peak_bytes']:.2f} |",
            flush=True,
        )
        results.append(row)
    return results


if __name__ == "__main__":
    main()
