"""Where the update's seconds go on one device: each phase of pure-rl's update on a synthetic batch, beside the
plain whole-sequence forward and backward a TRL-style trainer runs on the same tokens.

Setting: a model folder (``--model``; ``benchmarks/gpu_check.py`` passes its random-weight Qwen2.5-Math-1.5B
shape), ``--prompts`` x ``--samples`` rows of ``--prompt-tokens`` prompt and ``--response-tokens`` response
tokens (random ids, one prompt per group, every row full length), ``--precision`` autocast over fp32 master
weights, AdamW. For each pass variant (``train.shared_prompt_pass`` on / off x ``train.logit_chunk_tokens``
1024 / 0) it times, with the device synchronised around each phase, the median of ``--repeats``:

- ``ref``: the no-grad reference pass (``agents.log_probs.batch_log_probs``, micro-batches of ``--micro``);
- ``loss``: the loss's forward and backward over the micro-batches (``pure_rl.update.accumulate_gradients``);
- ``step``: gradient clipping and the AdamW step.

The peer row (``plain``) is a whole-sequence ``model(input_ids).logits`` -> log-softmax -> gather, no-grad for
the reference and with backward for the loss, in micro-batches of ``--peer-micro`` (TRL's GRPOTrainer's
default setting in ``benchmarks/vs_trl.py``: 16). ``--profile`` prints the operators taking most device time in
the default variant's loss pass.

Run: ``python benchmarks/update_phases.py --model DIR [--device cuda:0] [--precision bf16-mixed] [--profile]``
(the GPU check runs it as its ``update`` row).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ((True, 1024), (False, 1024), (False, 0), (True, 0))  # (shared_prompt_pass, logit_chunk_tokens)


def synthetic_tokens(prompts: int, samples: int, prompt_tokens: int, response_tokens: int, vocab: int):
    """A token batch ``[prompts * samples, prompt_tokens + response_tokens]`` as ``build_token_batch`` makes it:
    each group of ``samples`` rows shares its prompt; random advantages on the response tokens."""
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(vocab, (prompts, prompt_tokens), generator=g).repeat_interleave(samples, 0)
    response = torch.randint(vocab, (prompts * samples, response_tokens), generator=g)
    ids = torch.cat([prompt, response], dim=1)
    b, t = ids.shape
    response_mask = torch.zeros(b, t, dtype=torch.bool)
    response_mask[:, prompt_tokens:] = True
    return TensorDict(
        {
            "input_ids": ids,
            "attention_mask": torch.ones(b, t, dtype=torch.long),
            "response_mask": response_mask,
            "prompt_length": torch.full((b,), prompt_tokens),
            "advantage": torch.randn(b, t, generator=g) * response_mask,
        },
        batch_size=[b],
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a causal-LM folder")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--precision", default="bf16-mixed", choices=("fp32", "bf16-mixed"))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=148)
    p.add_argument("--response-tokens", type=int, default=256)
    p.add_argument("--micro", type=int, default=8, help="pure-rl's train.micro_batch_size")
    p.add_argument("--peer-micro", type=int, default=16, help="the plain pass's micro-batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="the top device operators of the default loss pass")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from transformers import AutoModelForCausalLM

    from agents.log_probs import batch_log_probs
    from agents.policy import make_reference_model
    from pure_rl.build import log_probs_with_entropy
    from pure_rl.objectives.loss import StepTokenPPOLoss
    from pure_rl.update import accumulate_gradients

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    mixed = args.precision == "bf16-mixed"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    reference = make_reference_model(args.model, dtype=torch.bfloat16 if mixed else torch.float32, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    tokens = synthetic_tokens(
        args.prompts, args.samples, args.prompt_tokens, args.response_tokens, model.config.vocab_size
    )

    def precision():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed)

    def timed(fn) -> float:
        times = []
        for _ in range(args.repeats + 1):  # the first warms kernels and allocator caches up
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])

    def step() -> None:
        # The gradients stay for the next repeat: AdamW skips a parameter without one.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    results: dict[str, dict] = {}
    model.train()
    for shared, chunk in VARIANTS:
        loss_module = StepTokenPPOLoss(
            model,
            kl_coef=0.0,
            log_prob_fn=lambda m, td, ent, s=shared, c=chunk: log_probs_with_entropy(
                m, td, ent, shared_prompt_pass=s, chunk_tokens=c
            ),
        )

        def ref_pass(s=shared, c=chunk) -> None:
            with precision():
                batch_log_probs(reference, tokens, micro_batch_size=args.micro, shared_prompt_pass=s, chunk_tokens=c)

        name = f"shared_prompt_pass={str(shared).lower()}, logit_chunk_tokens={chunk}"
        results[name] = {
            "ref": timed(ref_pass),
            "loss": timed(lambda lm=loss_module: accumulate_gradients(lm, tokens, args.micro, precision=precision)),
        }
        results[name]["step"] = timed(step)
        optimizer.zero_grad(set_to_none=True)

    def plain_log_probs(net, rows):
        ids = tokens["input_ids"][rows].to(device)
        logits = net(input_ids=ids, attention_mask=tokens["attention_mask"][rows].to(device)).logits[:, :-1]
        return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)

    micro = [slice(i, i + args.peer_micro) for i in range(0, tokens.shape[0], args.peer_micro)]

    def plain_ref() -> None:
        with torch.no_grad(), precision():
            for rows in micro:
                plain_log_probs(reference, rows)

    def plain_loss() -> None:
        for rows in micro:
            with precision():
                lp = plain_log_probs(model, rows)
            mask = tokens["response_mask"][rows, 1:].to(device)
            adv = tokens["advantage"][rows, 1:].to(device)
            (-(torch.exp(lp - lp.detach()) * adv * mask).sum() / mask.sum() / len(micro)).backward()

    results[f"plain whole-sequence pass (micro-batch {args.peer_micro})"] = {
        "ref": timed(plain_ref),
        "loss": timed(plain_loss),
        "step": timed(step),
    }
    optimizer.zero_grad(set_to_none=True)

    gpu = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(
        f"update phases on {gpu}, {args.precision}: {tokens.shape[0]} rows ({args.prompts} prompts x {args.samples}) "
        f"of {args.prompt_tokens} + {args.response_tokens} tokens, micro-batches of {args.micro}; medians of "
        f"{args.repeats}, seconds"
    )
    print("| pass | ref | loss forward + backward | clip + AdamW | total |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        r["total"] = r["ref"] + r["loss"] + r["step"]
        print(f"| {name} | {r['ref']:.3f} | {r['loss']:.3f} | {r['step']:.3f} | {r['total']:.3f} |")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        loss_module = StepTokenPPOLoss(
            model,
            kl_coef=0.0,
            log_prob_fn=lambda m, td, ent: log_probs_with_entropy(
                m, td, ent, shared_prompt_pass=True, chunk_tokens=1024
            ),
        )
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            accumulate_gradients(loss_module, tokens, args.micro, precision=precision)
            if cuda:
                torch.cuda.synchronize(device)
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
