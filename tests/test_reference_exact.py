"""``algo.reference_exact``: the project's credit equals the PURE reference code's, token for token.

The port below is written from ../shared/REFERENCE.md the way the reference computes, one response at a time on
its token sequence: softmin-weighted step scores placed at each step's last token, the RLOO token baseline
charging ``n - 1`` tokens a step, the leave-one-out verifiable reward at the last token, the k1 KL subtracted per
token, an undiscounted reverse cumulative sum zeroed at every step's last token, and the replay buffer's
whitening (exact zeros left out and kept, the variance over the non-zero count). A truncated response's last
token is EOS there, so it is one of those zeroed step ends.

The project side runs what training runs (token batch, estimator, ``add_credit``) on real rollouts of the tiny
model, with random step scores, verifier outcomes and log-probs in float64.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import pure_rl.update as update
from agents import make_policy
from envs import make_env
from envs.ragged import token_id_lists
from pure_rl.config import ConfigError, load_config
from pure_rl.objectives.loss import StepTokenPPOLoss
from pure_rl.rollout import collect
from pure_rl.token_batch import valid_step_mask

KL_COEF = 0.05
VR_COEF = 1.0
TEMPERATURE = 0.1


def reference_advantages(responses: list[dict], group_size: int) -> list[list[float]]:
    """Token advantages of every response, the reference code's way. Each response is a dict of ``scores``
    (one PRM score per step), ``step_lengths`` (tokens per step), ``kl`` (per token) and ``solved`` (0/1);
    responses of one prompt are contiguous groups of ``group_size``."""
    rewards, lengths, outcomes = [], [], []
    for r in responses:
        exp = [math.exp(-s / TEMPERATURE) for s in r["scores"]]
        weights = [e / sum(exp) for e in exp]
        placed = [0.0] * sum(r["step_lengths"])
        end = -1
        for w, s, n in zip(weights, r["scores"], r["step_lengths"]):
            end += n
            placed[end] = w * s  # r~ at the step's last token
        rewards.append(placed)
        lengths.append(len(placed))
        outcomes.append(sum(placed))
    for i, r in enumerate(responses):
        group = range(i - i % group_size, i - i % group_size + group_size)
        others = [j for j in group if j != i]
        per_token = sum(outcomes[j] for j in others) / sum(lengths[j] for j in others)
        end = -1
        for n in r["step_lengths"]:
            end += n
            rewards[i][end] -= per_token * (n - 1)  # the step's tokens without its boundary token
        v = [responses[j]["solved"] - 1 for j in group]
        vr = (r["solved"] - 1) - sum(v[j - group[0]] for j in others) / (group_size - 1)
        rewards[i][-1] += VR_COEF * vr
    advantages = []
    for r, placed in zip(responses, rewards):
        reward = [p - KL_COEF * k for p, k in zip(placed, r["kl"])]
        returns, running = [0.0] * len(reward), 0.0
        for t in reversed(range(len(reward))):
            running += reward[t]
            returns[t] = running
        end = -1
        for n in r["step_lengths"]:
            end += n
            returns[end] = 0.0  # zero advantage at step separators (and EOS)
        advantages.append(returns)
    flat = [a for row in advantages for a in row]
    count = len(flat) - sum(a == 0 for a in flat)
    mean = sum(flat) / count
    rstd = 1 / math.sqrt(max(sum((a - mean) ** 2 for a in flat) / count, 1e-8))
    return [[0.0 if a == 0 else (a - mean) * rstd for a in row] for row in advantages]


@pytest.fixture
def rollout(greedy_cfg):
    """A sampled rollout of the warmed-up tiny model (4 prompts x 4), with some responses cut at 120 tokens."""

    def make(*overrides: str):
        cfg = greedy_cfg(
            "policy.temperature=1.0",
            "env.max_tokens=120",
            "train.prompts_per_iter=4",
            "train.samples_per_prompt=4",
            f"algo.kl_coef={KL_COEF}",
            f"algo.temperature={TEMPERATURE}",
            f"env.vr_coef={VR_COEF}",
            *overrides,
        )
        policy = make_policy(cfg)
        traj = collect(make_env(cfg), policy, "response")
        return cfg, policy, traj

    return make


def randomize(traj, seed: int) -> None:
    """Random step scores in [-1, 1] and random verifier outcomes (float64), in place."""
    g = torch.Generator().manual_seed(seed)
    shape = traj.shape
    traj[("next", "prm_reward")] = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).unsqueeze(-1)
    solved = (torch.rand(shape[0], generator=g) < 0.5).to(torch.float64)
    traj[("next", "verifier_reward")] = solved[:, None, None].expand(*shape, 1).clone()


def project_advantages(cfg, policy, traj, monkeypatch, seed: int) -> tuple[torch.Tensor, dict]:
    """What training computes: token batch, random old/reference log-probs (float64), estimator, add_credit."""
    tokens = update.policy_token_batch(traj, policy, cfg)
    g = torch.Generator().manual_seed(seed + 1)
    old = -torch.rand(tokens["input_ids"].shape, generator=g, dtype=torch.float64)
    ref = old - 0.5 * torch.randn(old.shape, generator=g, dtype=torch.float64)
    passes = iter([old, ref])
    monkeypatch.setattr(update, "batch_log_probs", lambda *a, **k: next(passes))
    loss = StepTokenPPOLoss(policy.model, kl_coef=KL_COEF, log_prob_fn=lambda *a: None)
    estimator = update.make_estimator(loss, cfg)
    update.add_credit(traj, tokens, policy.model, object(), estimator, cfg)
    kl = (old - ref) * tokens["response_mask"]
    return tokens, {"kl": kl}


def responses_of(traj, tokens, kl) -> list[dict]:
    """The port's input, read from the rollout (steps as the env split them) and the per-token KL."""
    valid = valid_step_mask(traj)
    steps = token_id_lists(traj.get("step_token_ids"))
    scores = traj.get(("next", "prm_reward")).reshape(traj.shape)
    solved = traj.get(("next", "verifier_reward")).reshape(traj.shape)[:, 0]
    out = []
    for i in range(traj.shape[0]):
        k = int(valid[i].sum())
        start = int(tokens["prompt_length"][i])
        n_tokens = int(tokens["response_mask"][i].sum())
        out.append(
            {
                "scores": scores[i, :k].tolist(),
                "step_lengths": [len(steps[i][s]) for s in range(k)],
                "kl": kl[i, start : start + n_tokens].tolist(),
                "solved": float(solved[i]),
            }
        )
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_exact_equals_a_port_of_the_reference_end_to_end(rollout, monkeypatch, seed):
    cfg, policy, traj = rollout("algo.reference_exact=true", f"train.seed={seed}")
    randomize(traj, seed)
    tokens, extra = project_advantages(cfg, policy, traj, monkeypatch, seed)
    responses = responses_of(traj, tokens, extra["kl"])
    expected = reference_advantages(responses, cfg.train.samples_per_prompt)

    last = valid_step_mask(traj).sum(-1, keepdim=True) - 1
    truncated = traj.get(("next", "truncated")).reshape(traj.shape).gather(-1, last).squeeze(-1)
    assert truncated.any() and (~truncated).any(), "the batch should hold cut and finished responses"
    assert sum(len(r["scores"]) > 1 for r in responses) >= 4, "the batch should hold multi-step responses"
    eos = policy.eos_token_ids[0]
    worst = 0.0
    for i, want in enumerate(expected):
        start = int(tokens["prompt_length"][i])
        got = tokens["advantage"][i, start : start + len(want)]
        worst = max(worst, (got - torch.tensor(want, dtype=got.dtype)).abs().max().item())
        if truncated[i]:  # the reference's EOS overwrite: the cut response ends with EOS, trained as a boundary
            assert tokens["input_ids"][i, start + len(want) - 1] == eos
    assert worst <= 1e-6, f"max |project - reference| = {worst:.2e}"


