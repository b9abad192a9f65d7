"""Run under ``torchrun --nproc_per_node 2`` by ``tests/test_parallel.py``: one vLLM engine per rank (in the job's
process group) fed from an FSDP2-sharded policy, as a training run on several processes does.

Writes ``OUT`` (rank 0) with, per case, the engine's greedy tokens before the change, after the weight sync, and
the tokens of an unsharded transformers model holding the same weights (gathered by DCP's full state dict, not by
the sync under test); and the per-request seeded samples each rank drew. The test asserts on them.

Usage: torchrun ... tests/parallel_vllm_worker.py MODEL_DIR OUT
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict


def perturb(model: torch.nn.Module, names: str, seed: int) -> None:
    """Add noise to this rank's shard of every parameter whose name contains ``names`` (ranks differ: the
    gathered result is what counts)."""
    gen = torch.Generator().manual_seed(seed + dist.get_rank())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if names in name:
                local = p.to_local()
                local.add_(torch.randn(local.shape, generator=gen) * 0.3)


def full_copy(model: torch.nn.Module, fresh: torch.nn.Module) -> torch.nn.Module:
    """``fresh`` (unsharded) loaded with ``model``'s gathered weights."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    fresh.load_state_dict(state)
    return fresh


def main(model_dir: str, out: str) -> None:
    from agents import make_policy
    from agents.generation import TransformersBackend
    from agents.lora import apply_lora
    from agents.policy import load_model_and_tokenizer
    from pure_rl.config import load_config
    from pure_rl.parallel import setup_parallel

    cfg = load_config(
        "configs/tiny.yaml",
        [
            f"policy.model={model_dir}",
            "policy.backend=vllm",
            "policy.temperature=0",
            "policy.max_model_len=256",
            "policy.vllm_kv_cache_gib=1",
            "train.parallel=fsdp",
        ],
    )
    par = setup_parallel(cfg)
    policy = make_policy(cfg)
    par.at_close(policy.backend.shutdown)
    engine, tokenizer = policy.backend, policy.tokenizer
    prompts = [
        policy.prompt_ids(cfg.env.prompt_template.format(question=q))
        for q in ["Leo has 7 cards. He gets 5 more. How many?", "Ann has 9 coins. She loses 2. How many?"]
    ]

    def greedy(backend) -> list[list[int]]:
        return [g.token_ids for g in backend.generate(prompts, [40, 40], stop_at_step=False)]

    result = {}
    # 1. The whole policy sharded and changed, then synced into the engine.
    model = policy.model
    par.shard(model)
    before = greedy(engine)
    perturb(model, "", seed=1)
    policy.sync_weights()
    reference = full_copy(model, load_model_and_tokenizer(model_dir)[0])
    result["full"] = {
        "before": before,
        "synced": greedy(engine),
        "reference": greedy(TransformersBackend(reference, tokenizer, temperature=0)),
    }
    # 2. A LoRA policy: its sharded adapters merged into the base weights as they stream.
    lora = apply_lora(load_model_and_tokenizer(model_dir)[0], 4, 8.0, 0.0, ["q_proj", "v_proj", "up_proj"])
    par.shard(lora.get_base_model())
    engine.sync_weights(lora)
    before = greedy(engine)
    perturb(lora, "lora_B", seed=2)
    engine.sync_weights(lora)
    fresh = apply_lora(load_model_and_tokenizer(model_dir)[0], 4, 8.0, 0.0, ["q_proj", "v_proj", "up_proj"])
    merged = full_copy(lora, fresh).merge_and_unload()
    result["lora"] = {
        "before": before,
        "synced": greedy(engine),
        "reference": greedy(TransformersBackend(merged, tokenizer, temperature=0)),
    }
    # 3. Per-request seeds: rank 0 samples rows a, b, c, d (two groups of two), rank 1 only c, d.
    engine.temperature = 1.0
    rows = [prompts[0], prompts[0], prompts[1], prompts[1]]
    seeds = [11, 11, 22, 22]
    mine = slice(0, 4) if par.rank == 0 else slice(2, 4)
    gens = engine.generate(rows[mine], [30] * len(rows[mine]), stop_at_step=False, seeds=seeds[mine])
    drawn = [g.token_ids for g in gens]
    everyone = [None] * par.world
    dist.all_gather_object(everyone, drawn)
    result["seeded"] = everyone
    if par.is_main:
        with open(out, "w") as f:
            json.dump(result, f)
    par.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
