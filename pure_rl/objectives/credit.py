"""PURE's credit assignment as pure tensor functions (TorchRL ``objectives/value/functional.py`` style).

Every function takes step-level tensors ``[..., K]`` (``K`` = steps, time last) with a bool ``mask`` of the
same shape marking valid steps (valid steps first, padding after). Results are 0 on padding, never NaN
(fully masked rows give zeros), and nothing loops in Python over the batch or the steps.

Group-level functions (baselines, the verifier term) take one value per trajectory ``[N]`` and integer
``group_ids [N]``: trajectories sampled from the same prompt share a group id. Any integers work; they need
not be contiguous.

Baselines are named functions ``baseline(batch: CreditBatch) -> advantages [N, K]``, registered with
``@register("baseline", name)`` (:mod:`pure_rl.registry`) and selected by ``step_advantages(..., baseline=name)``
or the config's ``algo.baseline``; a new one needs no edit here.

This module imports only torch and the (standard-library) registry, so estimators, losses and outside code can
all build on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pure_rl.registry import entry, register

__all__ = [
    "FORMS",
    "CreditBatch",
    "clip_rewards",
    "delta_rewards",
    "group_leave_one_out_mean",
    "group_mean_std",
    "last_step_index",
    "min_form_returns",
    "place_at_last_step",
    "process_returns",
    "rloo_token_baseline",
    "softmin_weights",
    "step_advantages",
    "step_rewards_from_returns",
    "sum_form_returns",
    "valid_steps_from_done",
    "value_at_last_step",
    "verifier_term",
    "whiten",
    "whiten_nonzero",
]


def _check_mask(rewards: Tensor, mask: Tensor) -> Tensor:
    if mask.shape != rewards.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal rewards shape {tuple(rewards.shape)} ([..., steps])"
        )
    if not rewards.is_floating_point():
        raise TypeError(f"rewards must be a float tensor, got {rewards.dtype}")
    return mask.to(torch.bool)


def softmin_weights(rewards: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """Softmin weights ``softmax(-r / T)`` over the valid steps of each row.

    Args:
        rewards: ``[..., K]`` float step rewards.
        mask: ``[..., K]`` bool, True on valid steps.
        temperature: ``T > 0``; as ``T -> 0`` the weight concentrates on the worst step.

    Returns:
        ``[..., K]`` weights summing to 1 over each row's valid steps, 0 on padding and on fully masked rows.
    """
    mask = _check_mask(rewards, mask)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for softmin weights, got {temperature}")
    # A finite fill (not -inf) keeps fully masked rows finite: softmax gives uniform weights there,
    # which the final multiplication by the mask turns into zeros.
    logits = torch.where(mask, -rewards / temperature, torch.finfo(rewards.dtype).min)
    return torch.softmax(logits, dim=-1) * mask


def sum_form_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Canonical discounted return ``G_k = sum_{j>=k} gamma^(j-k) r_j`` (reverse cumulative sum).

    Args:
        rewards: ``[..., K]`` float step rewards.
        mask: ``[..., K]`` bool valid-step mask.
        gamma: discount in ``[0, 1]``; 1 (the paper's setting) uses an exact reverse cumsum.

    Returns:
        ``[..., K]`` returns, 0 on padding.
    """
    mask = _check_mask(rewards, mask)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    r = rewards * mask
    if gamma == 1.0:
        returns = r.flip(-1).cumsum(-1).flip(-1)
    else:
        # Upper-triangular discount matrix D[k, j] = gamma^(j-k) for j >= k: a [K, K] matmul is stable for
        # any gamma (unlike rescaling by gamma^-k) and K (steps per response) is small.
        k = rewards.shape[-1]
        idx = torch.arange(k, device=rewards.device)
        power = (idx[None, :] - idx[:, None]).to(rewards.dtype)
        discount = torch.where(power >= 0, gamma ** power.clamp(min=0), torch.zeros_like(power))
        returns = r @ discount.T
    return returns * mask


