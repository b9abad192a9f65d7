"""From step trajectories to token tensors: what the token-level PPO loss consumes.

Every token of a step gets its step's advantage, the token that ends it at the separator and EOS included;
with ``mask_separator_tokens`` those two get zero advantage instead (the reference code's choice). Sequences are
right-padded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase

from envs.ragged import token_id_lists
from pure_rl.objectives.credit import valid_steps_from_done, value_at_last_step

__all__ = ["build_token_batch", "step_sums", "token_advantages", "truncated_rows", "valid_step_mask"]


def valid_step_mask(traj: TensorDictBase) -> torch.Tensor:
    """``[B, K]`` True on real steps: those before or at each episode's first ``done``."""
    return valid_steps_from_done(traj.get(("next", "done")).reshape(traj.shape))


def truncated_rows(traj: TensorDictBase) -> torch.Tensor:
    """``[B]`` True where the episode ended because the token or step budget ran out (not by itself)."""
    return value_at_last_step(traj.get(("next", "truncated")).reshape(traj.shape), valid_step_mask(traj))


def build_token_batch(
    traj: TensorDictBase,
    prompt_ids: Callable[[str], list[int]],
    *,
    eos_token_ids: Sequence[int],
    separator_check: Callable[[list[int]], bool],
    mask_separator_tokens: bool = False,
    pad_id: int = 0,
    eos_on_truncation: bool = False,
) -> TensorDict:
    """Padded token tensors ``[B, T]`` for a trajectory batch ``[B, K]``.

    Args:
        traj: a rollout of :class:`~envs.reasoning_env.ReasoningStepEnv` with the policy's ``step_token_ids``.
        prompt_ids: the policy's prompt encoding (chat template included), from the env's ``prompt`` text.
        eos_token_ids: EOS ids (EOS tokens get no advantage when ``mask_separator_tokens``).
        separator_check: whether a step's token ids ended at the separator.
        mask_separator_tokens: zero-advantage the separator-ending token and EOS.
        pad_id: right-padding id.
        eos_on_truncation: a truncated episode's last response token becomes ``eos_token_ids[0]`` (a boundary
            token, as the reference code does); the steps' token counts stay as sampled.

    Returns:
        ``input_ids``, ``attention_mask``, ``response_mask`` (response tokens), ``advantage_mask`` (response
        tokens that carry an advantage), ``boundary_mask`` (the token that ends a step at the separator, and
        EOS), ``step_index`` (the step of each response token, -1 elsewhere),
        ``prompt_length`` ``[B]``; and, when the policy wrote ``step_log_probs``, ``sample_log_prob``: each
        response token's log-probability as generation sampled it (0 on prompt and padding, NaN where unknown:
        a step whose log-probs do not match its tokens, or the EOS that ``eos_on_truncation`` puts in).
    """
    b, k = traj.shape
    valid = valid_step_mask(traj)
    prompts = traj.get("prompt").tolist()
    step_ids = token_id_lists(traj.get("step_token_ids"))
    step_log_probs = traj.get("step_log_probs", None)
    step_log_probs = None if step_log_probs is None else token_id_lists(step_log_probs)
    nan = float("nan")
    eos = set(eos_token_ids)
    truncated = truncated_rows(traj)
    rows = []
    for i in range(b):
        ids = list(prompt_ids(prompts[i][0]))
        p_len = len(ids)
        step_of, carries, boundary = [-1] * p_len, [False] * p_len, [False] * p_len
        sampled = [0.0] * p_len
        for s in range(k):
            if not valid[i, s]:
                break
            toks = step_ids[i][s]
            lp = step_log_probs[i][s] if step_log_probs is not None else []
            sampled.extend(lp if len(lp) == len(toks) else [nan] * len(toks))
            ends_at_boundary = bool(toks) and (toks[-1] in eos or separator_check(toks))
            for j, t in enumerate(toks):
                ids.append(t)
                step_of.append(s)
                ends_here = ends_at_boundary and j == len(toks) - 1
                boundary.append(ends_here)
                carries.append(not (mask_separator_tokens and ends_here))
        if eos_on_truncation and truncated[i] and len(ids) > p_len:
            ids[-1] = eos_token_ids[0]
            boundary[-1] = True
            carries[-1] = not mask_separator_tokens
            sampled[-1] = nan  # not the token that was sampled there
        rows.append((ids, p_len, step_of, carries, boundary, sampled))
    width = max(len(r[0]) for r in rows)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    response = torch.zeros((b, width), dtype=torch.bool)
    carries_t = torch.zeros((b, width), dtype=torch.bool)
    boundary_t = torch.zeros((b, width), dtype=torch.bool)
    step_index = torch.full((b, width), -1, dtype=torch.long)
    prompt_length = torch.zeros(b, dtype=torch.long)
    sample_log_prob = torch.zeros((b, width), dtype=torch.float32)
    for i, (ids, p_len, step_of, carries, boundary, sampled) in enumerate(rows):
        n = len(ids)
        input_ids[i, :n] = torch.tensor(ids)
        attention[i, :n] = 1
        response[i, p_len:n] = True
        carries_t[i, :n] = torch.tensor(carries)
        boundary_t[i, :n] = torch.tensor(boundary)
        step_index[i, :n] = torch.tensor(step_of)
        prompt_length[i] = p_len
        sample_log_prob[i, :n] = torch.tensor(sampled)
    out = TensorDict(
        {
            "input_ids": input_ids,
            "attention_mask": attention,
            "response_mask": response,
            "advantage_mask": carries_t & response,
            "boundary_mask": boundary_t & response,
            "step_index": step_index,
            "prompt_length": prompt_length,
        },
        batch_size=[b],
    )
    if step_log_probs is not None:
        out["sample_log_prob"] = sample_log_prob
    return out


def token_advantages(step_advantage: torch.Tensor, tokens: TensorDictBase) -> torch.Tensor:
    """Broadcast ``[B, K]`` step advantages to ``[B, T]`` tokens (0 where ``advantage_mask`` is False)."""
    idx = tokens["step_index"].clamp(min=0)
    adv = step_advantage.gather(-1, idx)
    return torch.where(tokens["advantage_mask"], adv, torch.zeros_like(adv))


def step_sums(token_values: torch.Tensor, tokens: TensorDictBase, n_steps: int) -> torch.Tensor:
    """Sum ``[B, T]`` per-token values over each step's response tokens: ``[B, K]``."""
    b = token_values.shape[0]
    idx = tokens["step_index"]
    valid = (idx >= 0) & tokens["response_mask"]
    out = torch.zeros(b, n_steps + 1, dtype=token_values.dtype)
    out.scatter_add_(-1, torch.where(valid, idx, n_steps), torch.where(valid, token_values, 0.0))
    return out[:, :n_steps]
