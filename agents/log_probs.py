"""Per-token log-probabilities of given sequences under a causal LM (the loss's and the KL's forward pass).

Two passes give the same numbers (tests check both against each other):

- :func:`token_log_probs` runs whole sequences. Given a tokenizer and no entropy request it goes through
  TorchRL's ``TransformersWrapper`` (``generate=False``, tokens in, log-probs out); the entropy the loss needs is
  not returned by the wrapper, so with ``with_entropy`` it computes the logits itself.
- :func:`response_log_probs` computes each group's shared prompt once: the samples of one prompt sit in
  consecutive rows, the prompt is run once and its KV cache repeated for the group (gradients flow back through
  it), and logits are computed only where a response token is predicted. On the CPU default (~150-token
  prompts, ~80-token responses, 4 samples per prompt) most of a full pass is spent on the prompt.

**No ``[B, T, V]`` tensor is made whole** when ``chunk_tokens`` > 0 (``train.logit_chunk_tokens``): the decoder's
last hidden states are gathered at the positions that predict a token, and the LM head, log-softmax, picked
log-prob and entropy run on ``chunk_tokens`` of them at a time, each chunk under activation checkpointing so
the backward recomputes one chunk's logits instead of keeping all of them. A micro-batch of 4 x 2140 tokens
with Qwen's 152k vocabulary would otherwise hold ~5 GiB per fp32 ``[B, T, V]`` tensor (logits, log-softmax, the
entropy's product); a chunk of 1024 positions holds 0.6 GiB. ``chunk_tokens=0`` runs the model's own forward
over the whole ``[B, T, V]`` (the no-grad whole-sequence pass through TorchRL's ``TransformersWrapper``); both
give the same numbers and gradients (tested).
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from tensordict import TensorDict
from torch.utils.checkpoint import checkpoint

__all__ = ["batch_log_probs", "head_log_probs", "response_log_probs", "sequence_log_probs", "token_log_probs"]

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


def _head_stats(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, with_entropy: bool):
    """Log-probs of ``targets [N]`` and entropies ``[N]`` (zeros unless asked) from hidden states ``[N, H]``."""
    log_softmax = torch.log_softmax(head(hidden).float(), dim=-1)  # [N, V]
    picked = log_softmax.gather(-1, targets[:, None]).squeeze(-1)
    if not with_entropy:
        return picked, torch.zeros_like(picked)
    return picked, -(log_softmax.exp() * log_softmax).sum(-1)


def head_log_probs(
    hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, *, chunk_tokens: int, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_probs, entropy)``, ``[N]`` each, of ``targets [N]`` predicted from ``hidden [N, H]`` by the LM
    ``head``, with at most ``chunk_tokens`` rows of ``[N, V]`` alive at once (entropy zeros unless asked).

    With gradients on, each chunk runs under non-reentrant activation checkpointing: autograd keeps the chunk's
    hidden states only and the backward recomputes its logits (one more head matmul per chunk), instead of
    holding every chunk's ``[chunk, V]`` log-softmax until the backward reaches it."""
    if chunk_tokens <= 0 or hidden.shape[0] <= chunk_tokens:
        return _head_stats(hidden, targets, head, with_entropy)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    parts = []
    for start in range(0, hidden.shape[0], chunk_tokens):
        args = (hidden[start : start + chunk_tokens], targets[start : start + chunk_tokens], head, with_entropy)
        parts.append(checkpoint(_head_stats, *args, use_reentrant=False) if needs_grad else _head_stats(*args))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@contextlib.contextmanager
def _adapters_off(model: torch.nn.Module):
    with torch.no_grad(), model.disable_adapter():
        yield


def _causal_lm(model: torch.nn.Module):
    """The Hugging Face causal LM that ``model`` runs, and the context to run it in: a LoRA policy's base model
    (the adapters are injected into it), with the adapters off for the LoRA KL reference."""
    from agents.lora import AdaptersDisabled, is_lora

    if isinstance(model, AdaptersDisabled):
        return model.model.get_base_model(), _adapters_off(model.model)
    if is_lora(model):
        return model.get_base_model(), contextlib.nullcontext()
    return model, contextlib.nullcontext()