def min_form_returns(rewards: Tensor, mask: Tensor, temperature: float | None = None) -> Tensor:
    """PURE's min-form return.

    Exact (``temperature`` None or 0): ``G_k = min_{j>=k} r_j``, a reverse cumulative min.
    Softmin (``temperature > 0``, the paper's implementation): ``w = softmax(-r/T)`` over the valid steps,
    ``G_k = sum_{j>=k} w_j r_j``; ``G_1 -> min_k r_k`` as ``T -> 0``.

    Args:
        rewards: ``[..., K]`` float step rewards.
        mask: ``[..., K]`` bool valid-step mask.
        temperature: softmin temperature, or None / 0 for the exact min.

    Returns:
        ``[..., K]`` returns, 0 on padding.
    """
    mask = _check_mask(rewards, mask)
    if temperature is None or temperature == 0:
        padded = torch.where(mask, rewards, torch.inf)
        returns = padded.flip(-1).cummin(-1).values.flip(-1)
        return torch.where(mask, returns, torch.zeros_like(rewards))
    weighted = softmin_weights(rewards, mask, temperature) * rewards
    return sum_form_returns(weighted, mask, gamma=1.0)


def clip_rewards(rewards: Tensor, mask: Tensor, eta: float = 0.0) -> Tensor:
    """Gao et al. 2024's Clip refinement (arXiv 2410.15115): ``r_k <- min(r_k - eta, 0)``. Every step's reward is
    at most 0, so no trajectory gains by adding steps; below ``eta`` a step is still charged by how far below.

    Args:
        rewards: ``[..., K]`` float step rewards.
        mask: ``[..., K]`` bool valid-step mask.
        eta: the threshold (on the PRM's ``[-1, 1]`` scale; 0 is a probability of 0.5).

    Returns:
        ``[..., K]`` refined rewards, 0 on padding.
    """
    mask = _check_mask(rewards, mask)
    return (rewards - eta).clamp(max=0.0) * mask


def delta_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Gao et al. 2024's Delta refinement: ``r_k <- r_k - r_{k+1}`` for every valid step but the last, which
    gets 0. The sum from step ``k`` telescopes to ``r_k - r_K``: bounded whatever the number of steps.

    Args:
        rewards: ``[..., K]`` float step rewards.
        mask: ``[..., K]`` bool valid-step mask (valid steps first).

    Returns:
        ``[..., K]`` refined rewards, 0 on padding and at each trajectory's last step.
    """
    mask = _check_mask(rewards, mask)
    r = rewards * mask
    following = torch.cat([r[..., 1:], torch.zeros_like(r[..., :1])], dim=-1)
    has_following = torch.cat([mask[..., 1:], torch.zeros_like(mask[..., :1])], dim=-1)
    return torch.where(has_following, r - following, torch.zeros_like(r))


def process_returns(
    rewards: Tensor,
    mask: Tensor,
    form: str,
    *,
    temperature: float | None = 0.1,
    gamma: float = 1.0,
    clip_eta: float = 0.0,
) -> Tensor:
    """The process return ``G [..., K]`` of ``rewards`` in credit ``form`` (one of :data:`FORMS`):

    - ``min_form`` (PURE): :func:`min_form_returns` (exact or softmin), discounted through its step rewards when
      ``gamma < 1`` (the paper has no discount);
    - ``sum_form``: :func:`sum_form_returns`;
    - ``clip_form`` and ``delta_form``: the sum of Gao et al.'s refined rewards (:func:`clip_rewards`,
      :func:`delta_rewards`), the field's other answer to the same hack.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if form == "min_form":
        returns = min_form_returns(rewards, mask, temperature)
        if gamma != 1.0:
            # Min-form has no discount in the paper; discount its step rewards so value targets stay consistent.
            returns = sum_form_returns(step_rewards_from_returns(returns, mask), mask, gamma)
        return returns
    if form == "clip_form":
        rewards = clip_rewards(rewards, mask, clip_eta)
    elif form == "delta_form":
        rewards = delta_rewards(rewards, mask)
    return sum_form_returns(rewards, mask, gamma)


FORMS = ("min_form", "sum_form", "clip_form", "delta_form")


