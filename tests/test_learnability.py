"""The RL loop learns what its reward asks for: the update's direction, and a task where learning is certain."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from agents import make_policy
from agents.log_probs import batch_log_probs
from envs import make_env
from pure_rl.build import log_probs_with_entropy
from pure_rl.objectives.loss import StepTokenPPOLoss
from pure_rl.rollout import collect
from pure_rl.token_batch import valid_step_mask
from pure_rl.update import policy_token_batch, ppo_update

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_one_update_raises_what_has_positive_advantage_and_lowers_the_rest(greedy_cfg):
    """The sign of the whole chain (token batch, loss, accumulation, optimiser): after one step, the responses
    given advantage +1 are likelier and those given -1 less likely, per token on average."""
    cfg = greedy_cfg("policy.temperature=1.0", "train.lr=1e-3", "algo.kl_coef=0")
    policy = make_policy(cfg)
    traj = collect(make_env(cfg), policy, "response")
    tokens = policy_token_batch(traj, policy, cfg)
    sign = torch.where(torch.arange(tokens.shape[0]) % 2 == 0, 1.0, -1.0)
    tokens["advantage"] = sign[:, None] * tokens["advantage_mask"]
    model = policy.model
    loss = StepTokenPPOLoss(
        model, kl_coef=0.0, log_prob_fn=lambda m, t, e: log_probs_with_entropy(m, t, e, shared_prompt_pass=True)
    )
    before = batch_log_probs(model, tokens, micro_batch_size=8)
    ppo_update(loss, torch.optim.SGD(model.parameters(), lr=0.01), tokens, traj, cfg)
    after = batch_log_probs(model, tokens, micro_batch_size=8)
    mask = tokens["advantage_mask"].float()
    change = ((after - before) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    assert (change[sign > 0] > 0).all(), change
    assert (change[sign < 0] < 0).all(), change


@pytest.mark.slow
def test_vr_only_learns_the_answer_format(tmp_path):
    """benchmarks/learnability.py --quick: VR-only RL raises held-out greedy accuracy on the answer-format task by the
    benchmark's bar (10 points) from the warmed-up start."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from learnability import main

    [result] = main(["--quick", "--out", str(tmp_path)])
    run = result["runs"][0]
    assert run["greedy_end"] >= run["greedy_start"] + 0.10, run
    assert run["crosses_bar_at"] is not None, run


def test_boundary_tokens_carry_their_step_advantage_unless_masked(greedy_cfg):
    """By default the separator-ending token and EOS are trained like the rest of their step; with
    algo.mask_separator_tokens (the reference's choice) exactly those tokens get no advantage."""
    traj, policy = None, None
    masks = {}
    for masked in (False, True):
        cfg = greedy_cfg(f"algo.mask_separator_tokens={str(masked).lower()}")
        if traj is None:
            policy = make_policy(cfg)
            traj = collect(make_env(cfg), policy, "response")
        masks[masked] = policy_token_batch(traj, policy, cfg)
    plain, masked = masks[False], masks[True]
    boundary = plain["boundary_mask"]
    assert boundary.any() and torch.equal(boundary, masked["boundary_mask"])
    assert torch.equal(plain["advantage_mask"], plain["response_mask"])
    assert torch.equal(masked["advantage_mask"], masked["response_mask"] & ~boundary)
    # One boundary token per step: every step ends at the separator or EOS, except a cut response's last one.
    valid = valid_step_mask(traj)
    steps = valid.sum(-1)
    cut = traj.get(("next", "truncated")).reshape(traj.shape).gather(-1, (steps - 1)[:, None]).squeeze(-1)
    assert torch.equal(boundary.sum(-1)[~cut], steps[~cut])
    assert ((boundary.sum(-1)[cut] - (steps[cut] - 1)) >= 0).all()
