"""TorchRL value estimators for step-level reasoning trajectories: min-form (PURE) and sum-form credit.

Thin modules over :mod:`pure_rl.objectives.credit` that bind tensordict keys the TorchRL way (``_AcceptedKeys``,
``set_keys``) and register themselves by name (:mod:`pure_rl.registry`, kind ``estimator``, with their own config
keys), so a PPO loss and the config's ``algo.estimator`` select them::

    loss = PUREPPOLoss(actor)                     # pure_rl.objectives.loss
    loss.make_value_estimator("min_form", temperature=0.1, baseline="rloo_token", vr_coef=1.0)

Data layout: a tensordict with batch dims ``[..., steps]`` (time last), one entry per reasoning step:

- ``("next", "reward")`` ``[..., K, 1]``: the process reward of each step (PRM score; zeros for VR-only);
- ``("next", "done")`` ``[..., K, 1]``: steps after the first done are padding, unless an explicit mask is
  present at ``("collector", "mask")`` (what TorchRL's ``split_trajectories`` writes);
- ``"group_id"`` ``[..., K]`` (or ``[..., K, 1]``): the prompt each trajectory was sampled for; the
  baselines compare samples of one group;
- ``"step_tokens"`` ``[..., K]``: tokens per step (the ``rloo_token`` baseline and whitening weights);
- ``("next", "verifier_reward")`` ``[..., K, 1]``: the verifier's 0/1 outcome, read at the last valid
  step, used when ``vr_coef != 0``; ``("next", "has_reference")`` (optional) marks prompts with a
  reference answer.

Writes ``"advantage"`` and ``"value_target"`` ``[..., K, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.objectives.value import ValueEstimatorBase

from pure_rl import registry
from pure_rl.objectives import credit
from pure_rl.registry import opt

__all__ = [
    "ClipFormEstimator",
    "ClipFormOptions",
    "DeltaFormEstimator",
    "MinFormEstimator",
    "MinFormOptions",
    "StepCreditEstimator",
    "SumFormEstimator",
]


class StepCreditEstimator(ValueEstimatorBase):
    """Critic-free step-level credit assignment with group baselines (docs/spec.md sections 3-5).

    Keyword Args:
        form: one of :data:`pure_rl.objectives.credit.FORMS` (subclasses fix it).
        temperature: softmin temperature for min-form; None or 0 for the exact min. Default 0.1 (the paper).
        gamma: discount; default 1.0 (the paper).
        baseline: a registered baseline name: ``"rloo_token"`` (default, the reference code's), ``"rloo"``,
            ``"grpo"``, ``"none"``, or a plug-in's.
        vr_coef: coefficient ``c_vr`` of the verifiable reward; 0 (default) disables it.
        whiten: whiten advantages over the batch's valid steps, weighted by tokens per step. Default True.
        charge_boundary_tokens: a per-token baseline charges a step's boundary token too (``n`` tokens; False:
            ``n - 1``, the reference code's count). Default True.
        clip_eta: ``clip_form``'s threshold (:func:`pure_rl.objectives.credit.clip_rewards`). Default 0.
        value_network: must be None: these forms are critic-free, as the paper is. An estimator with a learned
            critic subclasses ``ValueEstimatorBase`` with its own ``value_network`` (the PPO loss then trains it:
            ``StepTokenPPOLoss.loss_critic``); ``examples/min_form_critic`` is one.
    """

    @dataclass
    class _AcceptedKeys(ValueEstimatorBase._AcceptedKeys):
        """Tensordict keys, settable with ``set_keys``.

        TorchRL's ``set_keys`` looks keys up in this class's own ``__dict__``, so the inherited ones are
        declared again here.

        Attributes (on top of TorchRL's advantage, value_target, value, reward, done, terminated):
            mask: explicit valid-step mask ``[..., K]``; absent -> derived from ``("next", done)``.
            step_tokens: tokens per step ``[..., K]``.
            group_id: prompt group id ``[..., K]``.
            verifier_reward: 0/1 verifier outcome, read under ``"next"`` at the last valid step.
            has_reference: bool, read under ``"next"``; absent -> every prompt has a reference.
            extra_reward: optional per-step reward outside the credit form (e.g. the k1 KL penalty).
        """

        advantage: NestedKey = "advantage"
        value_target: NestedKey = "value_target"
        value: NestedKey = "state_value"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        steps_to_next_obs: NestedKey = "steps_to_next_obs"
        sample_log_prob: NestedKey | None = None
        mask: NestedKey = ("collector", "mask")
        step_tokens: NestedKey = "step_tokens"
        group_id: NestedKey = "group_id"
        verifier_reward: NestedKey = "verifier_reward"
        has_reference: NestedKey = "has_reference"
        extra_reward: NestedKey = "extra_reward"

    default_keys = _AcceptedKeys
    form: str = "min_form"

    def __init__(
        self,
        *,
        form: str | None = None,
        temperature: float | None = 0.1,
        gamma: float = 1.0,
        baseline: str = "rloo_token",
        vr_coef: float = 0.0,
        whiten: bool = True,
        charge_boundary_tokens: bool = True,
        clip_eta: float = 0.0,
        value_network: torch.nn.Module | None = None,
        differentiable: bool = False,
        device: torch.device | None = None,
        **kwargs,
    ):
        if value_network is not None:
            raise NotImplementedError(
                f"{type(self).__name__} is critic-free (as the paper); pass value_network=None, or select an "
                "estimator with a learned critic (examples/min_form_critic registers one)"
            )
        super().__init__(value_network=None, differentiable=differentiable, device=device, **kwargs)
        form = form or self.form
        if form not in credit.FORMS:
            raise ValueError(f"form must be one of {credit.FORMS}, got {form!r}")
        self._baseline = registry.entry("baseline", baseline)  # an unknown name lists the registered ones
        if temperature is not None and temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 or None: exact min), got {temperature}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.form = form
        self.temperature = temperature
        self.gamma = gamma
        self.baseline = baseline
        self.vr_coef = vr_coef
        self.whiten = whiten
        self.charge_boundary_tokens = charge_boundary_tokens
        self.clip_eta = clip_eta

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = [
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            self.tensor_keys.group_id,
        ]
        if self._baseline.meta.get("needs_step_tokens"):
            keys.append(self.tensor_keys.step_tokens)
        if self.vr_coef != 0:
            keys.append(("next", self.tensor_keys.verifier_reward))
        return keys

    def _step_tensor(self, tensordict: TensorDictBase, key: NestedKey) -> Tensor:
        """Read ``key`` as ``[..., K]``, dropping TorchRL's trailing singleton feature dim."""
        value = tensordict.get(key, None)
        if value is None:
            raise KeyError(
                f"{type(self).__name__} needs the key {key!r} in the step batch; "
                f"set another name with .set_keys(...) (present: {list(tensordict.keys(True, True))})"
            )
        if value.ndim == tensordict.ndim + 1 and value.shape[-1] == 1:
            value = value.squeeze(-1)
        if value.shape != tensordict.batch_size:
            raise ValueError(f"key {key!r} has shape {tuple(value.shape)}, expected {tuple(tensordict.batch_size)}")
        return value

    def _valid_steps(self, tensordict: TensorDictBase) -> Tensor:
        if tensordict.get(self.tensor_keys.mask, None) is not None:
            return self._step_tensor(tensordict, self.tensor_keys.mask).to(torch.bool)
        return credit.valid_steps_from_done(self._step_tensor(tensordict, ("next", self.tensor_keys.done)))

    def value_estimate(self, tensordict: TensorDictBase, **kwargs) -> Tensor:
        """The value target (return with the raw VR term), ``[..., K, 1]``."""
        return self._compute(tensordict)[1]

    def forward(
        self,
        tensordict: TensorDictBase,
        *,
        params: TensorDictBase | None = None,
        target_params: TensorDictBase | None = None,
    ) -> TensorDictBase:
        """Write ``advantage`` and ``value_target`` ``[..., K, 1]`` into ``tensordict`` and return it."""
        advantage, value_target = self._compute(tensordict)
        tensordict.set(self.tensor_keys.advantage, advantage)
        tensordict.set(self.tensor_keys.value_target, value_target)
        return tensordict

    def _compute(self, tensordict: TensorDictBase) -> tuple[Tensor, Tensor]:
        if tensordict.ndim < 1:
            raise ValueError("the step batch needs a time (steps) dimension as its last batch dim")
        shape = tensordict.batch_size
        n_steps = shape[-1]
        rewards = self._step_tensor(tensordict, ("next", self.tensor_keys.reward))
        if not rewards.is_floating_point():
            rewards = rewards.to(torch.get_default_dtype())
        mask = self._valid_steps(tensordict)
        group_ids = self._step_tensor(tensordict, self.tensor_keys.group_id)[..., 0]
        flat = (-1, n_steps)
        step_tokens = None
        if (
            self._baseline.meta.get("needs_step_tokens")
            or tensordict.get(self.tensor_keys.step_tokens, None) is not None
        ):
            step_tokens = self._step_tensor(tensordict, self.tensor_keys.step_tokens).reshape(flat)
        correct = has_reference = None
        if self.vr_coef != 0:
            v = self._step_tensor(tensordict, ("next", self.tensor_keys.verifier_reward))
            correct = credit.value_at_last_step(v, mask).reshape(-1)
            if tensordict.get(("next", self.tensor_keys.has_reference), None) is not None:
                ref = self._step_tensor(tensordict, ("next", self.tensor_keys.has_reference)).to(torch.bool)
                has_reference = credit.value_at_last_step(ref, mask).reshape(-1)
        extra = None
        if tensordict.get(self.tensor_keys.extra_reward, None) is not None:
            extra = self._step_tensor(tensordict, self.tensor_keys.extra_reward).reshape(flat)
        advantage, value_target = credit.step_advantages(
            rewards.reshape(flat),
            mask.reshape(flat),
            group_ids.reshape(-1),
            step_tokens,
            form=self.form,
            temperature=self.temperature,
            gamma=self.gamma,
            baseline=self._baseline.obj,
            correct=correct,
            has_reference=has_reference,
            vr_coef=self.vr_coef,
            whiten_advantages=self.whiten,
            extra_rewards=extra,
            boundary_tokens_charged=self.charge_boundary_tokens,
            clip_eta=self.clip_eta,
        )
        return advantage.reshape(shape).unsqueeze(-1), value_target.reshape(shape).unsqueeze(-1)


@dataclass
class MinFormOptions:
    """Min-form's own config keys (``algo.*``)."""

    temperature: float = opt(
        0.1,
        "min-form softmin temperature T; 0 means the exact min",
        check=lambda v: v >= 0,
        allowed=">= 0 (0 = exact min)",
    )


@registry.register("estimator", "min_form", options=MinFormOptions)
class MinFormEstimator(StepCreditEstimator):
    """PURE's min-form credit: ``G_k = min_{j>=k} r_j`` (exact) or its softmin form (``temperature > 0``).

    See :class:`StepCreditEstimator` for arguments and keys.
    """

    form = "min_form"

    def __init__(self, **kwargs):
        kwargs.pop("form", None)
        super().__init__(form="min_form", **kwargs)


class _SumOfStepRewards(StepCreditEstimator):
    """A sum-form credit of (possibly refined) step rewards: its form is the class's, and it has no temperature."""

    def __init__(self, **kwargs):
        kwargs.pop("form", None)
        kwargs.pop("temperature", None)
        super().__init__(form=self.form, temperature=None, **kwargs)


@registry.register("estimator", "sum_form")
class SumFormEstimator(_SumOfStepRewards):
    """Canonical sum-form credit ``G_k = sum_{j>=k} gamma^(j-k) r_j``: the baseline PURE is compared with.

    See :class:`StepCreditEstimator` for arguments and keys (``temperature`` is ignored).
    """

    form = "sum_form"


@dataclass
class ClipFormOptions:
    """Clip-form's own config keys (``algo.*``)."""

    clip_eta: float = opt(
        0.0,
        "clip_form: each step's process reward becomes min(r - clip_eta, 0) (Gao et al. 2024); on the PRM's [-1, 1] "
        "scale 0 is a probability of 0.5",
        check=lambda v: -1 <= v <= 1,
        allowed="in [-1, 1]",
    )


@registry.register("estimator", "clip_form", options=ClipFormOptions)
class ClipFormEstimator(_SumOfStepRewards):
    """Gao et al. 2024's Clip (arXiv 2410.15115): sum-form credit of ``min(r_k - eta, 0)``. No step earns more
    than 0, so adding steps never pays: the field's other bound on the cumulative process reward, beside
    PURE's min.

    See :class:`StepCreditEstimator` for arguments and keys (``temperature`` is ignored).
    """

    form = "clip_form"


@registry.register("estimator", "delta_form")
class DeltaFormEstimator(_SumOfStepRewards):
    """Gao et al. 2024's Delta: sum-form credit of ``r_k - r_{k+1}`` (0 at the last step), so the return from
    step ``k`` is ``r_k - r_K``, bounded whatever the number of steps.

    See :class:`StepCreditEstimator` for arguments and keys (``temperature`` is ignored).
    """

    form = "delta_form"
