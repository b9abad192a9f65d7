"""Per-token log-probabilities of given sequences under a causal LM (the loss's and the KL's forward pass)."""

from __future__ import annotations

import torch

__all__ = ["token_log_probs"]


def token_log_probs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(x_t | x_<t)`` for every position of right-padded sequences.

    Args:
        model: causal LM returning ``logits [B, T, V]``.
        input_ids: ``[B, T]`` token ids (right-padded).
        attention_mask: ``[B, T]`` 1 on real tokens.
        with_entropy: also return the entropy of each position's next-token distribution.

    Returns:
        ``(log_probs, entropy)``, both ``[B, T]``; position 0 (no context) and padding hold 0.
    """
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    log_softmax = torch.log_softmax(logits, dim=-1)
    picked = log_softmax.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    zeros = picked.new_zeros(picked.shape[0], 1)
    log_probs = torch.cat([zeros, picked], dim=-1) * attention_mask
    entropy = None
    if with_entropy:
        ent = -(log_softmax.exp() * log_softmax).sum(-1)
        entropy = torch.cat([zeros, ent], dim=-1) * attention_mask
    return log_probs, entropy
