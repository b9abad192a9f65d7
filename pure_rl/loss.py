"""The PPO loss PURE trains with, as a TorchRL loss that selects PURE's estimators by name.

TorchRL's ``ClipPPOLoss`` only dispatches the estimators it lists in ``SUPPORTED_VALUE_ESTIMATORS``;
this subclass adds min-form and sum-form credit (registered in :mod:`pure_rl.estimators`) and makes
min-form the default, so ``loss.make_value_estimator("min_form", temperature=0.1)`` works. The paper is
critic-free: build it with ``critic_network=None`` and run the estimator before the loss (TorchRL's PPO
refuses to compute an advantage inside ``forward`` without a critic).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torchrl.objectives import ClipPPOLoss

from agents.log_probs import response_log_probs, token_log_probs
from pure_rl.estimators import PureValueEstimators

__all__ = ["PUREPPOLoss", "StepTokenPPOLoss"]


class PUREPPOLoss(ClipPPOLoss):
    """``ClipPPOLoss`` that also accepts ``"min_form"`` and ``"sum_form"`` value estimators."""

    SUPPORTED_VALUE_ESTIMATORS = (
        *ClipPPOLoss.SUPPORTED_VALUE_ESTIMATORS,
        PureValueEstimators.MIN_FORM,
        PureValueEstimators.SUM_FORM,
    )
    default_value_estimator = PureValueEstimators.MIN_FORM


class StepTokenPPOLoss(PUREPPOLoss):
    """PPO-clip on the tokens of step-level reasoning trajectories (spec section 6).

    Every token carries its step's advantage (see :mod:`pure_rl.token_batch`); the clipped surrogate is
    averaged over each sequence's response tokens, then over the batch. The KL to the reference policy is
    either in the reward (``"k1"``, the paper's choice: the trainer adds it to the step rewards before the
    estimator) or a loss term here (``"k3"``). Credit assignment stays TorchRL's: ``make_value_estimator``
    selects ``"min_form"`` / ``"sum_form"`` by name, as in :class:`PUREPPOLoss`.

    ``forward`` takes a token batch (``input_ids``, ``attention_mask``, ``response_mask``, ``advantage``
    ``[B, T]``, ``prompt_length`` ``[B]``, optionally ``old_log_prob`` and ``ref_log_prob``) and returns
    ``loss_objective``, ``loss_entropy``, ``loss_kl`` and diagnostics. Without ``old_log_prob`` the batch is
    on-policy and the ratio is exactly 1 (one PPO epoch). With ``shared_prompt_pass`` the forward pass runs each
    group's shared prompt once (:func:`~agents.log_probs.response_log_probs`); otherwise whole sequences.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        clip_epsilon: float = 0.2,
        entropy_coef: float = 0.0,
        kl_coef: float = 0.001,
        kl_estimator: str = "k1",
        shared_prompt_pass: bool = True,
    ):
        if kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {kl_estimator!r}")
        actor = TensorDictModule(model, in_keys=["input_ids", "attention_mask"], out_keys=["logits"])
        super().__init__(actor, critic_network=None, clip_epsilon=clip_epsilon, functional=False)
        self.model = model
        self.entropy_coef = entropy_coef
        self.kl_coef = kl_coef
        self.kl_estimator = kl_estimator
        self.shared_prompt_pass = shared_prompt_pass

    def forward(self, tokens: TensorDictBase) -> TensorDict:
        if self.shared_prompt_pass:
            log_probs, entropy = response_log_probs(
                self.model, tokens["input_ids"], tokens["attention_mask"], tokens["prompt_length"], with_entropy=True
            )
        else:
            log_probs, entropy = token_log_probs(
                self.model, tokens["input_ids"], tokens["attention_mask"], with_entropy=True
            )
        device = log_probs.device
        mask = tokens["response_mask"].to(device).to(log_probs.dtype)
        n_tokens = mask.sum(-1).clamp(min=1)

        def sequence_mean(x: torch.Tensor) -> torch.Tensor:
            return ((x * mask).sum(-1) / n_tokens).mean()

        old = tokens.get("old_log_prob", None)
        old = log_probs.detach() if old is None else old.to(device)
        advantage = tokens["advantage"].to(device).to(log_probs.dtype)
        ratio = torch.exp((log_probs - old) * mask)
        eps = self.clip_epsilon  # ClipPPOLoss's buffer
        surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - eps, 1 + eps) * advantage)
        out = {
            "loss_objective": -sequence_mean(surrogate),
            "loss_entropy": -self.entropy_coef * sequence_mean(entropy),
            "entropy": sequence_mean(entropy).detach(),
            "clip_fraction": sequence_mean(((ratio - 1).abs() > eps).to(log_probs.dtype)).detach(),
            "ratio_max": (ratio * mask).max().detach(),
        }
        ref = tokens.get("ref_log_prob", None)
        zero = log_probs.new_zeros(())
        if ref is not None:
            delta = ref.to(device) - log_probs
            out["kl"] = sequence_mean(-delta).detach()  # k1 estimate of KL(pi || pi_ref)
            k3 = torch.exp(delta) - delta - 1
            out["loss_kl"] = self.kl_coef * sequence_mean(k3) if self.kl_estimator == "k3" else zero
        else:
            out["kl"], out["loss_kl"] = zero, zero
        return TensorDict(out, batch_size=[])
