"""The PPO update as module functions, shared by ``pure_rl.train`` and ``benchmarks/update.py``.

From a step batch ``[B, K]`` to an optimiser step, in the order the training loop runs them:

1. :func:`policy_token_batch`: the batch's token tensors ``[B, T]`` (prompt ids by the policy's own encoding);
2. :func:`add_credit`: the no-grad old-policy and reference passes, the k1 KL in the step rewards, the value
   estimator (credit assignment), and each token's step advantage;
3. :func:`ppo_update`: token-level PPO-clip over micro-batches with gradient accumulation (plus the critic's
   value term when the estimator has one), gradient clipping and one optimiser step per mini-batch and epoch.

With ``train.precision`` ``bf16-mixed`` / ``fp16-mixed`` the forward passes run under ``torch.autocast`` while the
parameters the optimiser updates stay float32 (master weights): a bf16 weight would round a 5e-7 step away.
"""

from __future__ import annotations

import contextlib
import math

import torch
from tensordict import TensorDict, TensorDictBase

from agents.log_probs import batch_log_probs
from envs.steps import ends_step
from pure_rl import registry
from pure_rl.config import shared_prompt_pass
from pure_rl.objectives.credit import place_at_last_step, whiten_nonzero
from pure_rl.objectives.loss import loss_mask, truncated_importance_weights
from pure_rl.token_batch import build_token_batch, step_sums, token_advantages, truncated_rows, valid_step_mask

__all__ = [
    "STAT_KEYS",
    "accumulate_gradients",
    "add_credit",
    "autocast",
    "compute_dtype",
    "grad_scaler",
    "lr_scheduler",
    "make_estimator",
    "optimizer_steps_per_batch",
    "overlong_penalty",
    "policy_token_batch",
    "ppo_update",
    "restore_lr_scheduler",
    "trainable_parameters",
]

# What ppo_update reports (and "loss_critic" when the estimator has a critic).
STAT_KEYS = ("loss", "loss_objective", "entropy", "clip_fraction", "kl", "grad_norm", "lr")

_MIXED = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


