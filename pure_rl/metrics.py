"""Per-batch training metrics, the signs of reward hacking listed in docs/spec.md section 8.

Hacking shows as rising step counts or PRM reward with falling accuracy, or sudden jumps in reward, KL and
loss; these are the numbers to plot against each other.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase

from envs.verifier import last_boxed
from pure_rl.objectives.credit import last_step_index, min_form_returns
from pure_rl.token_batch import valid_step_mask

__all__ = ["METRIC_NAMES", "rollout_metrics"]

METRIC_NAMES = (
    "prm_reward_mean",
    "prm_reward_min",
    "reward_return",
    "accuracy",
    "pass_at_n",
    "steps_per_response",
    "response_tokens",
    "truncated_share",
    "no_boxed_share",
    "repeated_step_ratio",
    "prm_verifier_agreement",
)


def _last(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's value at its last valid step."""
    return x.gather(-1, last_step_index(mask)[:, None]).squeeze(-1)


def rollout_metrics(traj: TensorDictBase) -> dict[str, float]:
    """Scalar metrics of one batch of episodes ``[B, K]`` (after the value estimator ran, if it did)."""
    mask = valid_step_mask(traj)
    b = traj.shape[0]
    nxt = traj.get("next")
    prm = nxt.get("prm_reward").reshape(traj.shape).float()
    correct = _last(nxt.get("verifier_reward").reshape(traj.shape).float(), mask)
    has_ref = _last(nxt.get("has_reference").reshape(traj.shape).float(), mask).bool()
    truncated = _last(nxt.get("truncated").reshape(traj.shape).float(), mask)
    steps = mask.sum(-1).float()
    tokens = _last(nxt.get("num_tokens").reshape(traj.shape).float(), mask)
    responses = [list(row)[-1] for row in nxt.get("response").tolist()]
    step_texts = traj.get("step_text").tolist()
    groups = traj.get("group_id")[:, 0]

    repeated, counted = 0, 0
    for i in range(b):
        seen = set()
        for k in range(int(steps[i])):
            text = step_texts[i][k].strip()
            if text:
                repeated += text in seen
                counted += 1
                seen.add(text)

    out = {
        "prm_reward_mean": (prm * mask).sum().item() / max(1, mask.sum().item()),
        "prm_reward_min": torch.where(mask, prm, torch.inf).min(-1).values.mean().item(),
        "reward_return": (nxt.get("reward").reshape(traj.shape) * mask).sum(-1).mean().item(),
        "steps_per_response": steps.mean().item(),
        "response_tokens": tokens.mean().item(),
        "truncated_share": truncated.mean().item(),
        "no_boxed_share": sum(last_boxed(r) is None for r in responses) / b,
        "repeated_step_ratio": repeated / max(1, counted),
    }
    if has_ref.any():
        out["accuracy"] = correct[has_ref].mean().item()
        solved = {}
        for g, c, h in zip(groups.tolist(), correct.tolist(), has_ref.tolist()):
            if h:
                solved[g] = solved.get(g, False) or c > 0.5
        out["pass_at_n"] = sum(solved.values()) / len(solved)
        # Does the PRM's judgement (sign of the min-form return) agree with the verifier?
        prm_says_right = min_form_returns(prm, mask)[:, 0] > 0
        out["prm_verifier_agreement"] = (prm_says_right == (correct > 0.5))[has_ref].float().mean().item()
    if "advantage" in traj.keys():
        adv = traj.get("advantage").reshape(traj.shape)
        out["advantage_std"] = adv[mask].std().item() if mask.sum() > 1 else 0.0
        out["value_target_mean"] = traj.get("value_target").reshape(traj.shape)[:, 0].mean().item()
    return out