def _is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _scatter(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """``values [N]`` placed at the True entries of ``where [B, T]``, zeros elsewhere (differentiable)."""
    return values.new_zeros(where.shape).masked_scatter(where, values)


def token_log_probs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    with_entropy: bool = False,
    tokenizer=None,
    chunk_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(x_t | x_<t)`` for every position of right-padded sequences.

    Args:
        model: causal LM returning ``logits [B, T, V]``.
        input_ids: ``[B, T]`` token ids (right-padded).
        attention_mask: ``[B, T]`` 1 on real tokens.
        with_entropy: also return the entropy of each position's next-token distribution.
        tokenizer: the model's tokenizer; with it (and without entropy or chunks) the pass runs through
            TorchRL's ``TransformersWrapper``.
        chunk_tokens: predicted positions per LM-head chunk (0: the whole ``[B, T, V]`` at once).

    Returns:
        ``(log_probs, entropy)``, both ``[B, T]`` on the model's device; position 0 (no context) and padding
        hold 0; ``entropy`` is None unless asked for.
    """
    from torchrl.modules.llm.policies import Tokens

    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    if chunk_tokens > 0:
        lm, context = _causal_lm(model)
        predicts = torch.zeros_like(attention_mask, dtype=torch.bool)
        predicts[:, 1:] = attention_mask[:, 1:].bool()  # token t is predicted at position t - 1
        with context:
            if _is_sharded(lm):
                # FSDP2 unshards the embeddings and head in the root's forward, and keeps a root's parameters
                # unsharded after it (for the backward): the head chunks below can then use them. The root's
                # forward computes one position's logits; its last hidden state is the decoder's output.
                out = lm(
                    input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1
                )
                hidden = out.hidden_states[-1]
            else:
                hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            lp, ent = head_log_probs(
                hidden[:, :-1][predicts[:, 1:]],
                input_ids[predicts],
                lm.get_output_embeddings(),
                chunk_tokens=chunk_tokens,
                with_entropy=with_entropy,
            )
        return _scatter(lp, predicts), (_scatter(ent, predicts) if with_entropy else None)
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
    chunk_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(x_t | x_<t)`` for the response tokens of right-padded ``prompt + response`` rows, each shared
    prompt computed once.

    Args:
        model: Hugging Face causal LM (takes ``past_key_values``, ``position_ids`` and ``logits_to_keep``).
        input_ids: ``[B, T]`` token ids, each row its prompt then its response, right-padded.
        attention_mask: ``[B, T]`` 1 on real tokens.
        prompt_length: ``[B]`` prompt tokens of each row. Consecutive rows with the same prompt share its pass.
        with_entropy: also return the entropy of the next-token distribution at each response position.
        chunk_tokens: predicted positions per LM-head chunk (0: each group's ``[g, T, V]`` at once).

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
    lm, context = _causal_lm(model) if chunk_tokens > 0 else (model, contextlib.nullcontext())
    # Chunked: the decoder's hidden states, the head applied by head_log_probs; else the model's own logits.
    run = lm.get_decoder() if chunk_tokens > 0 else lm
    out_of = (lambda o: o.last_hidden_state) if chunk_tokens > 0 else (lambda o: o.logits)
    last_only = {} if chunk_tokens > 0 else {"logits_to_keep": 1}
    with context:
        for start, end in _prompt_groups(input_ids, prompt_length):
            p, g = int(prompt_length[start]), end - start
            stop = int(lengths[start:end].max())
            if stop <= p:
                continue  # no response tokens in this group
            prompt = run(input_ids=input_ids[start : start + 1, :p], use_cache=True, **last_only)
            outputs = out_of(prompt)[:, -1:].expand(g, 1, -1)  # predicts each row's first response token
            if stop - p > 1:
                cache = prompt.past_key_values
                cache.batch_repeat_interleave(g)
                rest = run(
                    input_ids=input_ids[start:end, p : stop - 1],
                    attention_mask=torch.cat(
                        [attention_mask.new_ones(g, p), attention_mask[start:end, p : stop - 1]], dim=-1
                    ),
                    position_ids=torch.arange(p, stop - 1, device=device).expand(g, -1),
                    past_key_values=cache,
                    use_cache=True,
                )
                outputs = torch.cat([outputs, out_of(rest)], dim=1)  # [g, stop - p, H or V]
            mask = attention_mask[start:end, p:stop].bool()
            targets = input_ids[start:end, p:stop]
            if chunk_tokens > 0:
                lp, ent = head_log_probs(
                    outputs[mask], targets[mask], lm.get_output_embeddings(), chunk_tokens=chunk_tokens,
                    with_entropy=with_entropy,
                )  # fmt: skip
                log_probs[start:end, p:stop] = _scatter(lp, mask)
                if entropy is not None:
                    entropy[start:end, p:stop] = _scatter(ent, mask)
                continue
            log_softmax = torch.log_softmax(outputs.float(), dim=-1)  # [g, stop - p, V]
            picked = log_softmax.gather(-1, targets[..., None]).squeeze(-1)
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
    chunk_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) of one token batch by the configured pass: :func:`response_log_probs` when
    ``shared_prompt_pass``, else :func:`token_log_probs` on whole sequences; the LM head in chunks of
    ``chunk_tokens`` predicted positions (0: whole). ``[B, T]`` each."""
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    if shared_prompt_pass:
        return response_log_probs(
            model, ids, mask, tokens["prompt_length"], with_entropy=with_entropy, chunk_tokens=chunk_tokens
        )
    return token_log_probs(model, ids, mask, with_entropy=with_entropy, tokenizer=tokenizer, chunk_tokens=chunk_tokens)


@torch.no_grad()
def batch_log_probs(
    model: torch.nn.Module,
    tokens: TensorDict,
    *,
    micro_batch_size: int,
    shared_prompt_pass: bool = True,
    tokenizer=None,
    chunk_tokens: int = 0,
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
        chunk_tokens: predicted positions per LM-head chunk (0: the whole ``[B, T, V]``).

    Returns:
        ``[B, T]`` log-probs on the CPU, 0 on padding (and on prompt tokens with ``shared_prompt_pass``).
    """
    parts = []
    for start in range(0, tokens.shape[0], micro_batch_size):
        mb = tokens[start : start + micro_batch_size]
        lp, _ = sequence_log_probs(
            model, mb, shared_prompt_pass=shared_prompt_pass, tokenizer=tokenizer, chunk_tokens=chunk_tokens
        )
        parts.append(lp.cpu())
    return torch.cat(parts)