def compute_dtype(cfg) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` (None: full precision)."""
    return _MIXED.get(cfg.train.precision)


def autocast(cfg):
    """A context for forward passes in ``train.precision`` (a no-op for fp32)."""
    dtype = compute_dtype(cfg)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(cfg.policy.device).type, dtype=dtype)


def grad_scaler(cfg) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    if cfg.train.precision != "fp16-mixed":
        return None
    return torch.amp.GradScaler(torch.device(cfg.policy.device).type)


def optimizer_steps_per_batch(cfg, batch_size: int) -> int:
    """Optimiser steps one rollout batch of ``batch_size`` sequences gets: epochs x mini-batches."""
    size = cfg.train.mini_batch_size or batch_size
    return cfg.train.ppo_epochs * math.ceil(batch_size / size)


def lr_scheduler(optimizer: torch.optim.Optimizer, cfg, batch_size: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``train.lr_warmup_steps`` of linear warm-up from 0, then ``train.lr_schedule`` (constant, or cosine to 0 at
    the run's last optimiser step); stepped once per optimiser step."""
    total = cfg.train.iterations * optimizer_steps_per_batch(cfg, batch_size)
    warmup, cosine = cfg.train.lr_warmup_steps, cfg.train.lr_schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def restore_lr_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict) -> None:
    """Load a saved schedule position and set the rate it gives now (a resume that adds iterations stretches a
    cosine schedule: the optimiser's saved rate belongs to the old length)."""
    scheduler.load_state_dict(state)
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)


def make_estimator(loss_module, cfg):
    """The value estimator ``algo.estimator`` names, built on ``loss_module`` with the config's credit keys (and
    the estimator's own, e.g. min-form's ``temperature``); it reads the PRM score as the process reward."""
    uses_vr = cfg.env.reward_mode in ("prm+vr", "vr")
    loss_module.make_value_estimator(
        cfg.algo.estimator,
        gamma=cfg.algo.gamma,
        baseline=cfg.algo.baseline,
        # Reference-style whitening runs on the token advantages instead (add_credit).
        whiten=cfg.algo.whiten and cfg.algo.whiten_mode == "steps",
        charge_boundary_tokens=cfg.algo.charge_boundary_tokens,
        vr_coef=cfg.env.vr_coef if uses_vr else 0.0,
        **registry.entry("estimator", cfg.algo.estimator).option_values(cfg),
    )
    estimator = loss_module.value_estimator
    # Credit assignment reads the PRM score; the verifier term is added by the estimator (docs/spec.md section 4).
    estimator.set_keys(reward="prm_reward")
    if cfg.env.vr_share < 1:  # the verifier term goes to the groups the env drew into the share only
        estimator.set_keys(has_reference="receives_vr")
    return estimator


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
        eos_on_truncation=cfg.algo.eos_on_truncation,
    )


def sampled_log_probs(tokens: TensorDict) -> torch.Tensor | None:
    """The response tokens' log-probs as the rollout sampled them (``sample_log_prob`` ``[B, T]``, 0 elsewhere),
    or None when the batch lacks them for any response token (a backend without them, the EOS that
    ``eos_on_truncation`` puts in): then the trainer's own pass computes them all."""
    sampled = tokens.get("sample_log_prob", None)
    if sampled is None or torch.isnan(sampled[tokens["response_mask"]]).any():
        return None
    return sampled * tokens["response_mask"]


def add_credit(
    traj: TensorDictBase,
    tokens: TensorDict,
    model: torch.nn.Module,
    reference: torch.nn.Module | None,
    estimator,
    cfg,
    tokenizer=None,
    parallel=None,
) -> None:
    """Old-policy and reference log-probs (when the KL or several epochs need them; with one optimiser step and
    ``train.old_log_probs=generation`` the old ones are the rollout's), the k1 KL penalty, then
    ``estimator(traj)`` (``advantage``, ``value_target`` ``[B, K, 1]``) and the tokens' ``advantage`` ``[B, T]``.
    Writes into ``traj`` and ``tokens``.

    With ``algo.kl_to_go=step`` the KL is each step's ``extra_reward`` (the estimator puts it in the return);
    with ``token`` each advantage-carrying token gets ``-kl_coef`` times the KL of the tokens from it to the end
    (the step value targets then leave the KL out). ``algo.whiten_mode=reference`` whitens the token advantages
    here (:func:`pure_rl.objectives.credit.whiten_nonzero`) instead of the steps' in the estimator.

    ``algo.overlong``: ``penalty`` adds :func:`overlong_penalty` to the last step's ``extra_reward`` (outside the
    credit form, as the KL); ``mask`` writes ``loss_mask`` without the responses the budget cut off.

    ``parallel`` (:class:`pure_rl.parallel.Parallel`): ``traj`` and ``tokens`` are the global batch on every rank;
    each rank runs the log-prob passes on its own rows and they are gathered, so the credit is computed from the
    whole batch as on one process."""
    row_pass = parallel.row_pass if parallel is not None else lambda fn, batch: fn(batch)
    passes = dict(
        micro_batch_size=cfg.train.micro_batch_size,
        shared_prompt_pass=shared_prompt_pass(cfg),
        tokenizer=tokenizer,
        chunk_tokens=cfg.train.logit_chunk_tokens,
    )
    # After the first optimiser step the policy is no longer the one that sampled: the ratio needs the old one.
    several_steps = optimizer_steps_per_batch(cfg, tokens.shape[0]) > 1
    # The engine-mismatch correction compares the trainer's own old log-probs with the engine's sampled ones.
    correct = cfg.algo.engine_is_correction == "tis" and tokens.get("sample_log_prob", None) is not None
    old = None
    if reference is not None and not several_steps and cfg.train.old_log_probs == "generation" and not correct:
        old = sampled_log_probs(tokens)
    if several_steps or (reference is not None and old is None) or correct:
        with autocast(cfg):
            old = row_pass(lambda rows: batch_log_probs(model, rows, **passes), tokens)
        if several_steps:
            tokens["old_log_prob"] = old
    if correct:
        tokens["is_weight"] = truncated_importance_weights(
            old, tokens["sample_log_prob"], tokens["response_mask"], cfg.algo.engine_is_cap
        )
    if reference is not None:
        with autocast(cfg):
            ref = row_pass(lambda rows: batch_log_probs(reference, rows, **passes), tokens)
        tokens["ref_log_prob"] = ref
    kl_tokens = None
    if reference is not None and cfg.algo.kl_estimator == "k1":
        kl_tokens = (old - ref) * tokens["response_mask"]
        if cfg.algo.kl_to_go == "step":
            traj["extra_reward"] = -cfg.algo.kl_coef * step_sums(kl_tokens, tokens, traj.shape[1])
    if cfg.algo.overlong == "penalty":
        penalty = overlong_penalty(
            tokens["response_mask"].sum(-1), cfg.env.max_tokens, cfg.algo.overlong_buffer, cfg.algo.overlong_penalty
        )
        extra = traj.get("extra_reward", None)
        at_end = place_at_last_step(penalty, valid_step_mask(traj))
        traj["extra_reward"] = at_end if extra is None else extra + at_end
    elif cfg.algo.overlong == "mask":
        tokens["loss_mask"] = tokens["response_mask"] & ~truncated_rows(traj)[:, None]
    estimator(traj)
    advantage = token_advantages(traj["advantage"].reshape(traj.shape), tokens)
    if kl_tokens is not None and cfg.algo.kl_to_go == "token":
        kl_to_go = kl_tokens.flip(-1).cumsum(-1).flip(-1)
        advantage = advantage - cfg.algo.kl_coef * kl_to_go * tokens["advantage_mask"]
    if cfg.algo.whiten and cfg.algo.whiten_mode == "reference":
        advantage = whiten_nonzero(advantage, tokens["response_mask"])
    tokens["advantage"] = advantage


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO's soft overlong punishment of responses of ``lengths [B]`` tokens: 0 up to ``max_tokens - buffer``,
    then falling linearly to ``-penalty`` at ``max_tokens`` (``[B]``, float)."""
    over = (lengths.to(torch.get_default_dtype()) - (max_tokens - buffer)) / buffer
    return -penalty * over.clamp(0.0, 1.0)


def accumulate_gradients(
    loss_module,
    tokens: TensorDict,
    micro_batch_size: int,
    stats: dict | None = None,
    steps: int = 1,
    *,
    precision=contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    batch_mask: torch.Tensor | None = None,
    loss_scale: float = 1.0,
) -> dict:
    """Forward (under ``precision()``) and backward of the token PPO loss micro-batch by micro-batch, each weighted
    by its share of the batch whose loss mask is ``batch_mask`` (default ``tokens``' own; on several processes the
    global mini-batch's, ``tokens`` being this rank's rows of it, and the backward scaled by ``loss_scale``); adds
    the weighted loss statistics (averaged over ``steps`` optimiser steps) into ``stats`` and returns it. No
    optimiser step."""
    n = tokens.shape[0]
    stats = stats if stats is not None else dict.fromkeys(STAT_KEYS, 0.0)
    batch_mask = loss_mask(tokens) if batch_mask is None else batch_mask
    for start in range(0, n, micro_batch_size):
        mb = slice(start, min(n, start + micro_batch_size))
        with precision():
            out = loss_module(tokens[mb])
        # The micro-batch's share of the batch's loss, as the loss aggregation counts (rows, or tokens).
        weight = loss_module.aggregation.share(batch_mask[mb], batch_mask)
        total = out["loss_objective"] + out["loss_entropy"] + out["loss_kl"]
        scaled = total * (weight * loss_scale)
        (scaled if scaler is None else scaler.scale(scaled)).backward()
        for key in ("loss_objective", "entropy", "clip_fraction", "kl"):
            stats[key] += out[key].item() * weight / steps
        stats["loss"] += total.item() * weight / steps
    return stats


def trainable_parameters(loss_module) -> list[torch.nn.Parameter]:
    """The policy's trainable parameters (all, or a LoRA model's adapters), and the critic's if the estimator has
    one."""
    params = [p for p in loss_module.model.parameters() if p.requires_grad]
    if loss_module.critic is not None:
        params += list(loss_module.critic.parameters())
    return params


def ppo_update(
    loss_module,
    optimizer: torch.optim.Optimizer,
    tokens: TensorDict,
    traj: TensorDictBase,
    cfg,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    parallel=None,
) -> dict:
    """``train.ppo_epochs`` passes over one batch, one optimiser step per mini-batch of ``train.mini_batch_size``
    sequences (the whole batch when 0); returns the statistics averaged over the steps (``STAT_KEYS``, ``lr``
    being the rate of the first step). A non-finite gradient norm skips that step (and says so).

    ``parallel``: ``tokens`` is the global batch; each rank runs the loss on its rows of every mini-batch, weighted
    by their share of the whole mini-batch, and the statistics are summed over ranks."""
    n = tokens.shape[0]
    size = cfg.train.mini_batch_size or n
    mini_batches = [slice(i, min(n, i + size)) for i in range(0, n, size)]
    steps = cfg.train.ppo_epochs * len(mini_batches)
    stats = dict.fromkeys(STAT_KEYS, 0.0)
    stats["lr"] = optimizer.param_groups[0]["lr"]
    if loss_module.critic is not None:
        stats["loss_critic"] = 0.0
    params = trainable_parameters(loss_module)
    precision = lambda: autocast(cfg)  # noqa: E731
    loss_module.model.train()
    for _ in range(cfg.train.ppo_epochs):
        for mb in mini_batches:
            optimizer.zero_grad(set_to_none=True)
            batch = tokens if len(mini_batches) == 1 else tokens[mb]
            accumulate_gradients(
                loss_module,
                parallel.local_rows(batch) if parallel is not None else batch,
                cfg.train.micro_batch_size,
                stats,
                steps,
                precision=precision,
                scaler=scaler,
                batch_mask=loss_mask(batch),
                loss_scale=parallel.loss_scale if parallel is not None else 1.0,
            )
            if loss_module.critic is not None:
                critic_loss = loss_module.loss_critic(traj if len(mini_batches) == 1 else traj[mb])
                (critic_loss if scaler is None else scaler.scale(critic_loss)).backward()
                stats["loss_critic"] += critic_loss.item() / steps
                stats["loss"] += critic_loss.item() / steps
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
            if hasattr(grad_norm, "full_tensor"):  # sharded parameters: a DTensor, the same norm on every rank
                grad_norm = grad_norm.full_tensor()
            if scaler is not None:
                scaler.step(optimizer)  # skips the step itself when the scaled gradients overflowed
                scaler.update()
            elif not torch.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                print("non-finite gradient norm: update skipped")
            else:
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            stats["grad_norm"] += grad_norm.item() / steps
    loss_module.model.eval()
    if parallel is not None:
        # Each rank's part of the per-token statistics; the gradient norm and lr are the same on every rank.
        stats = parallel.sum(stats, [k for k in STAT_KEYS if k not in ("grad_norm", "lr")])
    return stats
