"""What a run trains with, built above the training loop (as CleanRL sets up above its loop): the envs, the
policy and its engine, LoRA, the KL reference, FSDP2 sharding, the loss, estimator, optimiser, schedule and
scaler, and, for a resumed run, all of their state from the checkpoint. :func:`build_training` returns them as one
:class:`Training`; :mod:`pure_rl.train` runs the loop over it and saves checkpoints with
:meth:`Training.save_checkpoint`, the inverse of the restore here.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pure_rl.checkpoint import CheckpointError
from pure_rl.config import ConfigError, RunConfig, flat_config, precision_warnings, shared_prompt_pass

__all__ = ["Training", "build_training", "log_probs_with_entropy", "seed_everything"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def log_probs_with_entropy(model, tokens, with_entropy: bool, *, shared_prompt_pass: bool, chunk_tokens: int = 0):
    """The loss's forward pass (``StepTokenPPOLoss.log_prob_fn``): :func:`agents.log_probs.sequence_log_probs`."""
    from agents.log_probs import sequence_log_probs

    return sequence_log_probs(
        model, tokens, shared_prompt_pass=shared_prompt_pass, with_entropy=with_entropy, chunk_tokens=chunk_tokens
    )


@dataclasses.dataclass
class Training:
    """Everything the loop uses, on this rank. ``cfg`` is on this rank's device; ``record_cfg`` is the config as
    given (what checkpoints record). ``start``: iterations already done (a resumed run's)."""

    cfg: RunConfig
    record_cfg: RunConfig
    start_model: str
    env: Any
    eval_env: Any
    sampled_eval_env: Any
    policy: Any
    model: torch.nn.Module
    tokenizer: Any
    lora: bool
    reference: torch.nn.Module | None
    loss_module: torch.nn.Module
    estimator: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    sampler: torch.Generator | None
    start: int = 0

    def save_checkpoint(self, run_dir: Path, par, iteration: int, train_env_state: dict) -> None:
        """The run's state after ``iteration``: on several processes every rank writes its shards, then rank 0
        the rest and the record naming them; returns once the checkpoint is whole on every rank."""
        from agents.lora import adapter_state
        from pure_rl.checkpoint import rng_state, save_checkpoint

        envs_state = {"train": train_env_state}
        if self.eval_env is not None:
            envs_state["eval"] = self.eval_env.state_dict()
        model, optimizer = self.model, self.optimizer
        shards = par.save_sharded(run_dir, iteration, model, optimizer) if par.enabled else None
        if par.is_main:
            save_checkpoint(
                run_dir,
                iteration=iteration,
                model_state=None if shards else adapter_state(model) if self.lora else model.state_dict(),
                optimizer=None if shards else optimizer,
                env_state=envs_state,
                rng=rng_state(self.sampler),
                config=flat_config(self.record_cfg),
                critic=self.loss_module.critic,
                extra={
                    "scheduler": self.scheduler.state_dict(),
                    **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
                },
                shards=shards,
            )
        par.barrier()  # no rank goes on (or exits) before the checkpoint is whole


