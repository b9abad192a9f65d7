"""The TorchRL value estimators: keys, masks, registry dispatch and a PPO loss end to end."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch.distributions import Categorical
from torchrl.modules import ProbabilisticActor
from torchrl.objectives.value import ValueEstimatorBase

from pure_rl.objectives.credit import min_form_returns, step_advantages, sum_form_returns
from pure_rl.objectives.estimators import MinFormEstimator, SumFormEstimator
from pure_rl.objectives.loss import PUREPPOLoss

OBS, ACTIONS = 8, 5


def step_batch(lengths=(3, 2, 3, 1), groups=(0, 0, 1, 1), correct=(1.0, 0.0, 0.0, 1.0), seed=0, lead=()):
    """A synthetic step-level batch [*lead, trajectories, steps], padded after each trajectory's done."""
    g = torch.Generator().manual_seed(seed)
    b, k = len(lengths), max(lengths)
    shape = (*lead, b, k)
    done = torch.zeros(*shape, 1, dtype=torch.bool)
    for i, n in enumerate(lengths):
        done[..., i, n - 1 :, 0] = True
    return TensorDict(
        {
            "observation": torch.randn(*shape, OBS, generator=g),
            "action": torch.randint(0, ACTIONS, shape, generator=g),
            "action_log_prob": -torch.rand(shape, generator=g) * 2 - 0.5,
            "group_id": torch.tensor(groups)[:, None].expand(*shape),
            "step_tokens": torch.randint(1, 30, shape, generator=g),
            "next": {
                "reward": torch.rand(*shape, 1, generator=g) * 2 - 1,
                "done": done,
                "terminated": done.clone(),
                "verifier_reward": torch.tensor(correct)[:, None, None].expand(*shape, 1),
            },
        },
        batch_size=shape,
    )


def make_actor():
    net = TensorDictModule(torch.nn.Linear(OBS, ACTIONS), in_keys=["observation"], out_keys=["logits"])
    return ProbabilisticActor(net, in_keys=["logits"], distribution_class=Categorical, return_log_prob=True)


def valid_mask(lengths, k):
    return torch.arange(k)[None, :] < torch.tensor(lengths)[:, None]


def test_estimators_are_torchrl_value_estimators():
    assert issubclass(MinFormEstimator, ValueEstimatorBase)
    assert issubclass(SumFormEstimator, ValueEstimatorBase)


@pytest.mark.parametrize("temperature", [None, 0.1])
def test_min_form_estimator_equals_credit_functions(temperature):
    td = step_batch()
    lengths = (3, 2, 3, 1)
    est = MinFormEstimator(temperature=temperature, baseline="none", whiten=False)
    est(td)
    mask = valid_mask(lengths, 3)
    expected = min_form_returns(td["next", "reward"].squeeze(-1), mask, temperature)
    assert td["advantage"].shape == (4, 3, 1)
    torch.testing.assert_close(td["value_target"].squeeze(-1), expected)
    torch.testing.assert_close(td["advantage"].squeeze(-1), expected)


def test_sum_form_estimator_equals_credit_functions():
    td = step_batch()
    SumFormEstimator(gamma=0.9, baseline="none", whiten=False)(td)
    expected = sum_form_returns(td["next", "reward"].squeeze(-1), valid_mask((3, 2, 3, 1), 3), 0.9)
    torch.testing.assert_close(td["value_target"].squeeze(-1), expected)


def test_estimator_with_rloo_token_and_vr_matches_functional_pipeline():
    td = step_batch()
    MinFormEstimator(temperature=0.1, baseline="rloo_token", vr_coef=1.0, whiten=True)(td)
    adv, target = step_advantages(
        td["next", "reward"].squeeze(-1),
        valid_mask((3, 2, 3, 1), 3),
        torch.tensor([0, 0, 1, 1]),
        td["step_tokens"],
        form="min_form",
        temperature=0.1,
        baseline="rloo_token",
        correct=torch.tensor([1.0, 0.0, 0.0, 1.0]),
        vr_coef=1.0,
        whiten_advantages=True,
    )
    torch.testing.assert_close(td["advantage"].squeeze(-1), adv)
    torch.testing.assert_close(td["value_target"].squeeze(-1), target)
    # The wrong answers (samples 1 and 2) end with value target below their process return.
    assert td["value_target"][1, 0, 0] < td["value_target"][0, 0, 0] + 1


