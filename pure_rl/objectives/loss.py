"""The PPO loss PURE trains with, as a TorchRL loss that selects PURE's estimators by name.

TorchRL's ``ClipPPOLoss`` only dispatches the estimators it lists in ``SUPPORTED_VALUE_ESTIMATORS``;
this subclass also builds every estimator registered under ``estimator`` in :mod:`pure_rl.registry` (min-form,
sum-form, and any plug-in's) and makes min-form the default, so ``loss.make_value_estimator("min_form",
temperature=0.1)`` works. The paper is critic-free: build it with ``critic_network=None`` and run the estimator
before the loss (TorchRL's PPO refuses to compute an advantage inside ``forward`` without a critic).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.common import LossModule

from pure_rl import registry
from pure_rl.objectives.credit import valid_steps_from_done

__all__ = ["PUREPPOLoss", "StepTokenPPOLoss", "loss_mask", "truncated_importance_weights"]

# (model, token batch, with_entropy) -> (log_probs [B, T], entropy [B, T] or None)
LogProbFn = Callable[[torch.nn.Module, TensorDictBase, bool], tuple[torch.Tensor, torch.Tensor | None]]


def truncated_importance_weights(
    trainer_log_probs: torch.Tensor, engine_log_probs: torch.Tensor, mask: torch.Tensor, cap: float
) -> torch.Tensor:
    """Per-token ``min(pi_trainer(x) / pi_engine(x), cap)`` on ``mask``, 0 elsewhere, 1 where the engine gave no
    log-prob (NaN); ``[B, T]`` each.

    The engine that sampled (a bf16 vLLM) and the trainer (fp32 masters, or its own kernels) give the same token
    slightly different probabilities, so the batch is off-policy for the trainer by that much; weighting each
    token's loss by this ratio corrects it, and the cap bounds the variance a token the engine found unlikely
    would add (truncated importance sampling, Yao et al. 2025; TRL's and verl's correction)."""
    engine = torch.nan_to_num(engine_log_probs, nan=0.0)
    gap = torch.where(torch.isnan(engine_log_probs), torch.zeros_like(engine), trainer_log_probs - engine)
    return torch.exp(gap).clamp(max=cap) * mask


def loss_mask(tokens: TensorDictBase) -> torch.Tensor:
    """``[B, T]`` the tokens the loss counts: ``loss_mask`` where a filter wrote one (``algo.overlong=mask``
    leaves truncated responses out), else every response token."""
    mask = tokens.get("loss_mask", None)
    return tokens["response_mask"] if mask is None else mask


class PUREPPOLoss(ClipPPOLoss):
    """``ClipPPOLoss`` that also builds the value estimators registered by name (``"min_form"``, ``"sum_form"``,
    a plug-in's), with the keyword arguments given."""

    default_value_estimator = "min_form"

    def make_value_estimator(self, value_type=None, **hyperparams):
        value_type = self.default_value_estimator if value_type is None else value_type
        if isinstance(value_type, str) and value_type in registry.names("estimator"):
            return LossModule.make_value_estimator(self, registry.get("estimator", value_type), **hyperparams)
        return super().make_value_estimator(value_type, **hyperparams)


class StepTokenPPOLoss(PUREPPOLoss):
    """PPO-clip on the tokens of step-level reasoning trajectories (docs/spec.md section 6).

    Every token carries its step's advantage (see :mod:`pure_rl.token_batch`); the clipped surrogate is
    averaged over each sequence's response tokens, then over the batch. The KL to the reference policy is
    either in the reward (``"k1"``, the paper's choice: the trainer adds it to the step rewards before the
    estimator) or a loss term here (``"k3"``). Credit assignment stays TorchRL's: ``make_value_estimator``
    selects ``"min_form"`` / ``"sum_form"`` by name, as in :class:`PUREPPOLoss`.

    ``forward`` takes a token batch (``input_ids``, ``attention_mask``, ``response_mask``, ``advantage``
    ``[B, T]``, ``prompt_length`` ``[B]``, optionally ``old_log_prob``, ``ref_log_prob`` and ``is_weight``, the
    engine-mismatch correction of :func:`truncated_importance_weights` that multiplies each token's surrogate) and
    returns ``loss_objective``, ``loss_entropy``, ``loss_kl`` and diagnostics. Without ``old_log_prob`` the batch is
    on-policy and the ratio is exactly 1 (one PPO epoch). ``log_prob_fn`` is the policy's forward pass
    (``agents.log_probs.sequence_log_probs``: each group's shared prompt once, or whole sequences); the loss
    itself knows no model internals.

    An estimator with a learned critic (a ``value_network``) gets its value term from :meth:`loss_critic` on the
    step batch: ``critic_coef * mean over valid steps of (V(s_k) - value_target_k)^2 / 2``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        clip_epsilon: float = 0.2,
        entropy_coef: float = 0.0,
        kl_coef: float = 0.001,
        kl_estimator: str = "k1",
        critic_coef: float = 0.5,
        log_prob_fn: LogProbFn,
        aggregation: str = "seq_mean_token_mean",
        max_tokens: int = 0,
        clip_epsilon_high: float | None = None,
        clip_ratio_c: float | None = None,
    ):
        if kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {kl_estimator!r}")
        if aggregation == "seq_mean_token_sum_norm" and max_tokens <= 0:
            raise ValueError("aggregation 'seq_mean_token_sum_norm' divides by the token budget: give max_tokens > 0")
        actor = TensorDictModule(model, in_keys=["input_ids", "attention_mask"], out_keys=["logits"])
        # TorchRL's own asymmetric clip (DAPO's clip-higher): a (low, high) pair becomes its two buffers.
        clip = clip_epsilon if clip_epsilon_high is None else (clip_epsilon, clip_epsilon_high)
        super().__init__(actor, critic_network=None, clip_epsilon=clip, functional=False)
        self.model = model
        self.entropy_coef = entropy_coef
        self.kl_coef = kl_coef
        self.kl_estimator = kl_estimator
        self.critic_coef = critic_coef
        self.log_prob_fn = log_prob_fn
        self.aggregation = registry.get("aggregation", aggregation)()
        self.max_tokens = max_tokens
        self.clip_ratio_c = clip_ratio_c

    @property
    def critic(self) -> torch.nn.Module | None:
        """The value estimator's learned critic, or None (critic-free credit)."""
        estimator = getattr(self, "_value_estimator", None)
        return getattr(estimator, "value_network", None)

    def loss_critic(self, steps: TensorDictBase) -> torch.Tensor:
        """The value term on a step batch ``[N, K]`` whose ``value_target`` the estimator wrote: the critic's
        squared error over valid steps, times ``critic_coef`` (0 without a critic)."""
        critic = self.critic
        if critic is None:
            return torch.zeros(())
        keys = self.value_estimator.tensor_keys
        value = critic(steps.copy()).get(keys.value).reshape(steps.shape)
        target = steps.get(keys.value_target).reshape(steps.shape).to(value.dtype)
        mask = valid_steps_from_done(steps.get(("next", keys.done)).reshape(steps.shape)).to(value.dtype)
        return self.critic_coef * 0.5 * (((value - target) ** 2) * mask).sum() / mask.sum().clamp(min=1)

    def forward(self, tokens: TensorDictBase) -> TensorDict:
        log_probs, entropy = self.log_prob_fn(self.model, tokens, True)
        device = log_probs.device
        mask = loss_mask(tokens).to(device).to(log_probs.dtype)
        n_tokens = mask.sum(-1).clamp(min=1)

        def sequence_mean(x: torch.Tensor) -> torch.Tensor:  # the diagnostics, whatever the loss aggregation
            return ((x * mask).sum(-1) / n_tokens).mean()

        def aggregate(x: torch.Tensor) -> torch.Tensor:
            return self.aggregation(x, mask, self.max_tokens)

        old = tokens.get("old_log_prob", None)
        old = log_probs.detach() if old is None else old.to(device)
        advantage = tokens["advantage"].to(device).to(log_probs.dtype)
        ratio = torch.exp((log_probs - old) * mask)
        # ClipPPOLoss's buffers: clip_epsilon, or clip_epsilon_low / clip_epsilon_high when asymmetric.
        eps = self.clip_epsilon_low if self._asymmetric_clip else self.clip_epsilon
        high = self.clip_epsilon_high if self._asymmetric_clip else eps
        surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - eps, 1 + high) * advantage)
        if self.clip_ratio_c is not None:
            # Dual clip: a negative advantage's objective is bounded below by c * A, however large the ratio grew.
            surrogate = torch.where(advantage < 0, torch.maximum(surrogate, self.clip_ratio_c * advantage), surrogate)
        is_weight = tokens.get("is_weight", None)
        if is_weight is not None:
            surrogate = surrogate * is_weight.to(device).to(surrogate.dtype)
        clipped = (ratio < 1 - eps) | (ratio > 1 + high) if self._asymmetric_clip else (ratio - 1).abs() > eps
        out = {
            "loss_objective": -aggregate(surrogate),
            "loss_entropy": -self.entropy_coef * aggregate(entropy),
            "entropy": sequence_mean(entropy).detach(),
            "clip_fraction": sequence_mean(clipped.to(log_probs.dtype)).detach(),
            "ratio_max": (ratio * mask).max().detach(),
        }
        ref = tokens.get("ref_log_prob", None)
        zero = log_probs.new_zeros(())
        if ref is not None:
            delta = ref.to(device) - log_probs
            out["kl"] = sequence_mean(-delta).detach()  # k1 estimate of KL(pi || pi_ref)
            k3 = torch.exp(delta) - delta - 1
            out["loss_kl"] = self.kl_coef * aggregate(k3) if self.kl_estimator == "k3" else zero
        else:
            out["kl"], out["loss_kl"] = zero, zero
        return TensorDict(out, batch_size=[])
