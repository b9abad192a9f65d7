"""The PPO loss PURE trains with, as a TorchRL loss that selects PURE's estimators by name.

TorchRL's ``ClipPPOLoss`` only dispatches the estimators it lists in ``SUPPORTED_VALUE_ESTIMATORS``;
this subclass adds min-form and sum-form credit (registered in :mod:`pure_rl.estimators`) and makes
min-form the default, so ``loss.make_value_estimator("min_form", temperature=0.1)`` works. The paper is
critic-free: build it with ``critic_network=None`` and run the estimator before the loss (TorchRL's PPO
refuses to compute an advantage inside ``forward`` without a critic).
"""

from __future__ import annotations

from torchrl.objectives import ClipPPOLoss

from pure_rl.estimators import PureValueEstimators

__all__ = ["PUREPPOLoss"]


class PUREPPOLoss(ClipPPOLoss):
    """``ClipPPOLoss`` that also accepts ``"min_form"`` and ``"sum_form"`` value estimators."""

    SUPPORTED_VALUE_ESTIMATORS = (
        *ClipPPOLoss.SUPPORTED_VALUE_ESTIMATORS,
        PureValueEstimators.MIN_FORM,
        PureValueEstimators.SUM_FORM,
    )
    default_value_estimator = PureValueEstimators.MIN_FORM