def test_explicit_mask_key_and_set_keys():
    td = step_batch()
    td["collector", "mask"] = valid_mask((1, 1, 1, 1), 3)  # explicit mask wins over done
    td["my_reward"] = td["next", "reward"].clone()
    est = MinFormEstimator(temperature=None, baseline="none", whiten=False)
    est(td)
    assert torch.all(td["value_target"][:, 1:] == 0)
    torch.testing.assert_close(td["value_target"][:, 0], td["next", "reward"][:, 0])
    est.set_keys(advantage="adv2", group_id="gid")
    td["gid"] = td["group_id"]
    est(td)
    assert "adv2" in td.keys()
    with pytest.raises(KeyError, match="not an accepted"):
        est.set_keys(nonsense="x")


def test_missing_key_is_a_clear_error():
    td = step_batch()
    del td["step_tokens"]
    with pytest.raises(KeyError, match="step_tokens"):
        MinFormEstimator(baseline="rloo_token")(td)


def test_extra_leading_dims():
    td = step_batch(lead=(2,))
    MinFormEstimator(baseline="rloo_token", vr_coef=1.0)(td)
    assert td["advantage"].shape == (2, 4, 3, 1)
    assert torch.isfinite(td["advantage"]).all()


def test_no_critic_in_the_paper():
    with pytest.raises(NotImplementedError, match="critic"):
        MinFormEstimator(value_network=torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match="baseline"):
        MinFormEstimator(baseline="median")


@pytest.mark.parametrize(
    "value_type,cls",
    [("min_form", MinFormEstimator), ("sum_form", SumFormEstimator), (MinFormEstimator, MinFormEstimator)],
)
def test_ppo_loss_selects_estimator_by_name(value_type, cls):
    loss = PUREPPOLoss(make_actor(), critic_network=None)
    loss.make_value_estimator(value_type, baseline="rloo_token", vr_coef=1.0)
    assert isinstance(loss.value_estimator, cls)
    assert loss.value_estimator.vr_coef == 1.0


def test_ppo_loss_default_estimator_is_min_form():
    loss = PUREPPOLoss(make_actor(), critic_network=None)
    loss.make_value_estimator()
    assert isinstance(loss.value_estimator, MinFormEstimator)
    assert loss.value_estimator.temperature == 0.1


@pytest.mark.parametrize("estimator", ["min_form", "sum_form", "clip_form", "delta_form", "instance"])
def test_ppo_loss_end_to_end_finite_loss_and_gradients(estimator):
    actor = make_actor()
    loss = PUREPPOLoss(actor, critic_network=None, clip_epsilon=0.2)
    if estimator == "instance":
        loss.make_value_estimator(MinFormEstimator(temperature=None, vr_coef=1.0))
    else:
        loss.make_value_estimator(estimator, vr_coef=1.0)
    td = step_batch()
    loss.value_estimator(td)
    out = loss(td)
    total = out["loss_objective"] + out.get("loss_entropy", torch.zeros(()))
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in actor.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_gao_forms_are_config_choices_with_their_own_keys():
    # Selected by name with their option (algo.clip_eta, range-checked), built by the run's make_estimator.
    from pure_rl.config import ConfigError, load_config
    from pure_rl.objectives.credit import process_returns
    from pure_rl.objectives.loss import StepTokenPPOLoss
    from pure_rl.update import make_estimator

    cfg = load_config("configs/tiny.yaml", ["algo.estimator=clip_form", "algo.clip_eta=0.25"])
    loss = StepTokenPPOLoss(torch.nn.Linear(2, 2), kl_coef=0.0, log_prob_fn=None)
    estimator = make_estimator(loss, cfg)
    assert type(estimator).__name__ == "ClipFormEstimator" and estimator.clip_eta == 0.25
    r = torch.tensor([[0.9, -0.4, 0.7]])
    m = torch.ones_like(r, dtype=torch.bool)
    assert process_returns(r, m, "clip_form", clip_eta=0.25)[0].tolist() == pytest.approx([-0.65, -0.65, 0.0])
    with pytest.raises(ConfigError, match="clip_eta"):
        load_config("configs/tiny.yaml", ["algo.estimator=clip_form", "algo.clip_eta=2"])
    assert type(make_estimator(loss, load_config("configs/tiny.yaml", ["algo.estimator=delta_form"]))).__name__ == (
        "DeltaFormEstimator"
    )
