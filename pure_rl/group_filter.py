"""Dynamic sampling: drop prompt groups with no learning signal and roll out more until the batch is full
(``algo.group_filter``; DAPO, verl's ``filter_groups``, OpenRLHF's dynamic filtering).

A group whose samples all get the same advantage teaches nothing (every advantage is 0 after a group baseline)
but still dilutes the batch; the learnability study saw collapse follow the vanishing of groups with mixed
outcomes. A filter is registered under ``group_filter`` as ``fn(advantage [G, S, K], mask [G, S, K], correct
[G, S] or None) -> keep [G] bool`` (``S`` samples per prompt, ``K`` steps). **The advantage a filter sees is the
credit assignment's before the KL penalty and before whitening** (either would make every group look
informative): under PRM+VR the PRM can separate samples the verifier cannot, so the default rule looks at
advantages, not only at outcomes.

:func:`fill_batch` keeps the groups that pass, rolls out further batches while fewer than the config's groups
passed (at most ``algo.group_filter_max_batches`` batches in all, then a clear error), and returns exactly
``train.prompts_per_iter`` groups, the first that passed, in rollout order.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tensordict import TensorDictBase

from pure_rl.objectives.credit import value_at_last_step
from pure_rl.registry import register
from pure_rl.token_batch import valid_step_mask

__all__ = ["GroupFilterError", "fill_batch", "same_outcome", "zero_advantage"]

_ZERO = 1e-6  # advantages this close to 0 carry no signal (whitening leaves rounding noise)


class GroupFilterError(RuntimeError):
    """Too few groups with a learning signal after the allowed rollout batches."""


@register("group_filter", "none")
def keep_all(advantage: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor | None) -> torch.Tensor:
    """Every group (no dynamic sampling)."""
    return torch.ones(advantage.shape[0], dtype=torch.bool)


@register("group_filter", "zero_advantage")
def zero_advantage(advantage: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor | None) -> torch.Tensor:
    """Keep a group where some valid step's advantage is not 0."""
    return ((advantage.abs() > _ZERO) & mask).flatten(1).any(-1)


@register("group_filter", "same_outcome")
def same_outcome(advantage: torch.Tensor, mask: torch.Tensor, correct: torch.Tensor | None) -> torch.Tensor:
    """Keep a group whose verifier outcomes differ (DAPO's rule: not all right, not all wrong)."""
    if correct is None:
        raise ValueError("group_filter 'same_outcome' needs the verifier's outcome (env.reward_mode vr or prm+vr)")
    return correct.amax(-1) != correct.amin(-1)


def _pad_steps(traj: TensorDictBase, k: int) -> TensorDictBase:
    """``traj [B, k0]`` to ``[B, k]`` steps: an ended episode's later steps repeat its last entry, done set."""
    if traj.shape[1] == k:
        return traj
    return torch.cat([traj] + [traj[:, -1:]] * (k - traj.shape[1]), dim=1)


def fill_batch(
    traj: TensorDictBase, more: Iterator[TensorDictBase], estimator, cfg
) -> tuple[TensorDictBase, dict[str, float]]:
    """The first ``train.prompts_per_iter`` groups of ``traj`` and the batches drawn from ``more`` that pass
    ``algo.group_filter``, as one step batch ``[prompts_per_iter * samples_per_prompt, K]``; and what it took
    (``groups_dropped``, ``rollout_batches``)."""
    from pure_rl import registry

    keep_fn = registry.get("group_filter", cfg.algo.group_filter)
    samples, wanted = cfg.train.samples_per_prompt, cfg.train.prompts_per_iter
    kept, dropped, batches = [], 0, 0
    while True:
        batches += 1
        probe = traj.copy()  # the estimator writes its outputs into its input: not into the batch
        probe.pop("extra_reward", None)
        whiten = getattr(estimator, "whiten", False)  # whitening would move a group's zeros off 0
        estimator.whiten = False
        try:
            estimator(probe)
        finally:
            estimator.whiten = whiten
        g = traj.shape[0] // samples
        advantage = probe["advantage"].reshape(g, samples, -1)
        mask = valid_step_mask(traj).reshape(g, samples, -1)
        correct = None
        if ("next", "verifier_reward") in traj.keys(include_nested=True):
            correct = value_at_last_step(traj.get(("next", "verifier_reward")).reshape(g, samples, -1), mask)
        keep = keep_fn(advantage, mask, correct)
        dropped += int((~keep).sum())
        rows = keep.repeat_interleave(samples)
        if rows.any():
            kept.append(traj[rows])
        have = sum(t.shape[0] for t in kept) // samples
        if have >= wanted:
            break
        if batches >= cfg.algo.group_filter_max_batches:
            raise GroupFilterError(
                f"algo.group_filter={cfg.algo.group_filter}: after {batches} rollout batches only {have} of "
                f"{wanted} groups had a learning signal ({dropped} dropped); raise algo.group_filter_max_batches, "
                "sample more per prompt (train.samples_per_prompt), or set algo.group_filter=none"
            )
        traj = next(more)
    k = max(t.shape[1] for t in kept)
    batch = torch.cat([_pad_steps(t, k) for t in kept], dim=0)[: wanted * samples]
    return batch, {"groups_dropped": float(dropped), "rollout_batches": float(batches)}
