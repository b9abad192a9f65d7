"""Per-token log-probabilities of given sequences under a causal LM (the loss's and the KL's forward pass).

Two passes give the same numbers (tests check both against each other):

- :func:`token_log_probs` runs whole sequences. Given a tokenizer and no entropy request it goes through
  TorchRL's ``TransformersWrapper`` (``generate=False``, tokens in, log-probs out); the entropy the loss needs is
  not returned by the wrapper, so with ``with_entropy`` it computes the logits itself.
- :func:`response_log_probs` computes each group's shared prompt once: the samples of one prompt sit in
  consecutive rows, the prompt is run once and its KV cache repeated for the group (gradients flow back through
  it), and logits are computed only where a response token is predicted. On the CPU default (~150-token
  prompts, ~80-token responses, 4 samples per prompt) most of a full pass is spent on the prompt.
"""

from __future__ import annotations

import weakref

import torch
from tensordict import TensorDict

__all__ = ["batch_log_probs", "response_log_probs", "sequence_log_probs", "token_log_probs"]

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


def _prompt_groups(input_ids: torch.Tensor, prompt_length: torch.Tensor) -> list[tuple[int, int]]:
    """``[start, end)`` row ranges of consecutive rows with the same prompt (same length, same ids)."""
    groups, start = [], 0
    for i in range(1, input_ids.shape[0] + 1):
        p = int(prompt_length[start])
        if (
            i == input_ids.shape[0]
            or int(prompt_length[i]) != p
            or not torch.equal(input_ids[i, :p], input_ids[start, :p])
        ):
            groups.append((start, i))
            start = i
    return groups


def response_log_probs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: torch.Tensor,
    *,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(x_t | x_<t)`` for the response tokens of right-padded ``prompt + response`` rows, each shared
    prompt computed once.

    Args:
        model: Hugging Face causal LM (takes ``past_key_values``, ``position_ids`` and ``logits_to_keep``).
        input_ids: ``[B, T]`` token ids, each row its prompt then its response, right-padded.
        attention_mask: ``[B, T]`` 1 on real tokens.
        prompt_length: ``[B]`` prompt tokens of each row. Consecutive rows with the same prompt share its pass.
        with_entropy: also return the entropy of the next-token distribution at each response position.

    Returns:
        ``(log_probs, entropy)``, both ``[B, T]`` on the model's device, equal to :func:`token_log_probs` on
        response tokens and 0 on prompt tokens and padding; ``entropy`` is None unless asked for.
    """
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    b, t = input_ids.shape
    log_probs = torch.zeros(b, t, device=device)
    entropy = torch.zeros(b, t, device=device) if with_entropy else None
    lengths = attention_mask.sum(-1)
    for start, end in _prompt_groups(input_ids, prompt_length):
        p, g = int(prompt_length[start]), end - start
        stop = int(lengths[start:end].max())
        if stop <= p:
            continue  # no response tokens in this group
        prompt = model(input_ids=input_ids[start : start + 1, :p], use_cache=True, logits_to_keep=1)
        logits = prompt.logits[:, -1:].expand(g, 1, -1)  # predicts each row's first response token
        if stop - p > 1:
            cache = prompt.past_key_values
            cache.batch_repeat_interleave(g)
            rest = model(
                input_ids=input_ids[start:end, p : stop - 1],
                attention_mask=torch.cat(
                    [attention_mask.new_ones(g, p), attention_mask[start:end, p : stop - 1]], dim=-1
                ),
                position_ids=torch.arange(p, stop - 1, device=device).expand(g, -1),
                past_key_values=cache,
                use_cache=True,
            )
            logits = torch.cat([logits, rest.logits], dim=1)
        log_softmax = torch.log_softmax(logits.float(), dim=-1)  # [g, stop - p, V]
        mask = attention_mask[start:end, p:stop].to(log_softmax.dtype)
        picked = log_softmax.gather(-1, input_ids[start:end, p:stop, None]).squeeze(-1)
        log_probs[start:end, p:stop] = picked * mask
        if entropy is not None:
            entropy[start:end, p:stop] = -(log_softmax.exp() * log_softmax).sum(-1) * mask
    return log_probs, entropy


def sequence_log_probs(
    model: torch.nn.Module,
    tokens: TensorDict,
    *,
    shared_prompt_pass: bool = True,
    with_entropy: bool = False,
    tokenizer=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) of one token batch by the configured pass: :func:`response_log_probs` when
    ``shared_prompt_pass``, else :func:`token_log_probs` on whole sequences. ``[B, T]`` each."""
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    if shared_prompt_pass:
        return response_log_probs(model, ids, mask, tokens["prompt_length"], with_entropy=with_entropy)
    return token_log_probs(model, ids, mask, with_entropy=with_entropy, tokenizer=tokenizer)


@torch.no_grad()
def batch_log_probs(
    model: torch.nn.Module,
    tokens: TensorDict,
    *,
    micro_batch_size: int,
    shared_prompt_pass: bool = True,
    tokenizer=None,
) -> torch.Tensor:
    """No-grad log-probs of a whole token batch, micro-batch by micro-batch (the old-policy and reference passes).

    Args:
        model: the policy or the frozen reference.
        tokens: ``input_ids``, ``attention_mask`` ``[B, T]`` and ``prompt_length`` ``[B]``
            (:func:`pure_rl.token_batch.build_token_batch`).
        micro_batch_size: rows per forward pass.
        shared_prompt_pass: :func:`response_log_probs`; otherwise :func:`token_log_probs` on whole sequences
            (through TorchRL's ``TransformersWrapper`` when a tokenizer is given).
        tokenizer: the model's tokenizer (whole-sequence path).

    Returns:
        ``[B, T]`` log-probs on the CPU, 0 on padding (and on prompt tokens with ``shared_prompt_pass``).
    """
    parts = []
    for start in range(0, tokens.shape[0], micro_batch_size):
        mb = tokens[start : start + micro_batch_size]
        parts.append(sequence_log_probs(model, mb, shared_prompt_pass=shared_prompt_pass, tokenizer=tokenizer)[0].cpu())
    return torch.cat(parts)
