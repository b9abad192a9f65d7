"""Generation backends: what writes the next step (or a whole response) from prompt token ids.

Both backends take token ids and return token ids with a finish reason, so the policy never re-tokenizes
what was sampled:

- :class:`TransformersBackend` (CPU default): a batched decode loop with a KV cache that drops every row as
  soon as it finishes (plain ``generate`` keeps computing finished rows, which with natural stopping is most
  of its work), prefills a prompt shared by several rows once, and stops a row at the end of its step by the
  same rule segmentation uses.
- :class:`~agents.vllm_backend.VLLMBackend`: vLLM with ``stop=[separator]`` and prefix caching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from agents.lora import is_lora
from envs.steps import completes_step, is_answer_step

__all__ = ["Generation", "GenerationBackend", "TransformersBackend", "sample_next"]


@dataclass
class Generation:
    """One generated continuation: its token ids, why it stopped (``"eos"``, ``"stop"`` at the step
    separator, or ``"length"`` at the token limit), and each token's log-probability under the model's own
    next-token distribution (temperature 1, no top-p: what the loss computes), as the engine sampled it; None
    when the engine gives none, NaN for a token it did not sample (an EOS added after the engine's own stop)."""

    token_ids: list[int]
    finish: str
    log_probs: list[float] | None = None


class GenerationBackend(Protocol):
    """What the policy needs of an engine."""

    tokenizer: object
    eos_token_ids: list[int]

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        *,
        stop_at_step: bool,
        stop_at_answer: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """Continuations of ``prompts`` (token ids). A row stops at EOS, at its budget, at the end of its step
        (``stop_at_step``), or at the end of the first step that writes a ``\\boxed{}`` answer
        (``stop_at_answer``: an env with ``end_at_answer`` ends the episode there, so nothing after it is used);
        steps end by the rule of :func:`envs.steps.split_token_steps`. ``seeds`` (one per row; rows of one
        prompt group share it): rows sampling from their own seeded generators, so what a row draws does not
        depend on the batch it is in (how a run's draws stay the same on any number of processes)."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None: ...


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    row_generators: list[tuple[list[int], torch.Generator]] | None = None,
):
    """Next token per row from ``logits [n, vocab]``: greedy at temperature 0, else nucleus sampling, drawn from
    ``generator``, or with ``row_generators`` (``(rows, generator)`` pairs covering every row once) each set of
    rows from its own generator: then a row's draws do not depend on the other rows of the batch."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # always keeps the most likely token
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    if row_generators is None:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    sampled = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    for rows, gen in row_generators:
        index = torch.tensor(rows, device=probs.device)
        sampled[index] = torch.multinomial(probs.index_select(0, index), 1, generator=gen).squeeze(-1)
    return sampled


class TransformersBackend:
    """Batched generation with transformers, dropping finished rows from the batch and its KV cache.

    Args:
        model: a causal LM (``AutoModelForCausalLM``); it is used as is (the trainer's own module, so no
            weight sync is needed).
        tokenizer: its tokenizer.
        separator: step separator text.
        temperature, top_p: sampling (temperature 0 is greedy).
        seed: seeds the sampling generator.
        eos_token_ids: ids that end a response (default: the tokenizer's EOS).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        separator: str = "\n\n",
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int = 0,
        eos_token_ids: Sequence[int] | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.separator = separator
        self.temperature = temperature
        self.top_p = top_p
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.eos_token_ids = list(eos_token_ids) if eos_token_ids is not None else [tokenizer.eos_token_id]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        self._token_text: dict[int, str] = {}

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Nothing to do when generation runs on the trained module itself (or on the base model a LoRA policy's
        adapters were injected into); another module's weights are copied in one tensor at a time, a sharded
        (FSDP2) one's gathered tensor by tensor (``full_tensor()``, a collective every rank runs in the same order),
        so no second whole copy of the model ever exists."""
        base = model.get_base_model() if is_lora(model) else model
        if base is self.model:
            return
        from torch.distributed.tensor import DTensor

        target, source = self.model.state_dict(), base.state_dict()
        if target.keys() != source.keys():
            raise ValueError(
                f"sync_weights: the trained model's tensors ({len(source)}) do not match the generation model's "
                f"({len(target)}); first differing: {sorted(target.keys() ^ source.keys())[:3]}"
            )
        copied = set()  # tied weights (a head that is the embedding) are one tensor under two names: gathered once
        with torch.no_grad():
            for name, value in source.items():
                if target[name].data_ptr() in copied:
                    continue
                copied.add(target[name].data_ptr())
                if isinstance(value, DTensor):
                    value = value.full_tensor()
                target[name].copy_(value)

    def _text(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return text

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        *,
        stop_at_step: bool,
        stop_at_answer: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        n = len(prompts)
        results = [Generation([], "length", []) for _ in range(n)]
        active = [i for i in range(n) if max_new_tokens[i] > 0]
        if not active:
            return results
        # Rows with the same prompt (the samples of one question) share its prefill: each distinct prompt runs
        # once, and its KV cache and next-token logits are repeated for its rows before they sample apart.
        distinct: dict[tuple[int, ...], int] = {}
        source = [distinct.setdefault(tuple(prompts[i]), len(distinct)) for i in active]
        width = max(len(p) for p in distinct)
        input_ids = torch.full((len(distinct), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(distinct), width), dtype=torch.long)
        for row, prompt in enumerate(distinct):  # left padding: every row's next token lands in the last column
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[row, width - len(prompt) :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
        if len(distinct) < len(active):
            index = torch.tensor(source, device=self.device)
            cache.batch_select_indices(index)
            attention, logits = attention.index_select(0, index), logits.index_select(0, index)
        tails = {i: "" for i in active}
        step_texts = {i: "" for i in active}  # the current step's text (for stop_at_answer)
        keep_chars = len(self.separator) - 1
        eos = set(self.eos_token_ids)
        # One generator per seed (per prompt group), its rows drawn together in row order: the same draws
        # whichever other groups share the batch.
        generators = {}
        if seeds is not None and self.temperature > 0:
            generators = {s: torch.Generator(device=self.device).manual_seed(s) for s in {seeds[i] for i in active}}
        while True:
            row_generators = None
            if generators:
                rows_of: dict[int, list[int]] = {}
                for row, i in enumerate(active):
                    rows_of.setdefault(seeds[i], []).append(row)
                row_generators = [(rows, generators[s]) for s, rows in rows_of.items()]
            sampled = sample_next(logits, self.temperature, self.top_p, self.generator, row_generators)
            # The sampled token's log-probability at temperature 1, as the loss's forward computes it: with one
            # optimiser step per batch this is the old policy's, and the trainer needs no second pass for it.
            scores = logits.float()
            log_probs = scores.gather(-1, sampled[:, None]) - scores.logsumexp(-1, keepdim=True)
            tokens, log_probs = sampled.tolist(), log_probs.squeeze(-1).tolist()
            keep = []
            for row, (i, tok) in enumerate(zip(active, tokens)):
                results[i].token_ids.append(tok)
                results[i].log_probs.append(log_probs[row])
                text = self._text(tok)
                window = tails[i] + text
                step_ended = completes_step(window, self.separator)
                if stop_at_answer:
                    step_texts[i] += text
                if tok in eos:
                    results[i].finish = "eos"
                elif step_ended and (stop_at_step or (stop_at_answer and is_answer_step(step_texts[i]))):
                    results[i].finish = "stop"
                elif len(results[i].token_ids) >= max_new_tokens[i]:
                    results[i].finish = "length"
                else:
                    # A step that ended starts the next one afresh, as segmentation does.
                    tails[i] = "" if step_ended or not keep_chars else window[-keep_chars:]
                    step_texts[i] = "" if step_ended else step_texts[i]
                    keep.append(row)
            if not keep:
                return results
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                attention = attention.index_select(0, index)
                active = [active[r] for r in keep]
            next_ids = torch.tensor([[tokens[r]] for r in keep], dtype=torch.long, device=self.device)
            attention = torch.cat([attention, attention.new_ones(len(keep), 1)], dim=-1)
            positions = attention.sum(-1, keepdim=True) - 1
            out = self.model(
                input_ids=next_ids,
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
            cache, logits = out.past_key_values, out.logits[:, -1]
