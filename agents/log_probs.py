"""Per-token log-probabilities of given sequences under a causal LM (the loss's and the KL's forward pass).

Given a tokenizer and no entropy request, the pass goes through TorchRL's ``TransformersWrapper``
(``generate=False``, tokens in, log-probs out): the trainer's old-policy and reference passes. The loss's own
pass also needs each position's entropy, which the wrapper does not return, so it computes the logits itself.
A test checks that both give the same log-probabilities.
"""

from __future__ import annotations

import weakref

import torch
from tensordict import TensorDict

__all__ = ["token_log_probs"]

_WRAPPERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _wrapper(model: torch.nn.Module, tokenizer):
    from torchrl.modules.llm import TransformersWrapper

    wrapper = _WRAPPERS.get(model)
    if wrapper is None:
        wrapper = TransformersWrapper(
            model, tokenizer=tokenizer, input_mode="tokens", generate=False, return_log_probs=True, pad_output=True
        )
        _WRAPPERS[model] = wrapper
    return wrapper


def token_log_probs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    with_entropy: bool = False,
    tokenizer=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(x_t | x_<t)`` for every position of right-padded sequences.

    Args:
        model: causal LM returning ``logits [B, T, V]``.
        input_ids: ``[B, T]`` token ids (right-padded).
        attention_mask: ``[B, T]`` 1 on real tokens.
        with_entropy: also return the entropy of each position's next-token distribution.
        tokenizer: the model's tokenizer; with it (and without entropy) the pass runs through TorchRL's
            ``TransformersWrapper``.

    Returns:
        ``(log_probs, entropy)``, both ``[B, T]`` on the model's device; position 0 (no context) and padding
        hold 0; ``entropy`` is None unless asked for.
    """
    from torchrl.modules.llm.policies import Tokens

    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    if tokenizer is not None and not with_entropy:
        b = input_ids.shape[0]
        td = TensorDict(
            {"tokens": Tokens(full=input_ids, padded=True, batch_size=[b]), "attention_mask": attention_mask},
            batch_size=[b],
        )
        log_probs = _wrapper(model, tokenizer)(td)["log_probs"].full
        return torch.nan_to_num(log_probs, nan=0.0) * attention_mask, None
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    log_softmax = torch.log_softmax(logits, dim=-1)
    picked = log_softmax.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    zeros = picked.new_zeros(picked.shape[0], 1)
    log_probs = torch.cat([zeros, picked], dim=-1) * attention_mask
    if not with_entropy:
        return log_probs, None
    ent = -(log_softmax.exp() * log_softmax).sum(-1)
    return log_probs, torch.cat([zeros, ent], dim=-1) * attention_mask
