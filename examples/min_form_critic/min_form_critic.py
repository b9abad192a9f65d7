"""A pure-rl plug-in: min-form credit with a learned critic, registered as the estimator ``min_form_critic``.

Written as a user would, outside the package. PURE is critic-free; docs/spec.md section 5 names the extension:
a value function trained toward the min-form Bellman target

    y_k = min(r_k, V(s_{k+1}))        (y_K = r_K at the last step),

so that V(s_k) estimates the worst process reward still ahead, min_{j >= k} r_j. The advantage of step k is its
one-step min-form TD error, ``y_k - V(s_k)``, plus the verifiable-reward term with its leave-one-out baseline
and the return-to-go of any extra per-step reward (the k1 KL penalty), whitened over the batch's steps.

The critic reads the state's text: a hashed bag of character trigrams of the question and the steps written so
far, plus the step index, into a small MLP. It is a ``value_network`` in TorchRL's sense (it writes
``state_value``), so ``StepTokenPPOLoss.loss_critic`` trains it with the policy (``algo.critic_coef``).
Select it with ``plugins: [examples.min_form_critic.min_form_critic]`` and ``algo.estimator: min_form_critic``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.objectives.value import ValueEstimatorBase

from pure_rl.objectives import credit
from pure_rl.objectives.estimators import StepCreditEstimator
from pure_rl.registry import opt, register


def _texts(td: TensorDictBase, key) -> list[str]:
    return [t for row in td.get(key).tolist() for t in row]


class TextStateValue(TensorDictModuleBase):
    """V(s): hashed character-trigram counts of ``question + response`` (the state's text) and the step index,
    through a two-layer MLP. Reads ``question``, ``response`` and ``step_count`` ``[N, K]``; writes
    ``state_value`` ``[N, K, 1]``."""

    def __init__(self, buckets: int = 512, hidden: int = 64):
        super().__init__()
        self.in_keys = ["question", "response", "step_count"]
        self.out_keys = ["state_value"]
        self.buckets = buckets
        self.net = torch.nn.Sequential(
            torch.nn.Linear(buckets + 1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )

    def features(self, texts: list[str], step_counts: torch.Tensor) -> torch.Tensor:
        x = torch.zeros(len(texts), self.buckets + 1)
        for i, text in enumerate(texts):
            for j in range(len(text) - 2):
                x[i, zlib.crc32(text[j : j + 3].encode()) % self.buckets] += 1.0
        x[:, :-1] /= x[:, :-1].sum(-1, keepdim=True).clamp(min=1.0)  # a distribution: length-independent
        x[:, -1] = step_counts.float() / 8.0
        return x

    def values(self, questions: list[str], responses: list[str], step_counts: torch.Tensor) -> torch.Tensor:
        texts = [q + "\n" + r for q, r in zip(questions, responses)]
        return self.net(self.features(texts, step_counts.reshape(-1))).squeeze(-1)

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        values = self.values(_texts(td, "question"), _texts(td, "response"), td.get("step_count"))
        td.set("state_value", values.reshape(*td.shape, 1))
        return td


@dataclass
class MinFormCriticOptions:
    critic_hidden: int = opt(
        64, "min_form_critic: hidden units of the critic MLP", check=lambda v: v > 0, allowed="> 0"
    )


@register("estimator", "min_form_critic", options=MinFormCriticOptions)
class MinFormCriticEstimator(StepCreditEstimator):
    """Min-form TD credit with a learned critic (see the module docstring). Keys as
    :class:`~pure_rl.objectives.estimators.StepCreditEstimator`; ``baseline`` is unused (the critic is the
    baseline), ``temperature`` does not apply (the target is the exact min)."""

    def __init__(self, *, critic_hidden: int = 64, value_network: torch.nn.Module | None = None, **kwargs):
        kwargs.pop("temperature", None)
        super().__init__(form="min_form", temperature=None, **kwargs)
        # StepCreditEstimator refuses a critic (its forms are critic-free); this one owns its own.
        ValueEstimatorBase.__setattr__(self, "value_network", value_network or TextStateValue(hidden=critic_hidden))

    def _compute(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        shape = tensordict.batch_size
        rewards = self._step_tensor(tensordict, ("next", self.tensor_keys.reward)).float()
        mask = self._valid_steps(tensordict)
        net = self.value_network
        with torch.no_grad():
            value = net.values(
                _texts(tensordict, "question"), _texts(tensordict, "response"), tensordict.get("step_count")
            ).reshape(shape)
            next_value = net.values(
                _texts(tensordict, "question"),
                _texts(tensordict, ("next", "response")),
                tensordict.get(("next", "step_count")),
            ).reshape(shape)
        last = torch.nn.functional.one_hot(credit.last_step_index(mask), shape[-1]).bool() & mask
        target = torch.where(last, rewards, torch.minimum(rewards, next_value)) * mask
        advantage = (target - value) * mask
        if self.vr_coef != 0:
            group_ids = self._step_tensor(tensordict, self.tensor_keys.group_id)[..., 0]
            v = self._step_tensor(tensordict, ("next", self.tensor_keys.verifier_reward))
            correct = v.gather(-1, credit.last_step_index(mask).unsqueeze(-1)).squeeze(-1)
            vr = credit.verifier_term(correct, group_ids, self.vr_coef, leave_one_out=True)
            advantage = advantage + vr[:, None] * mask  # the outcome term reaches every step (its return-to-go)
        if tensordict.get(self.tensor_keys.extra_reward, None) is not None:
            extra = self._step_tensor(tensordict, self.tensor_keys.extra_reward).float()
            advantage = advantage + credit.sum_form_returns(extra, mask)
        if self.whiten:
            advantage = credit.whiten(advantage, mask, self._step_tensor(tensordict, self.tensor_keys.step_tokens))
        return advantage.unsqueeze(-1), target.unsqueeze(-1)