def step_rewards_from_returns(returns: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Per-step rewards ``d_k = G_k - gamma * G_{k+1}`` whose discounted return-to-go is ``G`` again.

    This lets any credit form (exact min, softmin, sum) share one pipeline: baselines and the verifier term
    are added to ``d`` and the advantage is the return-to-go of the result. For softmin, ``d_k = w_k r_k``.

    Args:
        returns: ``[..., K]`` returns.
        mask: ``[..., K]`` bool valid-step mask.
        gamma: the discount the returns were built with.

    Returns:
        ``[..., K]`` step rewards, 0 on padding.
    """
    mask = _check_mask(returns, mask)
    g = returns * mask
    next_g = torch.nn.functional.pad(g[..., 1:], (0, 1))
    return (g - gamma * next_g) * mask


def valid_steps_from_done(done: Tensor) -> Tensor:
    """``[..., K]`` bool: a step is valid if no earlier step ended the trajectory (padding follows ``done``)."""
    done = done.to(torch.long)
    return (done.cumsum(-1) - done) == 0


def last_step_index(mask: Tensor) -> Tensor:
    """Index of the last valid step of each row, ``[...]`` (0 for fully masked rows)."""
    return (mask.to(torch.long).sum(-1) - 1).clamp(min=0)


def value_at_last_step(values: Tensor, mask: Tensor) -> Tensor:
    """Each row's entry of ``values [..., K]`` at its last valid step, ``[...]`` (step 0 for fully masked rows);
    the inverse of :func:`place_at_last_step`."""
    return values.gather(-1, last_step_index(mask).unsqueeze(-1)).squeeze(-1)


def place_at_last_step(values: Tensor, mask: Tensor) -> Tensor:
    """Put one value per row ``[...]`` at its last valid step of a ``[..., K]`` tensor (0 elsewhere).

    Fully masked rows get nothing.
    """
    mask = mask.to(torch.bool)
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    idx = last_step_index(mask).unsqueeze(-1)
    has_steps = mask.any(-1, keepdim=True)
    return out.scatter(-1, idx, values.unsqueeze(-1) * has_steps)


def _group_sums(values: Tensor, group_ids: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-trajectory sums over its group: ``(sum of values in my group, sum of weights in my group)``."""
    if values.ndim != 1 or group_ids.shape != values.shape:
        raise ValueError(
            f"group functions take values [N] and group_ids [N], got {tuple(values.shape)} and {tuple(group_ids.shape)}"
        )
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    if weights is None:
        weights = torch.ones_like(values)
    value_sum = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(0, inverse, values)
    weight_sum = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(0, inverse, weights)
    return value_sum[inverse], weight_sum[inverse]


def group_leave_one_out_mean(values: Tensor, group_ids: Tensor, valid: Tensor | None = None) -> Tensor:
    """``mean_{j in group(i), j != i, valid_j} values_j`` for every trajectory ``i``.

    Args:
        values: ``[N]`` one value per trajectory.
        group_ids: ``[N]`` integer group of each trajectory.
        valid: optional ``[N]`` bool; invalid members neither contribute nor receive a baseline.

    Returns:
        ``[N]``; 0 where no other valid member exists (a group of one) and for invalid members.
    """
    valid_f = torch.ones_like(values) if valid is None else valid.to(values.dtype)
    total, count = _group_sums(values * valid_f, group_ids, valid_f)
    others = count - valid_f
    mean = (total - values * valid_f) / others.clamp(min=1)
    return torch.where(others > 0, mean, torch.zeros_like(mean)) * valid_f


def group_mean_std(values: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """GRPO statistics: each trajectory's group mean and (population) standard deviation, both ``[N]``."""
    total, count = _group_sums(values, group_ids)
    mean = total / count
    sq_total, _ = _group_sums((values - mean) ** 2, group_ids)
    return mean, (sq_total / count).sqrt()


def rloo_token_baseline(trajectory_returns: Tensor, response_tokens: Tensor, group_ids: Tensor) -> Tensor:
    """The reference code's per-token leave-one-out baseline ``b_i = sum_{j!=i} R_j / sum_{j!=i} L_j``.

    Step ``k`` of trajectory ``i`` then pays ``b_i * ntok_ik``: the baseline grows with the tokens a step
    spends, which (unlike a per-step baseline) does not push the policy towards few, very long steps.

    Args:
        trajectory_returns: ``[N]`` return of each trajectory's first step, ``R_i = G_i1``.
        response_tokens: ``[N]`` response length ``L_i`` in tokens.
        group_ids: ``[N]`` integer group ids.

    Returns:
        ``[N]`` baseline per token; 0 where the rest of the group has no tokens (a group of one).
    """
    tokens = response_tokens.to(trajectory_returns.dtype)
    return_sum, token_sum = _group_sums(trajectory_returns, group_ids, tokens)
    other_tokens = token_sum - tokens
    b = (return_sum - trajectory_returns) / other_tokens.clamp(min=1)
    return torch.where(other_tokens > 0, b, torch.zeros_like(b))


def verifier_term(
    correct: Tensor,
    group_ids: Tensor,
    coef: float,
    valid: Tensor | None = None,
    leave_one_out: bool = True,
) -> Tensor:
    """The verifiable-reward (VR) term added at the last step.

    Without a baseline it is ``c_vr * (v - 1)`` (a wrong answer costs ``c_vr``, a right one nothing); with
    ``leave_one_out`` it is ``c_vr * (v_i - mean_{j != i} v_j)``, the VR term's own RLOO baseline.

    Args:
        correct: ``[N]`` verifier outcome ``v`` (bool or 0/1 float).
        group_ids: ``[N]`` integer group ids.
        coef: ``c_vr``.
        valid: optional ``[N]`` bool; prompts without a reference answer get no VR term (0).
        leave_one_out: subtract the group's leave-one-out mean instead of 1.

    Returns:
        ``[N]`` float term (dtype of ``correct`` if float, else the default dtype).
    """
    v = correct.to(correct.dtype if correct.is_floating_point() else torch.get_default_dtype())
    valid_f = torch.ones_like(v) if valid is None else valid.to(v.dtype)
    if leave_one_out:
        term = v - group_leave_one_out_mean(v, group_ids, valid)
    else:
        term = v - 1.0
    return coef * term * valid_f


def whiten(values: Tensor, mask: Tensor, weights: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Whiten ``values`` over the masked entries of the whole batch: ``(x - mean) / (std + eps)``.

    Args:
        values: ``[..., K]`` advantages.
        mask: ``[..., K]`` bool; only these entries enter the statistics and the result (0 elsewhere).
        weights: optional ``[..., K]`` non-negative weights, e.g. tokens per step, so that step-level
            whitening equals token-level whitening when every token of a step shares its advantage.
        eps: added to the standard deviation.

    Returns:
        ``[..., K]`` whitened values, 0 off the mask; zeros if the mask is empty.
    """
    mask = _check_mask(values, mask)
    w = mask.to(values.dtype) if weights is None else weights.to(values.dtype) * mask
    total = w.sum()
    if total <= 0:
        return torch.zeros_like(values)
    mean = (values * w).sum() / total
    var = (((values - mean) ** 2) * w).sum() / total
    return (values - mean) / (var.sqrt() + eps) * mask


def whiten_nonzero(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """The reference code's whitening of token advantages, quirks included (../shared/REFERENCE.md, difference 3).

    Entries that are exactly 0 (boundary tokens with zero advantage) are left out of the count and stay 0; the
    mean is the sum over the mask divided by the non-zero count, and so is the variance's sum of squared
    deviations, although that sum runs over every masked entry (the zeros add ``mean**2`` each: the standard
    deviation comes out slightly high). Then ``(x - mean) / sqrt(max(var, eps))``.

    Args:
        values: ``[..., T]`` advantages (any trailing layout: tokens or steps).
        mask: ``[..., T]`` bool; entries off it neither count nor survive (0).
        eps: floor of the variance.

    Returns:
        ``[..., T]`` whitened values, 0 off the mask and where the input is 0; zeros if nothing is non-zero.
    """
    mask = _check_mask(values, mask)
    zero = values == 0
    count = (mask & ~zero).sum()
    if count == 0:
        return torch.zeros_like(values)
    x = values * mask
    mean = x.sum() / count
    var = (((values - mean) ** 2) * mask).sum() / count
    out = (values - mean) * var.clamp(min=eps).rsqrt()
    return torch.where(mask & ~zero, out, torch.zeros_like(out))


@dataclass(frozen=True)
class CreditBatch:
    """What a baseline sees: one step batch after the credit form, all ``[N, K]`` unless noted, 0 on padding.

    Attributes:
        step_rewards: ``d_k``, the per-step rewards whose return-to-go is the process return (plus any extra
            per-step reward, e.g. the k1 KL penalty).
        process_returns: ``G``, the credit form's return of the process rewards alone.
        value_targets: the return-to-go of ``d`` plus the raw VR term ``c_vr (v - 1)`` at the last step.
        mask: bool valid steps.
        group_ids: ``[N]`` prompt group of each trajectory.
        step_tokens: tokens per step, or None when the batch has none.
        correct: ``[N]`` verifier outcome, or None without a VR term.
        has_reference: ``[N]`` bool prompts with a reference answer, or None (all have one).
        vr_coef: ``c_vr`` (0: no VR term).
        gamma: the discount.
        boundary_tokens_charged: whether a step's token count, where a baseline charges per token, includes its
            boundary token (``n``; False: ``n - 1``, the reference code's count).
    """

    step_rewards: Tensor
    process_returns: Tensor
    value_targets: Tensor
    mask: Tensor
    group_ids: Tensor
    step_tokens: Tensor | None
    correct: Tensor | None
    has_reference: Tensor | None
    vr_coef: float
    gamma: float
    boundary_tokens_charged: bool = True

    def loo_verifier_term(self) -> Tensor:
        """``[N]``: the VR term with its own leave-one-out baseline, ``c_vr (v_i - mean_{j != i} v_j)`` (0 without
        VR)."""
        if self.vr_coef == 0.0:
            return torch.zeros(self.mask.shape[0], dtype=self.step_rewards.dtype, device=self.mask.device)
        term = verifier_term(self.correct, self.group_ids, self.vr_coef, self.has_reference, leave_one_out=True)
        return term.to(self.step_rewards.dtype)


@register("baseline", "rloo_token", needs_group=True, needs_step_tokens=True)
def rloo_token_advantages(batch: CreditBatch) -> Tensor:
    """The reference code's default: step rewards minus ``b_i * ntok_ik`` (RLOO token baseline on ``R_i = G_i1``),
    plus the VR term with its own leave-one-out baseline at the last step, then the return-to-go.

    ``L_i`` counts every response token; the charge counts a step's boundary token too unless
    ``batch.boundary_tokens_charged`` is False (the reference: ``n - 1``, which leaves a bonus of ``b_i`` per step).
    """
    if batch.step_tokens is None:
        raise ValueError("baseline 'rloo_token' needs step_tokens [N, K] (tokens per step)")
    ntok = batch.step_tokens.to(batch.step_rewards.dtype) * batch.mask
    b = rloo_token_baseline(batch.process_returns[:, 0], ntok.sum(-1), batch.group_ids)
    charged = ntok if batch.boundary_tokens_charged else (ntok - 1).clamp(min=0) * batch.mask
    adjusted = batch.step_rewards - b[:, None] * charged + place_at_last_step(batch.loo_verifier_term(), batch.mask)
    return sum_form_returns(adjusted, batch.mask, batch.gamma)


@register("baseline", "rloo", needs_group=True)
def rloo_advantages(batch: CreditBatch) -> Tensor:
    """Value target minus the leave-one-out mean of the group's first-step targets."""
    loo = group_leave_one_out_mean(batch.value_targets[:, 0], batch.group_ids)
    return (batch.value_targets - loo[:, None]) * batch.mask


@register("baseline", "grpo", needs_group=True)
def grpo_advantages(batch: CreditBatch) -> Tensor:
    """Value target minus the group mean of first-step targets, over the group's standard deviation (TRL
    ``scale_rewards="group"``)."""
    mean, std = group_mean_std(batch.value_targets[:, 0], batch.group_ids)
    return (batch.value_targets - mean[:, None]) / (std[:, None] + 1e-6) * batch.mask


@register("baseline", "grpo_batch_std", needs_group=True)
def grpo_batch_std_advantages(batch: CreditBatch) -> Tensor:
    """Value target minus the group mean of first-step targets, over the standard deviation of the whole batch's
    first-step targets (TRL ``scale_rewards="batch"``: a group whose samples barely differ is not blown up)."""
    first = batch.value_targets[:, 0]
    mean, _ = group_mean_std(first, batch.group_ids)
    std = first.std(unbiased=False) if first.numel() > 0 else first.new_zeros(())
    return (batch.value_targets - mean[:, None]) / (std + 1e-6) * batch.mask


@register("baseline", "grpo_no_std", needs_group=True)
def grpo_no_std_advantages(batch: CreditBatch) -> Tensor:
    """Value target minus the group mean of first-step targets, unscaled (Dr. GRPO; TRL ``scale_rewards="none"``):
    dividing by a group's standard deviation weighs nearly-unanimous groups up."""
    mean, _ = group_mean_std(batch.value_targets[:, 0], batch.group_ids)
    return (batch.value_targets - mean[:, None]) * batch.mask


@register("baseline", "none")
def no_baseline(batch: CreditBatch) -> Tensor:
    """The value target itself."""
    return batch.value_targets.clone()


def step_advantages(
    rewards: Tensor,
    mask: Tensor,
    group_ids: Tensor,
    step_tokens: Tensor | None = None,
    *,
    form: str = "min_form",
    temperature: float | None = 0.1,
    gamma: float = 1.0,
    baseline: str | Callable[[CreditBatch], Tensor] = "rloo_token",
    correct: Tensor | None = None,
    has_reference: Tensor | None = None,
    vr_coef: float = 0.0,
    whiten_advantages: bool = False,
    extra_rewards: Tensor | None = None,
    boundary_tokens_charged: bool = True,
    clip_eta: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """The whole of PURE's credit assignment for a step-level batch (docs/spec.md sections 3-5).

    1. Process returns ``G`` of ``rewards`` in the chosen form (:func:`process_returns`: min exact/softmin, sum,
       or sum of Gao et al.'s clipped or delta rewards).
    2. The value target adds the raw VR term ``c_vr (v - 1)`` at the last step (then return-to-go).
    3. Advantages by ``baseline``, a registered name or a function of a :class:`CreditBatch`: ``rloo_token``
       (the reference code's default), ``rloo``, ``grpo``, ``none`` (see each function), or a plug-in's.
    4. Optionally whiten over valid steps (weighted by tokens per step when given).

    ``extra_rewards`` are per-step rewards outside the credit form (the k1 KL penalty of the reference code,
    ``-kl_coef * sum_t (log pi - log pi_ref)`` over the step's tokens): they enter the return-to-go as they
    are, never the min.

    Args:
        rewards: ``[N, K]`` process reward per step (PRM score; zeros for VR-only).
        mask: ``[N, K]`` bool valid steps.
        group_ids: ``[N]`` prompt group of each trajectory.
        step_tokens: ``[N, K]`` tokens per step (required by ``rloo_token``).
        form: one of :data:`FORMS`.
        temperature: softmin T for ``min_form`` (None or 0: exact min).
        gamma: discount (the paper uses 1).
        baseline: a registered baseline name, or a baseline function.
        correct: ``[N]`` verifier outcome (needed when ``vr_coef != 0``).
        has_reference: ``[N]`` bool, prompts with a reference answer (others get no VR term).
        vr_coef: ``c_vr``; 0 disables the VR term.
        whiten_advantages: whiten the advantages over the batch.
        extra_rewards: ``[N, K]`` per-step rewards added outside the credit form, or None.
        boundary_tokens_charged: see :class:`CreditBatch`.
        clip_eta: the threshold of ``clip_form``.

    Returns:
        ``(advantages, value_targets)``, both ``[N, K]`` and 0 on padding.
    """
    mask = _check_mask(rewards, mask)
    if rewards.ndim != 2:
        raise ValueError(f"step_advantages takes rewards [N, K], got shape {tuple(rewards.shape)}")
    baseline_fn = entry("baseline", baseline).obj if isinstance(baseline, str) else baseline
    returns = process_returns(rewards, mask, form, temperature=temperature, gamma=gamma, clip_eta=clip_eta)
    d = step_rewards_from_returns(returns, mask, gamma)
    if extra_rewards is not None:
        d = d + extra_rewards.to(d.dtype) * mask

    if vr_coef != 0.0 and correct is None:
        raise ValueError("vr_coef != 0 needs the verifier outcome `correct` [N]")
    raw_vr = (
        verifier_term(correct, group_ids, vr_coef, has_reference, leave_one_out=False).to(rewards.dtype)
        if vr_coef != 0.0
        else torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    )
    value_targets = sum_form_returns(d + place_at_last_step(raw_vr, mask), mask, gamma)
    batch = CreditBatch(
        step_rewards=d,
        process_returns=returns,
        value_targets=value_targets,
        mask=mask,
        group_ids=group_ids,
        step_tokens=step_tokens,
        correct=correct,
        has_reference=has_reference,
        vr_coef=vr_coef,
        gamma=gamma,
        boundary_tokens_charged=boundary_tokens_charged,
    )
    advantages = baseline_fn(batch)

    if whiten_advantages:
        weights = None if step_tokens is None else step_tokens.to(rewards.dtype)
        advantages = whiten(advantages, mask, weights)
    return advantages, value_targets
