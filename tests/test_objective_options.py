"""The objective's options TRL and verl users expect, each against a hand computation: loss aggregation (with
gradient accumulation), asymmetric and dual clipping, GRPO's scalings, the overlong penalty and mask, and
dynamic sampling (group filters, refills and their bound)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from pure_rl import registry
from pure_rl.objectives.credit import CreditBatch
from pure_rl.objectives.loss import StepTokenPPOLoss
from pure_rl.update import accumulate_gradients, overlong_penalty

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"

# A ragged batch: 3 responses of 4, 1 and 2 tokens (the mask), per-token values.
VALUES = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 0.0, 0.0, 0.0], [5.0, 7.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
MAX_TOKENS = 8


def test_the_three_aggregations_by_hand():
    by_hand = {
        # (2.5 + 10 + 6) / 3: each response's mean, then the mean over responses.
        "seq_mean_token_mean": (10 / 4 + 10 / 1 + 12 / 2) / 3,
        # 32 / 7: every token alike.
        "token_mean": (10 + 10 + 12) / 7,
        # Each response's sum over the budget of 8, then the mean.
        "seq_mean_token_sum_norm": (10 / 8 + 10 / 8 + 12 / 8) / 3,
    }
    for name, expected in by_hand.items():
        agg = registry.get("aggregation", name)()
        assert agg(VALUES, MASK, MAX_TOKENS).item() == pytest.approx(expected), name
        # Gradient accumulation: micro-batches of one response, weighted by their share, give the batch's value.
        total = sum(
            agg.share(MASK[i : i + 1], MASK) * agg(VALUES[i : i + 1], MASK[i : i + 1], MAX_TOKENS) for i in range(3)
        )
        assert total.item() == pytest.approx(expected), name


def _weights(name: str) -> torch.Tensor:
    """d loss / d value of each token: 1 / (n_i B) per sequence, 1 / N for token_mean, 1 / (B max) for Dr. GRPO."""
    n = MASK.sum(-1, keepdim=True).float()
    return {
        "seq_mean_token_mean": (1 / (n * 3)).expand(3, 4) * MASK,
        "token_mean": torch.full((3, 4), 1 / 7) * MASK,
        "seq_mean_token_sum_norm": torch.full((3, 4), 1 / (3 * MAX_TOKENS)) * MASK,
    }[name]


@pytest.mark.parametrize("name", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_aggregation_gradients_weigh_tokens_as_each_library_does(name):
    values = VALUES.clone().requires_grad_()
    registry.get("aggregation", name)()(values, MASK, MAX_TOKENS).backward()
    torch.testing.assert_close(values.grad, _weights(name))


class _TokenLogProbs(torch.nn.Module):
    """A 'model' whose log-prob of each token is one parameter per (row, position), so the loss's gradient is each
    token's weight times its advantage."""

    def __init__(self, shape):
        super().__init__()
        self.log_probs = torch.nn.Parameter(torch.zeros(shape))


def _log_probs(model, tokens, with_entropy):
    rows = tokens["prompt_length"]  # each row's index in the batch (a micro-batch reads its own rows)
    lp = model.log_probs[rows]
    return lp, torch.zeros_like(lp)


def _token_batch(advantage: torch.Tensor, mask: torch.Tensor) -> TensorDict:
    b, t = mask.shape
    return TensorDict(
        {
            "input_ids": torch.zeros(b, t, dtype=torch.long),
            "attention_mask": torch.ones(b, t, dtype=torch.long),
            "response_mask": mask,
            "advantage": advantage,
            "prompt_length": torch.arange(b),
        },
        batch_size=[b],
    )


@pytest.mark.parametrize("name", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_the_loss_in_micro_batches_equals_the_whole_batch_for_every_aggregation(name):
    advantage = VALUES * MASK
    results = []
    for micro in (3, 1):
        model = _TokenLogProbs((3, 4))
        loss = StepTokenPPOLoss(model, kl_coef=0.0, aggregation=name, max_tokens=MAX_TOKENS, log_prob_fn=_log_probs)
        stats = accumulate_gradients(loss, _token_batch(advantage, MASK), micro)
        results.append((model.log_probs.grad.clone(), stats["loss_objective"]))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1] == pytest.approx(results[1][1])
    # On-policy the ratio is 1 and d ratio / d log p = 1: the gradient is -advantage times the token's weight.
    torch.testing.assert_close(results[0][0], -advantage * _weights(name))


def test_asymmetric_and_dual_clipping_by_hand():
    # One token per row, ratios exp(log p - old) chosen around the clip range, advantages +1 or -1.
    ratios = torch.tensor([0.5, 1.25, 1.5, 0.5, 1.5, 5.0])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    model = _TokenLogProbs((6, 1))
    with torch.no_grad():
        model.log_probs.copy_(ratios.log()[:, None])
    tokens = _token_batch(adv[:, None], torch.ones(6, 1, dtype=torch.bool))
    tokens["old_log_prob"] = torch.zeros(6, 1)

    def objective(**kw):
        loss = StepTokenPPOLoss(model, kl_coef=0.0, clip_epsilon=0.2, log_prob_fn=_log_probs, **kw)
        return -loss(tokens)["loss_objective"].item() * 6  # the sum of the per-token objectives

    # min(r A, clip(r, 0.8, 1.2) A): 0.5, 1.2, 1.2, -0.8, -1.5, -5.0
    assert objective() == pytest.approx(0.5 + 1.2 + 1.2 - 0.8 - 1.5 - 5.0)
    # Clip-higher at 1.28: the 1.25 ratio is no longer clipped, 1.5 clips at 1.28.
    assert objective(clip_epsilon_high=0.28) == pytest.approx(0.5 + 1.25 + 1.28 - 0.8 - 1.5 - 5.0)
    # Dual clip c = 3: a negative advantage contributes at least -3 (the 5.0 ratio's -5 becomes -3).
    assert objective(clip_ratio_c=3.0) == pytest.approx(0.5 + 1.2 + 1.2 - 0.8 - 1.5 - 3.0)


