"""Check the memory plan (``pure_rl.memory_plan``) against the tensors a training step really holds, on CPU.

For each config: the policy's weights, gradients and AdamW state after one optimiser step, the frozen reference,
and the activations autograd saves during the loss's forward pass on one micro-batch of the plan's token count
(storages counted once, parameters excluded), measured with and without gradient checkpointing; printed beside
the plan's figures and their ratio. The generation engine's memory is not measured here.

Run: ``python benchmarks/memory_plan.py [--configs configs/tiny.yaml configs/default.yaml]``.
"""

from __future__ import annotations

import argparse
import functools

import torch


def measured_bytes(cfg) -> dict[str, int]:
    from agents import make_reference_model
    from agents.policy import load_model_and_tokenizer
    from pure_rl.build import log_probs_with_entropy
    from pure_rl.config import shared_prompt_pass
    from pure_rl.objectives.loss import StepTokenPPOLoss
    from pure_rl.update import compute_dtype

    model, _, _ = load_model_and_tokenizer(cfg.policy.model, cfg.policy.dtype, "cpu")
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    prompt = len(cfg.env.prompt_template) // 4 + 64
    rows, t = cfg.train.micro_batch_size, prompt + cfg.env.max_tokens
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (rows, t), generator=g)
    response = torch.zeros(rows, t, dtype=torch.bool)
    response[:, prompt:] = True
    from tensordict import TensorDict

    tokens = TensorDict(
        {"input_ids": ids, "attention_mask": torch.ones(rows, t, dtype=torch.long), "response_mask": response,
         "advantage": torch.randn(rows, t, generator=g) * response, "prompt_length": torch.full((rows,), prompt)},
        batch_size=[rows],
    )  # fmt: skip
    fn = functools.partial(
        log_probs_with_entropy,
        shared_prompt_pass=shared_prompt_pass(cfg),
        chunk_tokens=cfg.train.logit_chunk_tokens,
    )
    loss = StepTokenPPOLoss(model, kl_coef=0.0, log_prob_fn=fn)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(x):
        storage = x.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return x

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = loss(tokens)
    out["loss_objective"].backward()
    optimizer.step()
    state = sum(v.nbytes for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim)
    reference = make_reference_model(model, dtype=compute_dtype(cfg)) if cfg.algo.kl_coef > 0 else None
    return {
        "weights": sum(p.nbytes for p in model.parameters()),
        "gradients": sum(p.grad.nbytes for p in model.parameters()),
        "AdamW state": state,
        "reference": sum(p.nbytes for p in reference.parameters()) if reference is not None else 0,
        "activations": sum(saved.values()),
    }


def planned_bytes(cfg) -> dict[str, int]:
    from pure_rl.memory_plan import memory_plan

    parts = dict(next(iter(memory_plan(cfg).devices.values())))
    pick = lambda prefix: sum(b for name, b in parts.items() if name.startswith(prefix))  # noqa: E731
    return {
        "weights": pick("policy weights"),
        "gradients": pick("gradients"),
        "AdamW state": pick("AdamW"),
        "reference": pick("KL reference"),
        "activations": pick("activations"),
    }


def main() -> None:
    from pure_rl.config import load_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["configs/tiny.yaml", "configs/default.yaml"])
    args = p.parse_args()
    torch.manual_seed(0)
    for path in args.configs:
        for extra in ([], ["train.gradient_checkpointing=true", "train.shared_prompt_pass=false"]):
            cfg = load_config(path, ["warmup.steps=0", *extra])
            planned, measured = planned_bytes(cfg), measured_bytes(cfg)
            label = f"{path} ({cfg.policy.model}, micro-batch {cfg.train.micro_batch_size}" + (
                ", checkpointing)" if extra else ")"
            )
            print(label)
            for key in planned:
                ratio = planned[key] / measured[key] if measured[key] else float("nan")
                print(f"  {key:<14} plan {planned[key] / 2**20:10.1f} MiB   measured {measured[key] / 2**20:10.1f} MiB"
                      f"   plan/measured {ratio:5.2f}")  # fmt: skip
            total_p, total_m = sum(planned.values()), sum(measured.values())
            print(f"  {'total':<14} plan {total_p / 2**20:10.1f} MiB   measured {total_m / 2**20:10.1f} MiB"
                  f"   plan/measured {total_p / total_m:5.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