def build_training(
    cfg: RunConfig, run_dir: Path, resume: bool, par, *, env=None, eval_env=None, prm=None, verifier=None
) -> Training:
    """The run's parts per ``cfg`` on this rank of ``par`` (:class:`pure_rl.parallel.Parallel`), restored from
    ``run_dir``'s checkpoint when ``resume``. Objects given (``env``, ``eval_env``, ``prm``, ``verifier``) replace
    the configured ones."""
    # Heavy imports after the config is validated: a typo never waits for torch models to load.
    from agents import make_policy, make_reference_model
    from agents.lora import AdaptersDisabled, apply_lora, load_adapter_state
    from agents.policy import engine_dtype
    from envs import make_env
    from pure_rl.checkpoint import load_checkpoint, set_rng_state
    from pure_rl.objectives.loss import StepTokenPPOLoss
    from pure_rl.plots import truncate_metrics
    from pure_rl.samples import truncate_samples
    from pure_rl.update import (
        compute_dtype,
        grad_scaler,
        lr_scheduler,
        make_estimator,
        restore_lr_scheduler,
        trainable_parameters,
    )
    from pure_rl.warmup import warmed_up_model

    # RL starts from the warmed-up model when cfg.warmup asks for one (cached after the first run); the
    # reference policy of the KL term is that same starting point. Seeding comes after it, so a run that
    # builds the warm-up and one that finds it cached draw the same random numbers.
    start_model = par.main_first(warmed_up_model, cfg)  # rank 0 builds a missing warm-up; the rest find it cached
    record_cfg, cfg = cfg, par.on_this_rank(cfg)  # checkpoints record the config as given (device "cuda", not "cuda:3")
    seed_everything(cfg.train.seed)

    # --- environments -------------------------------------------------------------------------------------
    shard = (par.rank, par.world)  # this rank's groups of each global batch
    if env is None:
        env = make_env(cfg, prm=prm, verifier=verifier, shard=shard)
    if eval_env is None and cfg.train.eval_every:
        eval_env = make_env(cfg, split="eval", prm=env.prm, verifier=env.verifier, shard=shard)
    sampled_eval_env = None
    if eval_env is not None and cfg.train.eval_samples:
        n = cfg.train.eval_samples
        sampled_eval_env = make_env(
            cfg,
            split="eval",
            batch_size=eval_env.batch_size[0] * n,
            group_size=n,
            prm=env.prm,
            verifier=env.verifier,
            shard=shard,
        )
    for warning in precision_warnings(cfg):
        print(f"warning: {warning}")

    # --- policy, LoRA, generation engine, reference, sharding ---------------------------------------------
    # With rollouts on Ray the workers hold the generation engines; the trainer's own policy (evaluation, the
    # update) generates with the transformers backend on the trained module.
    trainer_cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, backend="transformers"))
    policy = make_policy(trainer_cfg if cfg.train.ray_rollout_workers else cfg, model_name=start_model)
    model, tokenizer = policy.model, policy.tokenizer
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = cfg.lora.rank > 0
    if lora:
        # Adapters go into the base model's own modules: the generation backend runs them too.
        model = policy.model = apply_lora(
            model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules
        )
    if par.enabled and cfg.policy.backend == "vllm":
        par.at_close(policy.backend.shutdown)  # vLLM's shutdown ends the process group its engine joined
    elif par.enabled:
        # Generation runs on a full copy (a sharded forward is a collective, and ranks generate different numbers
        # of tokens), as vLLM's engine is one; the weight sync fills it from the shards tensor by tensor.
        policy.backend.model = par.generation_copy(model, getattr(torch, engine_dtype(cfg.policy)))
    if cfg.algo.kl_coef == 0:
        reference = None
    elif lora:
        reference = AdaptersDisabled(model)  # the base weights are the reference: no second copy
    else:
        # The starting weights loaded again, under mixed precision straight into the compute dtype (the frozen
        # reference is only ever run in it): never a float32 copy of the policy.
        reference = make_reference_model(
            start_model, dtype=compute_dtype(cfg) or getattr(torch, cfg.policy.dtype), device=cfg.policy.device
        )
        if cfg.train.parallel == "fsdp":  # already in the compute dtype: sharded as it is
            reference = par.shard(reference)
    par.shard(model.get_base_model() if lora else model, compute_dtype(cfg))  # FSDP2 in place (train.parallel)

    # --- loss, estimator, optimiser -----------------------------------------------------------------------
    loss_module = StepTokenPPOLoss(
        model,
        clip_epsilon=cfg.algo.clip_epsilon,
        entropy_coef=cfg.algo.entropy_coef,
        kl_coef=cfg.algo.kl_coef,
        kl_estimator=cfg.algo.kl_estimator,
        critic_coef=cfg.algo.critic_coef,
        aggregation=cfg.algo.loss_aggregation,
        max_tokens=cfg.env.max_tokens,
        clip_epsilon_high=cfg.algo.clip_epsilon_high,
        clip_ratio_c=cfg.algo.clip_ratio_c,
        log_prob_fn=functools.partial(
            log_probs_with_entropy,
            shared_prompt_pass=shared_prompt_pass(cfg),
            chunk_tokens=cfg.train.logit_chunk_tokens,
        ),
    )
    estimator = make_estimator(loss_module, cfg)
    if par.enabled and loss_module.critic is not None:
        raise ConfigError(
            f"train.parallel={cfg.train.parallel} with algo.estimator={cfg.algo.estimator}: its learned critic is not "
            "sharded yet; choose an estimator without a critic, or train.parallel=none"
        )
    optimizer = torch.optim.AdamW(
        trainable_parameters(loss_module), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    training = Training(
        cfg=cfg,
        record_cfg=record_cfg,
        start_model=start_model,
        env=env,
        eval_env=eval_env,
        sampled_eval_env=sampled_eval_env,
        policy=policy,
        model=model,
        tokenizer=tokenizer,
        lora=lora,
        reference=reference,
        loss_module=loss_module,
        estimator=estimator,
        optimizer=optimizer,
        scheduler=lr_scheduler(optimizer, cfg, env.batch_size[0]),
        scaler=grad_scaler(cfg),
        sampler=getattr(policy.backend, "generator", None),
    )
    if not resume:
        return training

    # --- resume: the inverse of Training.save_checkpoint --------------------------------------------------
    ckpt = par.broadcast(load_checkpoint(run_dir) if par.is_main else None)  # rank 0 checks the digests
    if par.enabled != ("shards" in ckpt):
        raise CheckpointError(
            f"{run_dir}'s checkpoint was written by a run with "
            f"{'several processes' if 'shards' in ckpt else 'train.parallel=none'}: resume it the same way "
            "(python -m pure_rl.export turns either into a model folder)"
        )
    if par.enabled:
        par.load_sharded(run_dir / ckpt["shards"], model, optimizer)
    elif lora:
        load_adapter_state(model, ckpt["model"])
    else:
        model.load_state_dict(ckpt["model"])
    if loss_module.critic is not None:
        loss_module.critic.load_state_dict(ckpt["critic"])
    if not par.enabled:
        optimizer.load_state_dict(ckpt["optimizer"])
    restore_lr_scheduler(training.scheduler, ckpt["extra"]["scheduler"])
    if training.scaler is not None:
        training.scaler.load_state_dict(ckpt["extra"]["scaler"])
    env.load_state_dict(ckpt["env"]["train"])
    if eval_env is not None and "eval" in ckpt["env"]:
        eval_env.load_state_dict(ckpt["env"]["eval"])
    set_rng_state(ckpt["rng"], training.sampler)
    training.start = ckpt["iteration"]
    if par.is_main:
        truncate_metrics(run_dir / "logs" / "scalars", training.start)  # rows after the checkpoint are logged again
        truncate_samples(run_dir / "samples.jsonl", training.start)
    policy.sync_weights()
    par.print(f"resumed {run_dir} after iteration {training.start}")
    return training