def _credit_batch(first_targets: list[float], groups: list[int]) -> CreditBatch:
    v = torch.tensor(first_targets)[:, None]
    n = v.shape[0]
    return CreditBatch(
        step_rewards=v, process_returns=v, value_targets=v, mask=torch.ones(n, 1, dtype=torch.bool),
        group_ids=torch.tensor(groups), step_tokens=None, correct=None, has_reference=None, vr_coef=0.0, gamma=1.0,
    )  # fmt: skip


def test_grpo_scalings_by_hand():
    batch = _credit_batch([1.0, 3.0, 0.0, 0.0], [0, 0, 1, 1])  # group 0 mean 2, std 1; group 1 all equal
    group = registry.get("baseline", "grpo")(batch)[:, 0]
    torch.testing.assert_close(group, torch.tensor([-1.0, 1.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    no_std = registry.get("baseline", "grpo_no_std")(batch)[:, 0]
    torch.testing.assert_close(no_std, torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    batch = _credit_batch([2.0, 6.0, 0.0, 0.0], [0, 0, 1, 1])  # batch mean 2, population std sqrt(6)
    by_batch = registry.get("baseline", "grpo_batch_std")(batch)[:, 0]
    torch.testing.assert_close(by_batch, torch.tensor([-2.0, 2.0, 0.0, 0.0]) / 6**0.5, atol=1e-5, rtol=0)
    assert registry.get("baseline", "grpo_no_std")(_credit_batch([1.0, 1.1], [0, 0]))[:, 0].abs().max() < 0.06


def test_overlong_penalty_by_hand():
    # Budget 10, buffer 4: no penalty up to 6 tokens, then linear to -0.5 at 10.
    lengths = torch.tensor([3, 6, 7, 8, 10])
    torch.testing.assert_close(overlong_penalty(lengths, 10, 4, 0.5), torch.tensor([0.0, 0.0, -0.125, -0.25, -0.5]))


def _run(tmp_path, name, *overrides):
    from pure_rl.plots import read_metrics
    from pure_rl.train import main

    run_dir = tmp_path / name
    main(["--config", str(TINY), "--run-dir", str(run_dir), "train.iterations=2", *overrides])
    return read_metrics(run_dir / "logs" / "scalars")


def test_overlong_mask_leaves_cut_responses_out_and_penalty_changes_the_credit(tmp_path):
    from pure_rl.config import ConfigError, load_config

    # A budget of 4 tokens cuts every response of the random tiny model. Without a baseline or whitening every
    # response keeps its (negative) return as advantage, so the plain run has gradients.
    raw = ("env.max_tokens=4", "algo.baseline=none", "algo.whiten=false")
    plain = _run(tmp_path, "plain", *raw)
    assert all(r["grad_norm"] > 0 for r in plain), plain
    # Masked, nothing is left to train on.
    masked = _run(tmp_path, "masked", *raw, "algo.overlong=mask")
    assert all(r["loss"] == 0.0 and r["grad_norm"] == 0.0 for r in masked), masked
    # Penalised, the same first responses (same seed) get a return lower by the full penalty of 1.
    penalised = _run(tmp_path, "penalised", *raw, "algo.overlong=penalty", "algo.overlong_buffer=4")
    assert penalised[0]["response_tokens"] == plain[0]["response_tokens"] == 4
    assert penalised[0]["loss_objective"] > plain[0]["loss_objective"]  # the loss is minus the advantage-weighted
    with pytest.raises(ConfigError, match=r"algo\.overlong=penalty needs 0 < algo\.overlong_buffer"):
        load_config(TINY, ["algo.overlong=penalty"])


def test_group_filters_by_hand():
    # 3 groups of 2 samples, 2 steps: group 0 all zero, group 1 one non-zero step, group 2 non-zero on padding only.
    adv = torch.zeros(3, 2, 2)
    adv[1, 0, 1] = 0.5
    adv[2, 1, 1] = 0.7
    mask = torch.ones(3, 2, 2, dtype=torch.bool)
    mask[2, 1, 1] = False
    keep = registry.get("group_filter", "zero_advantage")(adv, mask, None)
    assert keep.tolist() == [False, True, False]
    correct = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    assert registry.get("group_filter", "same_outcome")(adv, mask, correct).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="needs the verifier's outcome"):
        registry.get("group_filter", "same_outcome")(adv, mask, None)


def test_dynamic_sampling_refills_logs_and_stops_with_a_clear_error(tmp_path):
    from pure_rl.group_filter import GroupFilterError

    rows = _run(tmp_path, "filtered", "algo.group_filter=zero_advantage", "train.iterations=4")
    assert all(r["rollout_batches"] >= 1 and r["groups_dropped"] >= 0 for r in rows)
    # Each batch took as many rollouts as it needed: one per 2 groups kept, plus the dropped groups' share.
    assert all(r["rollout_batches"] * 2 >= 2 + r["groups_dropped"] for r in rows), rows
    assert any(r["groups_dropped"] > 0 for r in rows), rows  # the random tiny model often ties a whole group
    # The random tiny model never answers right: every group has one outcome, so 'same_outcome' never fills.
    with pytest.raises(GroupFilterError, match=r"algo\.group_filter=same_outcome: after 2 rollout batches only 0 of 2"):
        _run(tmp_path, "never", "algo.group_filter=same_outcome", "algo.group_filter_max_batches=2")
