"""Credit assignment functions against the spec's worked example and loop-based references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pure_rl.objectives.credit import (
    clip_rewards,
    delta_rewards,
    group_leave_one_out_mean,
    group_mean_std,
    min_form_returns,
    process_returns,
    rloo_token_baseline,
    softmin_weights,
    step_advantages,
    step_rewards_from_returns,
    sum_form_returns,
    verifier_term,
    whiten,
    whiten_nonzero,
)

# --- loop references: the definitions, written the obvious way ----------------------------------------------


def ref_min(r: list[float]) -> list[float]:
    return [min(r[k:]) for k in range(len(r))]


def ref_softmin(r: list[float], t: float) -> list[float]:
    m = min(r)
    e = [math.exp(-(x - m) / t) for x in r]
    w = [x / sum(e) for x in e]
    rt = [wi * ri for wi, ri in zip(w, r)]
    return [sum(rt[k:]) for k in range(len(r))]


def ref_sum(r: list[float], gamma: float) -> list[float]:
    return [sum(gamma ** (j - k) * r[j] for j in range(k, len(r))) for k in range(len(r))]


def ref_clip(r: list[float], eta: float) -> list[float]:
    return ref_sum([min(x - eta, 0.0) for x in r], 1.0)


def ref_delta(r: list[float]) -> list[float]:
    return ref_sum([r[k] - r[k + 1] for k in range(len(r) - 1)] + [0.0] if r else [], 1.0)


def ragged(rows: list[list[float]], dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    k = max([len(r) for r in rows] + [1])
    rewards = torch.zeros(len(rows), k, dtype=dtype)
    mask = torch.zeros(len(rows), k, dtype=torch.bool)
    for i, r in enumerate(rows):
        rewards[i, : len(r)] = torch.tensor(r, dtype=dtype)
        mask[i, : len(r)] = True
    # Garbage on padding must not leak into anything.
    rewards = torch.where(mask, rewards, torch.full_like(rewards, 7.0))
    return rewards, mask


def unpad(x: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    return [x[i][mask[i]].tolist() for i in range(x.shape[0])]


# --- the spec's worked example -----------------------------------------------------------------------------

R = torch.tensor([[0.9, -0.4, 0.7]])
M = torch.ones_like(R, dtype=torch.bool)


def test_worked_example_softmin_weights():
    w = softmin_weights(R, M, 0.1)
    torch.testing.assert_close(w, torch.tensor([[2.26029e-06, 0.999981, 1.67014e-05]]), atol=1e-5, rtol=0)


def test_worked_example_softmin_returns():
    g = min_form_returns(R, M, temperature=0.1)
    torch.testing.assert_close(g, torch.tensor([[-0.399979, -0.399981, 1.1691e-05]]), atol=1e-5, rtol=0)


def test_worked_example_exact_min_and_sum():
    torch.testing.assert_close(min_form_returns(R, M), torch.tensor([[-0.4, -0.4, 0.7]]))
    torch.testing.assert_close(min_form_returns(R, M, temperature=0), torch.tensor([[-0.4, -0.4, 0.7]]))
    torch.testing.assert_close(sum_form_returns(R, M), torch.tensor([[1.2, 0.3, 0.7]]))


# --- properties against the loop references on random ragged batches ----------------------------------------

reward_rows = st.lists(
    st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=0, max_size=9), min_size=1, max_size=6
)


@settings(max_examples=60, deadline=None)
@given(rows=reward_rows, dtype=st.sampled_from([torch.float32, torch.float64]))
def test_exact_min_matches_loop(rows, dtype):
    rewards, mask = ragged(rows, dtype)
    out = min_form_returns(rewards, mask)
    assert out.dtype == dtype
    assert torch.all(out[~mask] == 0)
    for got, r in zip(unpad(out, mask), rows):
        assert got == pytest.approx(ref_min(r), abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(rows=reward_rows, t=st.sampled_from([1.0, 0.1, 0.01]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_softmin_matches_loop(rows, t, dtype):
    rewards, mask = ragged(rows, dtype)
    out = min_form_returns(rewards, mask, temperature=t)
    assert torch.isfinite(out).all() and torch.all(out[~mask] == 0)
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    for got, r in zip(unpad(out, mask), rows):
        assert got == pytest.approx(ref_softmin(r, t) if r else [], abs=tol)


@settings(max_examples=60, deadline=None)
@given(rows=reward_rows, gamma=st.sampled_from([1.0, 0.9, 0.5, 0.0]))
def test_sum_matches_loop(rows, gamma):
    rewards, mask = ragged(rows)
    out = sum_form_returns(rewards, mask, gamma)
    assert torch.all(out[~mask] == 0)
    for got, r in zip(unpad(out, mask), rows):
        assert got == pytest.approx(ref_sum(r, gamma), abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(rows=reward_rows, t=st.sampled_from([None, 0.1]))
def test_step_rewards_invert_returns(rows, t):
    rewards, mask = ragged(rows)
    g = min_form_returns(rewards, mask, t)
    torch.testing.assert_close(sum_form_returns(step_rewards_from_returns(g, mask), mask), g)


def test_softmin_step_rewards_are_weighted_rewards():
    g = min_form_returns(R, M, 0.1)
    torch.testing.assert_close(step_rewards_from_returns(g, M), softmin_weights(R, M, 0.1) * R)


# --- limits, masks, shapes ---------------------------------------------------------------------------------


def test_softmin_tends_to_min_as_temperature_vanishes():
    torch.manual_seed(0)
    rewards = torch.rand(64, 10, dtype=torch.float64) * 2 - 1
    mask = torch.ones_like(rewards, dtype=torch.bool)
    exact = rewards.min(-1).values
    errs = [(min_form_returns(rewards, mask, t)[:, 0] - exact).abs().max().item() for t in (1.0, 0.1, 0.01, 0.001)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-3 < errs[0]


@pytest.mark.parametrize("t", [None, 0.1, 1e-3])
def test_fully_masked_rows_are_zero_and_finite(t):
    rewards = torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.3, 0.3]])
    mask = torch.tensor([[False, False, False], [True, True, False]])
    for out in (min_form_returns(rewards, mask, t), softmin_weights(rewards, mask, t or 0.1)):
        assert torch.isfinite(out).all()
        assert torch.all(out[0] == 0) and out[1, 2] == 0
    assert torch.all(sum_form_returns(rewards, mask)[0] == 0)


def test_tiny_temperature_with_wide_rewards_is_finite():
    rewards = torch.tensor([[1.0, -1.0, 1.0, -1.0]], dtype=torch.float32)
    out = min_form_returns(rewards, torch.ones_like(rewards, dtype=torch.bool), 1e-3)
    assert torch.isfinite(out).all()
    assert out[0, 0].item() == pytest.approx(-1.0, abs=1e-5)


def test_extra_leading_dims():
    torch.manual_seed(1)
    rewards = torch.rand(3, 4, 5) * 2 - 1
    mask = torch.rand(3, 4, 5).argsort(-1) < 5  # all valid ...
    mask[..., 3:] = torch.rand(3, 4, 2) > 0.5  # ... then ragged tails (valid steps first)
    mask[..., 4] &= mask[..., 3]
    for fn in (lambda r, m: min_form_returns(r, m, 0.1), min_form_returns, sum_form_returns):
        out = fn(rewards, mask)
        flat = fn(rewards.reshape(12, 5), mask.reshape(12, 5))
        assert out.shape == rewards.shape
        torch.testing.assert_close(out.reshape(12, 5), flat)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="mask shape"):
        min_form_returns(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))


# --- the paper's key property: min-form cannot be farmed, sum-form can -------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    r=st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=8),
    extra=st.floats(-1, 1, allow_nan=False),
    t=st.sampled_from([None, 0.1]),
)
def test_appending_a_step_never_raises_the_min_return(r, extra, t):
    before = min_form_returns(torch.tensor([r], dtype=torch.float64), torch.ones(1, len(r), dtype=torch.bool), t)
    r2 = [*r, extra]
    after = min_form_returns(torch.tensor([r2], dtype=torch.float64), torch.ones(1, len(r2), dtype=torch.bool), t)
    g1, g1_new = before[0, 0].item(), after[0, 0].item()
    if t is None:
        if extra < min(r):
            assert g1_new < g1
        else:
            assert g1_new == g1
    else:
        # Softmin is a smooth min: a step far above the minimum changes G_1 only negligibly, one far below
        # pulls it down to itself.
        if extra < min(r) - 0.2:
            assert g1_new < g1
        if extra > min(r) + 0.5:
            assert g1_new == pytest.approx(g1, abs=1e-2)


def test_filler_steps_farm_sum_but_not_min():
    base = [0.8, 0.6, 0.9]
    sums, mins, softmins = [], [], []
    for n_filler in range(6):
        r = torch.tensor([base + [0.7] * n_filler])
        m = torch.ones_like(r, dtype=torch.bool)
        sums.append(sum_form_returns(r, m)[0, 0].item())
        mins.append(min_form_returns(r, m)[0, 0].item())
        softmins.append(min_form_returns(r, m, 0.1)[0, 0].item())
    assert all(b > a for a, b in itertools.pairwise(sums))  # every positive step raises the sum
    assert len(set(mins)) == 1  # a step above the minimum leaves the min unchanged
    assert max(softmins) - min(softmins) < 0.1 and max(softmins) < max(base)


@settings(max_examples=60, deadline=None)
@given(rows=reward_rows, eta=st.sampled_from([0.0, 0.3, -0.5]))
def test_gao_clip_and_delta_forms_match_loops(rows, eta):
    rewards, mask = ragged(rows)
    clipped = process_returns(rewards, mask, "clip_form", clip_eta=eta)
    delta = process_returns(rewards, mask, "delta_form")
    assert torch.all(clipped[~mask] == 0) and torch.all(delta[~mask] == 0)
    assert torch.all(clip_rewards(rewards, mask, eta) <= 0)
    for got_c, got_d, r in zip(unpad(clipped, mask), unpad(delta, mask), rows):
        assert got_c == pytest.approx(ref_clip(r, eta), abs=1e-9)
        assert got_d == pytest.approx(ref_delta(r), abs=1e-9)
        # Delta's return from step k telescopes to r_k - r_K.
        assert got_d == pytest.approx([x - r[-1] for x in r], abs=1e-9)


def test_filler_steps_farm_sum_but_neither_clip_nor_delta():
    # The same farming as above: every form but sum stays bounded however many filler steps are added.
    base = [0.8, 0.6, 0.9]
    clip, delta = [], []
    for n_filler in range(6):
        r = torch.tensor([base + [0.7] * n_filler])
        m = torch.ones_like(r, dtype=torch.bool)
        clip.append(process_returns(r, m, "clip_form", clip_eta=0.0)[0, 0].item())
        delta.append(process_returns(r, m, "delta_form")[0, 0].item())
    assert all(c == 0.0 for c in clip)  # every step above eta earns nothing: no step pays
    assert all(abs(d) <= 2.0 for d in delta) and delta[1:] == pytest.approx([0.8 - 0.7] * 5)
    assert delta_rewards(torch.tensor([[0.5]]), torch.tensor([[True]])).item() == 0.0  # a lone step earns 0


# --- baselines, VR term, whitening -------------------------------------------------------------------------


def test_group_leave_one_out_mean():
    v = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 5.0])
    g = torch.tensor([7, 7, 7, 3, 3, 9])
    torch.testing.assert_close(group_leave_one_out_mean(v, g), torch.tensor([2.5, 2.0, 1.5, 20.0, 10.0, 0.0]))
    valid = torch.tensor([True, False, True, True, True, True])
    torch.testing.assert_close(group_leave_one_out_mean(v, g, valid), torch.tensor([3.0, 0.0, 1.0, 20.0, 10.0, 0.0]))


def test_group_mean_std():
    mean, std = group_mean_std(torch.tensor([1.0, 3.0, 5.0, 5.0]), torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(mean, torch.tensor([2.0, 2.0, 5.0, 5.0]))
    torch.testing.assert_close(std, torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_rloo_token_baseline_matches_definition():
    returns = torch.tensor([0.5, -0.2, 0.1, 0.9, 0.3])
    tokens = torch.tensor([10, 30, 20, 5, 15])
    groups = torch.tensor([0, 0, 0, 1, 1])
    expected = []
    for i in range(5):
        others = [j for j in range(5) if groups[j] == groups[i] and j != i]
        expected.append(sum(returns[j] for j in others) / sum(tokens[j] for j in others))
    torch.testing.assert_close(rloo_token_baseline(returns, tokens, groups), torch.stack(expected).float())


def test_verifier_term():
    v = torch.tensor([1.0, 0.0, 0.0, 1.0])
    g = torch.tensor([0, 0, 0, 1])
    torch.testing.assert_close(verifier_term(v, g, 2.0, leave_one_out=False), torch.tensor([0.0, -2.0, -2.0, 0.0]))
    torch.testing.assert_close(verifier_term(v, g, 1.0), torch.tensor([1.0, -0.5, -0.5, 1.0]))
    no_ref = torch.tensor([True, True, True, False])
    torch.testing.assert_close(verifier_term(v, g, 1.0, valid=no_ref), torch.tensor([1.0, -0.5, -0.5, 0.0]))


def test_whiten_over_mask_with_weights():
    x = torch.tensor([[1.0, 3.0, 99.0], [2.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    out = whiten(x, m)
    vals = out[m]
    assert vals.mean().abs() < 1e-6 and (vals.std(unbiased=False) - 1).abs() < 1e-5
    assert torch.all(out[~m] == 0)
    w = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])  # token-weighted: row 2 has no tokens
    out_w = whiten(x, m, w)
    assert ((out_w[0, :2] * w[0, :2]).sum()).abs() < 1e-5
    assert torch.all(whiten(x, torch.zeros_like(m)) == 0)


def loop_rloo_token_advantages(rows, tokens, groups, correct, t, c_vr):
    """Spec section 5, written per sample with loops."""
    returns = [ref_softmin(r, t) for r in rows]
    big_r = [g[0] for g in returns]
    big_l = [sum(n) for n in tokens]
    out = []
    for i, r in enumerate(rows):
        others = [j for j in range(len(rows)) if groups[j] == groups[i] and j != i]
        b = sum(big_r[j] for j in others) / sum(big_l[j] for j in others)
        d = [returns[i][k] - (returns[i][k + 1] if k + 1 < len(r) else 0.0) for k in range(len(r))]
        adj = [d[k] - b * tokens[i][k] for k in range(len(r))]
        adj[-1] += c_vr * (correct[i] - sum(correct[j] for j in others) / len(others))
        out.append([sum(adj[k:]) for k in range(len(r))])
    return out


def test_step_advantages_rloo_token_matches_spec_loop():
    rows = [[0.9, -0.4, 0.7], [0.5, 0.6], [0.2, 0.1, -0.3, 0.8], [0.9]]
    tokens = [[12, 7, 20], [30, 4], [5, 5, 6, 9], [40]]
    groups = [0, 0, 1, 1]
    correct = [1.0, 0.0, 0.0, 1.0]
    rewards, mask = ragged(rows)
    ntok, _ = ragged([[float(x) for x in n] for n in tokens])
    adv, target = step_advantages(
        rewards,
        mask,
        torch.tensor(groups),
        ntok,
        form="min_form",
        temperature=0.1,
        baseline="rloo_token",
        correct=torch.tensor(correct, dtype=torch.float64),
        vr_coef=1.0,
    )
    expected = loop_rloo_token_advantages(rows, tokens, groups, correct, 0.1, 1.0)
    for got, exp in zip(unpad(adv, mask), expected):
        assert got == pytest.approx(exp, abs=1e-9)
    # The value target is the process return plus the raw VR term c_vr (v - 1).
    for got, r, v in zip(unpad(target, mask), rows, correct):
        assert got == pytest.approx([g + (v - 1.0) for g in ref_softmin(r, 0.1)], abs=1e-9)


@pytest.mark.parametrize("baseline", ["rloo", "grpo", "none"])
def test_step_advantages_trajectory_baselines(baseline):
    rows = [[0.9, -0.4], [0.5, 0.6], [0.2, 0.1], [0.3, 0.3]]
    rewards, mask = ragged(rows)
    groups = torch.tensor([0, 0, 1, 1])
    adv, target = step_advantages(rewards, mask, groups, form="sum_form", baseline=baseline)
    torch.testing.assert_close(target, sum_form_returns(rewards, mask))
    r1 = target[:, 0]
    if baseline == "none":
        torch.testing.assert_close(adv, target)
    elif baseline == "rloo":
        torch.testing.assert_close(adv[:, 0], torch.stack([r1[0] - r1[1], r1[1] - r1[0], r1[2] - r1[3], r1[3] - r1[2]]))
    else:
        assert adv[:, 0].reshape(2, 2).sum(-1).abs().max() < 1e-9  # zero mean per group
        assert adv[:, 0].abs().tolist() == pytest.approx([1.0] * 4, abs=1e-4)  # two members: +-1 over the std


def test_step_advantages_whitening_and_errors():
    rewards, mask = ragged([[0.9, -0.4], [0.5, 0.6, 0.1]])
    groups = torch.tensor([0, 0])
    adv, _ = step_advantages(rewards, mask, groups, baseline="none", whiten_advantages=True)
    assert adv[mask].mean().abs() < 1e-6
    with pytest.raises(ValueError, match="step_tokens"):
        step_advantages(rewards, mask, groups, baseline="rloo_token")
    with pytest.raises(ValueError, match="correct"):
        step_advantages(rewards, mask, groups, baseline="none", vr_coef=1.0)
    with pytest.raises(ValueError, match="form"):
        step_advantages(rewards, mask, groups, form="max_form", baseline="none")


def test_whiten_nonzero_is_the_reference_whitening():
    """Exact zeros are left out of the count and stay 0; the variance sums over every entry (zeros included) and
    divides by the non-zero count; entries off the mask count for nothing."""
    x = torch.tensor([[1.0, 0.0, 3.0, 9.0], [0.0, 2.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    mean = (1 + 3 + 2) / 3
    var = sum((v - mean) ** 2 for v in (1, 0, 3, 0, 2, 0)) / 3
    expected = torch.tensor([[1 - mean, 0, 3 - mean, 0], [0, 2 - mean, 0, 0]], dtype=torch.float64) / math.sqrt(var)
    torch.testing.assert_close(whiten_nonzero(x, mask), expected)
    assert torch.equal(whiten_nonzero(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)), torch.zeros(2, 3))
