"""Per-batch training metrics, the signs of reward hacking listed in docs/spec.md section 8.

Hacking shows as rising step counts or PRM reward with falling accuracy, or sudden jumps in reward, KL and
loss; these are the numbers to plot against each other.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase

from envs.verifier import last_boxed
from pure_rl.objectives.credit import min_form_returns, value_at_last_step
from pure_rl.token_batch import valid_step_mask

__all__ = [
    "METRIC_NAMES",
    "boundary_probabilities",
    "cuda_peak_gib",
    "rollout_metrics",
    "separator_token_ids",
    "token_metrics",
]

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
    "mixed_group_share",
)


def rollout_metrics(traj: TensorDictBase) -> dict[str, float]:
    """Scalar metrics of one batch of episodes ``[B, K]`` (after the value estimator ran, if it did)."""
    mask = valid_step_mask(traj)
    b = traj.shape[0]
    nxt = traj.get("next")
    prm = nxt.get("prm_reward").reshape(traj.shape).float()
    correct = value_at_last_step(nxt.get("verifier_reward").reshape(traj.shape).float(), mask)
    has_ref = value_at_last_step(nxt.get("has_reference").reshape(traj.shape).float(), mask).bool()
    truncated = value_at_last_step(nxt.get("truncated").reshape(traj.shape).float(), mask)
    steps = mask.sum(-1).float()
    tokens = value_at_last_step(nxt.get("num_tokens").reshape(traj.shape).float(), mask)
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
    receives_vr = nxt.get("receives_vr", None)
    if receives_vr is not None:
        share = value_at_last_step(receives_vr.reshape(traj.shape).float(), mask)
        if (share < 1).any():  # env.vr_share: the episodes whose verifiable reward counted
            out["vr_episode_share"] = share.mean().item()
    if has_ref.any():
        out["accuracy"] = correct[has_ref].mean().item()
        outcomes: dict[int, set] = {}  # each group's answers: {True}, {False} or both
        for g, c, h in zip(groups.tolist(), correct.tolist(), has_ref.tolist()):
            if h:
                outcomes.setdefault(g, set()).add(c > 0.5)
        out["pass_at_n"] = sum(True in o for o in outcomes.values()) / len(outcomes)
        # The only groups a verifiable reward moves: neither all right nor all wrong.
        out["mixed_group_share"] = sum(len(o) == 2 for o in outcomes.values()) / len(outcomes)
        # Does the PRM's judgement (sign of the min-form return) agree with the verifier?
        prm_says_right = min_form_returns(prm, mask)[:, 0] > 0
        out["prm_verifier_agreement"] = (prm_says_right == (correct > 0.5))[has_ref].float().mean().item()
    if "advantage" in traj.keys():
        adv = traj.get("advantage").reshape(traj.shape)
        out["advantage_std"] = adv[mask].std().item() if mask.sum() > 1 else 0.0
        out["value_target_mean"] = traj.get("value_target").reshape(traj.shape)[:, 0].mean().item()
    return out


def token_metrics(traj: TensorDictBase, tokens: TensorDictBase) -> dict[str, float]:
    """Where the advantage goes, token by token (after credit assignment).

    ``advantage_token_mean`` is the mean advantage over the tokens that carry one, as the loss weighs them (each
    sequence's mean, then the batch's): the update's net push on the sampled tokens (negative: it lowers them on
    average, and so raises the unsampled ones, masked boundary tokens included).
    ``advantage_boundary_mean`` is the step advantage at the boundary tokens (separator-ending and EOS), and
    ``boundary_token_share`` the share of response tokens they are. With ``algo.engine_is_correction`` the
    truncated importance weights' mean, min and max over response tokens (``engine_is_weight_*``).
    """
    response = tokens["response_mask"]
    carries = tokens["advantage_mask"]
    boundary = tokens["boundary_mask"]
    adv = tokens["advantage"].float()
    per_seq = (adv * carries).sum(-1) / carries.sum(-1).clamp(min=1)
    step_adv = traj.get("advantage").reshape(traj.shape).float()
    at_boundary = step_adv.gather(-1, tokens["step_index"].clamp(min=0))[boundary]
    engine = {}
    if "is_weight" in tokens.keys() and response.any():
        # algo.engine_is_correction: how far the engine's sampling distribution sits from the trainer's.
        w = tokens["is_weight"][response].float()
        engine = {"engine_is_weight_mean": w.mean().item(), "engine_is_weight_min": w.min().item(),
                  "engine_is_weight_max": w.max().item()}  # fmt: skip
    return {
        **engine,
        "advantage_token_mean": per_seq[carries.any(-1)].mean().item() if carries.any() else 0.0,
        "advantage_boundary_mean": at_boundary.mean().item() if at_boundary.numel() else 0.0,
        "boundary_token_share": boundary.sum().item() / max(1, response.sum().item()),
    }


@torch.no_grad()
def boundary_probabilities(
    model: torch.nn.Module, tokens: TensorDictBase, eos_ids: list[int], separator_ids: list[int], micro_batch: int = 8
) -> dict[str, float]:
    """The policy's probability of ending (EOS) and of ending a step (a separator-ending token) at the response
    positions of a token batch, one extra forward pass: ``p_eos_first`` at the first response token (an empty
    response), ``p_eos_mean`` and ``p_separator_mean`` over all response positions. A policy drifting towards
    empty responses or empty steps shows it here before its samples do."""
    device = next(model.parameters()).device
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    sep = torch.tensor(separator_ids, dtype=torch.long, device=device)
    totals = {"p_eos_first": 0.0, "p_eos_mean": 0.0, "p_separator_mean": 0.0}
    rows, positions = tokens.shape[0], 0.0
    for start in range(0, rows, micro_batch):
        mb = tokens[start : start + micro_batch].to(device)
        logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits[:, :-1].float()
        probs = torch.softmax(logits, dim=-1)  # position t predicts token t + 1
        predicts_response = mb["response_mask"][:, 1:]
        p_eos = probs[..., eos].sum(-1)
        p_sep = probs[..., sep].sum(-1) if sep.numel() else torch.zeros_like(p_eos)
        first = (mb["prompt_length"] - 1).clamp(min=0)[:, None]
        totals["p_eos_first"] += p_eos.gather(-1, first).sum().item()
        totals["p_eos_mean"] += p_eos[predicts_response].sum().item()
        totals["p_separator_mean"] += p_sep[predicts_response].sum().item()
        positions += predicts_response.sum().item()
    return {
        "p_eos_first": totals["p_eos_first"] / max(1, rows),
        "p_eos_mean": totals["p_eos_mean"] / max(1, positions),
        "p_separator_mean": totals["p_separator_mean"] / max(1, positions),
    }


def separator_token_ids(tokenizer, separator: str) -> list[int]:
    """Every vocabulary token whose text ends with ``separator`` (the reference code's separator set)."""
    ids = range(len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    return [i for i, t in zip(ids, texts) if t.endswith(separator)]


def cuda_peak_gib(device: str) -> float | None:
    """The most memory torch held allocated on CUDA ``device`` since the last call, in GiB (then the counter is
    reset, so each phase of an iteration gets its own peak); None on other devices."""
    d = torch.device(device)
    if d.type != "cuda" or not torch.cuda.is_available():
        return None
    peak = torch.cuda.max_memory_allocated(d) / 2**30
    torch.cuda.reset_peak_memory_stats(d)
    return peak
