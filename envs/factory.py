"""``make_env(cfg)``: the configured environment (task, PRM, verifier, budgets) from the run config."""

from __future__ import annotations

import torch

from envs.datasets import load_dataset
from envs.prm import HFTokenClassificationPRM, ProcessRewardModel
from envs.reasoning_env import ReasoningStepEnv
from envs.rule_prm import ArithmeticRulePRM
from envs.tasks import ArithmeticTask, ProblemSource
from envs.verifier import MathVerifier

__all__ = ["EVAL_SEED_OFFSET", "make_env", "make_prm", "make_source"]

# Held-out arithmetic problems come from another seed: the generator is a function of (seed, index).
EVAL_SEED_OFFSET = 1_000_003


def make_source(cfg, split: str = "train") -> ProblemSource:
    """The problem source of ``cfg.env`` for ``split`` (``"train"`` or ``"eval"``)."""
    env = cfg.env
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if split == "eval" and env.eval_dataset:
        return load_dataset(env.eval_dataset)
    if env.task == "arithmetic":
        seed = cfg.train.seed + (EVAL_SEED_OFFSET if split == "eval" else 0)
        return ArithmeticTask(env.difficulty, seed=seed)
    return load_dataset(env.dataset)


def make_prm(cfg) -> ProcessRewardModel | None:
    """The PRM of ``cfg.env`` (None in VR-only mode, where no PRM is run)."""
    env = cfg.env
    if env.reward_mode == "vr":
        return None
    if env.prm == "arithmetic_rule":
        return ArithmeticRulePRM(neutral_score=env.neutral_score, answer_check=env.answer_check)
    return HFTokenClassificationPRM(
        env.prm_model,
        layout=env.prm_layout,
        device=env.prm_device,
        dtype=getattr(torch, env.prm_dtype),
        batch_size=env.prm_batch_size,
    )


def make_env(
    cfg,
    split: str = "train",
    batch_size: int | None = None,
    prm: ProcessRewardModel | None = None,
    group_size: int | None = None,
):
    """A :class:`ReasoningStepEnv` built from the run config.

    Args:
        cfg: the run config (``pure_rl.config.RunConfig``).
        split: ``"train"`` (``prompts_per_iter x samples_per_prompt`` episodes, grouped) or ``"eval"``
            (held-out problems, one sample each).
        batch_size: override the number of episodes (eval: defaults to ``train.eval_prompts``).
        prm: reuse an already built PRM (a 7B PRM is loaded once for train and eval envs).
        group_size: samples per problem (default: ``train.samples_per_prompt`` for train, 1 for eval).
    """
    if split == "train":
        group = cfg.train.samples_per_prompt
        size = batch_size or cfg.train.prompts_per_iter * group
        seed = cfg.train.seed
    else:
        group = 1
        size = batch_size or cfg.train.eval_prompts
        seed = cfg.train.seed + EVAL_SEED_OFFSET
    group = group_size or group
    return ReasoningStepEnv(
        make_source(cfg, split),
        prm if prm is not None else make_prm(cfg),
        MathVerifier(),
        batch_size=size,
        group_size=group,
        reward_mode=cfg.env.reward_mode,
        vr_coef=cfg.env.vr_coef,
        separator=cfg.env.step_separator,
        max_steps=cfg.env.max_steps,
        max_tokens=cfg.env.max_tokens,
        prompt_template=cfg.env.prompt_template,
        seed=seed,
        end_at_answer=cfg.env.end_at_answer,
    )
