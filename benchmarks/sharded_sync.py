"""The weight sync from an FSDP2-sharded policy into each rank's generation engine, against gathering the whole model.

Run under torchrun (gloo on CPU): ``torchrun --standalone --nproc_per_node N benchmarks/sharded_sync.py
[--model smollm2-135m-instruct] [--rounds 3] [--engine transformers|vllm]``. Every rank holds the policy sharded N
ways (``fully_shard`` per decoder layer, then the model, as ``train.parallel=fsdp``) and an engine of its own: a
full generation copy (``transformers``) or a vLLM engine in the job's process group (``vllm``). Two ways to fill
it alternate A B A B:

- ``per tensor``: what training runs: one tensor all-gathered (``full_tensor()``) and copied in at a time
  (:meth:`agents.generation.TransformersBackend.sync_weights`; for vLLM
  :meth:`agents.vllm_backend.VLLMBackend.sync_weights`, streaming into vLLM's in-place ``reload_weights``);
- ``whole model``: ``get_model_state_dict(full_state_dict=True)`` gathers every tensor first, then loads them.

Each sync's wall time and the peak of the extra resident memory it took on rank 0 (sampled every millisecond,
above what it was just before) are printed as medians and as ratios; afterwards the copy's greedy output is
checked against an unsharded model loaded with the same weights, token for token.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peak_memory import peak_during  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--engine", choices=("transformers", "vllm"), default="transformers")
    args = p.parse_args(argv)

    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from agents.generation import TransformersBackend
    from agents.policy import load_model_and_tokenizer
    from pure_rl.config import load_config
    from pure_rl.parallel import setup_parallel

    overrides = [f"policy.model={args.model}", "train.parallel=fsdp", "policy.temperature=0"]
    if args.engine == "vllm":
        overrides += ["policy.backend=vllm", "policy.max_model_len=512", "policy.vllm_kv_cache_gib=1"]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    par = setup_parallel(cfg)
    torch.manual_seed(0)
    model, tokenizer, _ = load_model_and_tokenizer(args.model)
    with torch.no_grad():  # weights the engine does not hold yet: a sync that copies nothing would be caught
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 1e-2)
    reference = [t.clone() for t in model.state_dict().values()]
    if args.engine == "vllm":
        from agents import make_policy

        backend = make_policy(cfg).backend
        par.at_close(backend.shutdown)
        copy = None
    else:
        copy = par.generation_copy(load_model_and_tokenizer(args.model)[0])
        backend = TransformersBackend(copy, tokenizer, temperature=0.0)
    par.shard(model)

    def per_tensor():
        backend.sync_weights(model)

    def whole_model():
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        if copy is None:
            backend.llm.collective_rpc("pure_rl_reload_weights", args=(iter(full.items()),))
            backend.llm.reset_prefix_cache()
        else:
            copy.load_state_dict(full)

    ways = {"per tensor": per_tensor, "whole model": whole_model}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    peaks: dict[str, list[int]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, fn in ways.items():
            dist.barrier()
            s, peak = peak_during(fn)
            seconds[name].append(s)
            peaks[name].append(peak)
    per_tensor()  # the last sync is the one under test
    names = list(load_model_and_tokenizer(args.model)[0].state_dict().keys())
    same = copy is None or all(torch.equal(a, b) for a, b in zip(reference, copy.state_dict().values()))
    prompt = tokenizer.encode("Tom has 3 apples and buys 4 more. How many apples does Tom have?")
    unsharded = load_model_and_tokenizer(args.model)[0]
    unsharded.load_state_dict(dict(zip(names, reference)))
    greedy = TransformersBackend(unsharded, tokenizer, temperature=0.0)
    ours = backend.generate([prompt], [32], stop_at_step=False)[0].token_ids
    theirs = greedy.generate([prompt], [32], stop_at_step=False)[0].token_ids
    result = {
        "model": args.model,
        "engine": args.engine,
        "ranks": par.world,
        "parameters_mib": sum(p.numel() * p.element_size() for p in unsharded.parameters()) / 2**20,  # tied: once
        "largest_tensor_mib": max(t.numel() * t.element_size() for t in reference) / 2**20,
        **{f"{name} s": statistics.median(v) for name, v in seconds.items()},
        **{f"{name} peak MiB": statistics.median(v) / 2**20 for name, v in peaks.items()},
        "copy equals the trained weights": same if copy is not None else "n/a (vLLM: see greedy)",
        "greedy equal token for token": ours == theirs,
    }
    if par.is_main:
        setting = f"{args.model}, {par.world} ranks, {args.rounds} rounds (medians, rank 0)"
        print(f"sharded weight sync into {args.engine}, {setting}:")
        for key, value in result.items():
            print(f"  {key:<34} {value:.3f}" if isinstance(value, float) else f"  {key:<34} {value}")
        t, m = result["per tensor s"] / result["whole model s"], result["per tensor peak MiB"]
        print(f"  per tensor / whole model: time {t:.2f}x, peak {m / max(result['whole model peak MiB'], 1e-9):.2f}x")
    par.close()
    return result


if __name__ == "__main__":
    main()
