"""Time the PPO update's three log-prob passes on one rollout batch of the CPU default: whole sequences against
each group's shared prompt computed once (``train.shared_prompt_pass``).

Setting: ``configs/default.yaml`` (SmolLM2-135M-Instruct fp32, its warm-up, 4 prompts x 4 samples, the one-shot
prompt of ~150 tokens with the chat template), one rollout, then for each path: the no-grad old-policy pass, the
no-grad reference pass and the loss's forward + backward, micro-batch by micro-batch as ``pure_rl.train`` runs
them. The log-probs of both paths are checked equal on the response tokens before anything is reported.

Run: ``python benchmarks/update.py [--prompts 4] [--samples 4] [--repeats 2] [dotted.key=value ...]``.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="timings per pass (the best is reported)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parser.parse_args()

    from agents import make_policy, make_reference_model
    from agents.log_probs import batch_log_probs
    from envs import make_env
    from pure_rl.build import log_probs_with_entropy
    from pure_rl.config import load_config
    from pure_rl.objectives.loss import StepTokenPPOLoss
    from pure_rl.rollout import collect
    from pure_rl.update import accumulate_gradients, policy_token_batch
    from pure_rl.warmup import warmed_up_model

    overrides = [
        f"train.prompts_per_iter={args.prompts}",
        f"train.samples_per_prompt={args.samples}",
        "policy.backend=transformers",  # the update is what is measured; no engine needed
    ]
    cfg = load_config("configs/default.yaml", overrides + args.overrides)
    start_model = warmed_up_model(cfg)
    torch.manual_seed(cfg.train.seed)
    env = make_env(cfg)
    policy = make_policy(cfg, model_name=start_model)
    model, tok = policy.model, policy.tokenizer
    reference = make_reference_model(model)
    with torch.no_grad():
        traj = collect(env, policy, cfg.policy.rollout_mode)

    tokens = policy_token_batch(traj, policy, cfg)
    response = tokens["response_mask"]
    tokens["advantage"] = torch.randn(response.shape) * response
    size = cfg.train.micro_batch_size
    print(
        f"update benchmark: {tokens.shape[0]} sequences ({args.prompts} prompts x {args.samples}), "
        f"{int(tokens['prompt_length'].float().mean())} prompt tokens on average, {int(response.sum())} response "
        f"tokens, padded width {tokens['input_ids'].shape[1]}, micro-batches of {size}, "
        f"{torch.get_num_threads()} threads"
    )

    def log_probs(net: torch.nn.Module, shared: bool) -> torch.Tensor:
        return batch_log_probs(net, tokens, micro_batch_size=size, shared_prompt_pass=shared, tokenizer=tok)

    torch.testing.assert_close(log_probs(model, True)[response], log_probs(model, False)[response], atol=1e-4, rtol=0)

    def best_of(fn, *fn_args) -> float:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn(*fn_args)
            times.append(time.perf_counter() - t0)
        return min(times)

    def loss_pass(shared: bool) -> None:
        log_prob_fn = functools.partial(log_probs_with_entropy, shared_prompt_pass=shared)
        loss = StepTokenPPOLoss(model, kl_coef=0.0, log_prob_fn=log_prob_fn)
        model.zero_grad(set_to_none=True)
        accumulate_gradients(loss, tokens, size)

    print(f"{'path':<52}{'old (s)':>9}{'ref (s)':>9}{'loss f+b (s)':>14}{'total (s)':>11}")
    totals = {}
    for shared, name in ((False, "whole sequences (old/ref via TransformersWrapper)"), (True, "shared prompt pass")):
        with torch.no_grad():
            old = best_of(log_probs, model, shared)
            ref = best_of(log_probs, reference, shared)
        model.train()
        fwd_bwd = best_of(loss_pass, shared)
        model.eval()
        totals[shared] = old + ref + fwd_bwd
        print(f"{name:<52}{old:>9.1f}{ref:>9.1f}{fwd_bwd:>14.1f}{totals[shared]:>11.1f}", flush=True)
    print(f"speed-up of the three passes: {totals[False] / totals[True]:.2f}x")


if __name__ == "__main__":
    main()
