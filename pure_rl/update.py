"""The PPO update as module functions, shared by ``pure_rl.train`` and ``benchmarks/update.py``.

From a step batch ``[B, K]`` to an optimiser step, in the order the training loop runs them:

1. :func:`policy_token_batch`: the batch's token tensors ``[B, T]`` (prompt ids by the policy's own encoding);
2. :func:`add_credit`: the no-grad old-policy and reference passes, the k1 KL in the step rewards, the value
   estimator (credit assignment), and each token's step advantage;
3. :func:`ppo_update`: token-level PPO-clip over micro-batches with gradient accumulation (plus the critic's
   value term when the estimator has one), gradient clipping and one optimiser step per epoch.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase

from agents.log_probs import batch_log_probs
from envs.steps import ends_step
from pure_rl.token_batch import build_token_batch, step_sums, token_advantages

__all__ = [
    "STAT_KEYS",
    "accumulate_gradients",
    "add_credit",
    "policy_token_batch",
    "ppo_update",
    "trainable_parameters",
]

# What ppo_update reports (and "loss_critic" when the estimator has a critic).
STAT_KEYS = ("loss", "loss_objective", "entropy", "clip_fraction", "kl", "grad_norm")


def policy_token_batch(traj: TensorDictBase, policy, cfg) -> TensorDict:
    """Token tensors ``[B, T]`` of a step batch as the policy wrote it: its prompt encoding, its EOS ids, the
    env's step rule, and ``algo.mask_separator_tokens`` (see :func:`pure_rl.token_batch.build_token_batch`)."""
    tokenizer = policy.tokenizer
    return build_token_batch(
        traj,
        policy.prompt_ids,
        eos_token_ids=policy.eos_token_ids,
        separator_check=lambda ids: ends_step(ids, tokenizer, cfg.env.step_separator),
        mask_separator_tokens=cfg.algo.mask_separator_tokens,
        pad_id=tokenizer.pad_token_id or 0,
    )


def add_credit(
    traj: TensorDictBase,
    tokens: TensorDict,
    model: torch.nn.Module,
    reference: torch.nn.Module | None,
    estimator,
    cfg,
    tokenizer=None,
) -> None:
    """Old-policy and reference log-probs (when the KL or several epochs need them), the k1 KL penalty as the
    steps' ``extra_reward``, then ``estimator(traj)`` (``advantage``, ``value_target`` ``[B, K, 1]``) and the
    tokens' ``advantage`` ``[B, T]``. Writes into ``traj`` and ``tokens``."""
    passes = dict(
        micro_batch_size=cfg.train.micro_batch_size,
        shared_prompt_pass=cfg.train.shared_prompt_pass,
        tokenizer=tokenizer,
    )
    if cfg.train.ppo_epochs > 1 or reference is not None:
        old = batch_log_probs(model, tokens, **passes)
        if cfg.train.ppo_epochs > 1:
            tokens["old_log_prob"] = old
    if reference is not None:
        ref = batch_log_probs(reference, tokens, **passes)
        tokens["ref_log_prob"] = ref
        if cfg.algo.kl_estimator == "k1":
            kl_steps = step_sums((old - ref) * tokens["response_mask"], tokens, traj.shape[1])
            traj["extra_reward"] = -cfg.algo.kl_coef * kl_steps
    estimator(traj)
    tokens["advantage"] = token_advantages(traj["advantage"].reshape(traj.shape), tokens)


def accumulate_gradients(
    loss_module, tokens: TensorDict, micro_batch_size: int, stats: dict | None = None, epochs: int = 1
) -> dict:
    """Forward and backward of the token PPO loss micro-batch by micro-batch, each weighted by its share of the
    batch; adds the weighted loss statistics (over ``epochs``) into ``stats`` and returns it. No optimiser step."""
    n = tokens.shape[0]
    stats = stats if stats is not None else dict.fromkeys(STAT_KEYS, 0.0)
    for start in range(0, n, micro_batch_size):
        mb = slice(start, min(n, start + micro_batch_size))
        out = loss_module(tokens[mb])
        weight = (mb.stop - mb.start) / n
        total = out["loss_objective"] + out["loss_entropy"] + out["loss_kl"]
        (total * weight).backward()
        for key in ("loss_objective", "entropy", "clip_fraction", "kl"):
            stats[key] += out[key].item() * weight / epochs
        stats["loss"] += total.item() * weight / epochs
    return stats


def trainable_parameters(loss_module) -> list[torch.nn.Parameter]:
    """The policy's parameters, and the critic's when the estimator has one."""
    params = list(loss_module.model.parameters())
    if loss_module.critic is not None:
        params += list(loss_module.critic.parameters())
    return params


def ppo_update(loss_module, optimizer: torch.optim.Optimizer, tokens: TensorDict, traj: TensorDictBase, cfg) -> dict:
    """``train.ppo_epochs`` optimiser steps on one batch; returns the statistics averaged over epochs
    (``STAT_KEYS``). A non-finite gradient norm skips that step (and says so)."""
    epochs = cfg.train.ppo_epochs
    stats = dict.fromkeys(STAT_KEYS, 0.0)
    if loss_module.critic is not None:
        stats["loss_critic"] = 0.0
    params = trainable_parameters(loss_module)
    loss_module.model.train()
    for _ in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients(loss_module, tokens, cfg.train.micro_batch_size, stats, epochs)
        if loss_module.critic is not None:
            critic_loss = loss_module.loss_critic(traj)
            critic_loss.backward()
            stats["loss_critic"] += critic_loss.item() / epochs
            stats["loss"] += critic_loss.item() / epochs
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        if not torch.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            print("non-finite gradient norm: update skipped")
        else:
            optimizer.step()
        stats["grad_norm"] += grad_norm.item() / epochs
    loss_module.model.eval()
    return stats