def test_the_project_defaults_differ_from_the_reference(rollout, monkeypatch):
    """The port can tell the modes apart: with the project's own choices the advantages differ."""
    cfg, policy, traj = rollout("algo.mask_separator_tokens=true")
    randomize(traj, 0)
    tokens, extra = project_advantages(cfg, policy, traj, monkeypatch, 0)
    expected = reference_advantages(responses_of(traj, tokens, extra["kl"]), cfg.train.samples_per_prompt)
    diffs = [
        (tokens["advantage"][i, int(tokens["prompt_length"][i]) :][: len(w)] - torch.tensor(w)).abs().max().item()
        for i, w in enumerate(expected)
    ]
    assert max(diffs) > 1e-2


def test_charging_n_minus_one_leaves_a_bonus_of_b_per_step(rollout, monkeypatch):
    """REFERENCE.md difference 1 on its own: A_project(step k) = A_reference - b_i (K - k + 1), unwhitened."""
    base = ("algo.whiten=false", "algo.kl_coef=0")
    cfg_n, policy, traj = rollout(*base)
    randomize(traj, 3)
    cfg_ref = copy.deepcopy(cfg_n)
    cfg_ref.algo.charge_boundary_tokens = False
    adv = {}
    for name, cfg in (("project", cfg_n), ("reference", cfg_ref)):
        step = traj.clone()
        loss = StepTokenPPOLoss(policy.model, log_prob_fn=lambda *a: None)
        update.make_estimator(loss, cfg)(step)
        adv[name] = step.get("advantage").reshape(traj.shape)
    valid = valid_step_mask(traj)
    tokens = traj.get("step_tokens").reshape(traj.shape).to(torch.float64) * valid
    g1 = torch.stack([_g1(traj, i) for i in range(traj.shape[0])])
    groups = traj.get("group_id")[:, 0]
    b = torch.stack(
        [
            (g1[(groups == groups[i]) & (torch.arange(len(g1)) != i)].sum())
            / tokens[(groups == groups[i]) & (torch.arange(len(g1)) != i)].sum()
            for i in range(len(g1))
        ]
    )
    steps_left = valid.flip(-1).cumsum(-1).flip(-1).to(torch.float64) * valid  # K - k + 1
    torch.testing.assert_close(adv["project"], (adv["reference"] - b[:, None] * steps_left) * valid)


def _g1(traj, i):
    """The softmin min-form return of response i's first step, from its scores."""
    k = int(valid_step_mask(traj)[i].sum())
    r = traj.get(("next", "prm_reward")).reshape(traj.shape)[i, :k]
    return (torch.softmax(-r / TEMPERATURE, -1) * r).sum()


def test_reference_exact_sets_every_switch_and_refuses_a_contradiction():
    cfg = load_config("configs/tiny.yaml", ["algo.reference_exact=true"])
    assert cfg.algo.mask_separator_tokens and not cfg.algo.charge_boundary_tokens
    assert (cfg.algo.kl_to_go, cfg.algo.whiten_mode, cfg.algo.eos_on_truncation) == ("token", "reference", True)
    with pytest.raises(ConfigError, match=r"algo\.reference_exact=true sets algo\.kl_to_go='token'"):
        load_config("configs/tiny.yaml", ["algo.reference_exact=true", "algo.kl_to_go=step"])
    with pytest.raises(ConfigError, match=r"algo\.whiten_mode"):
        load_config("configs/tiny.yaml", ["algo.whiten_mode=tokens"])  # not one of steps, reference
