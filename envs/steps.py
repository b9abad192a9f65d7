"""Step segmentation: where one reasoning step ends, for text and for token sequences.

One rule serves generation and segmentation alike, so stepping an env one step at a time and segmenting a
whole response give the same trajectory: **a step ends with the token that completes the first occurrence
of the separator in the step's text** (merged tokens such as ``".\\n\\n"`` count), or with EOS. Text is never
lost: joining the steps gives the response back exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from envs.verifier import last_boxed

__all__ = [
    "TokenDecoder",
    "completes_step",
    "ends_step",
    "is_answer_step",
    "split_text_steps",
    "split_token_steps",
    "token_texts",
]


class TokenDecoder(Protocol):
    """What segmentation needs of a tokenizer (any HF tokenizer has it)."""

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


def completes_step(step_text: str, separator: str) -> bool:
    """Whether a step whose text so far is ``step_text`` has ended (it contains the separator)."""
    return separator in step_text


def ends_step(token_ids: Sequence[int], tokenizer: TokenDecoder, separator: str) -> bool:
    """Whether generated ``token_ids`` (a step so far) ended at the separator with their last tokens: the rule a
    step-by-step generator stops by and the token batch reads, from the text of the last four tokens (a
    separator such as ``"\\n\\n"`` may be merged into or split across tokens)."""
    return completes_step(tokenizer.decode(list(token_ids[-4:]), skip_special_tokens=False), separator)


def is_answer_step(step_text: str) -> bool:
    """Whether a step writes a final answer (a ``\\boxed{}``): where an env with ``end_at_answer`` ends the
    episode, and where generation for it stops."""
    return last_boxed(step_text) is not None


def split_text_steps(text: str, separator: str = "\n\n") -> list[str]:
    """Split a response into steps, each ending right after a separator (the last one may not).

    ``"".join(split_text_steps(t)) == t`` for every ``t``; an empty text gives ``[]``.
    """
    if not separator:
        raise ValueError("separator must be a non-empty string")
    steps, start = [], 0
    while True:
        idx = text.find(separator, start)
        if idx < 0:
            break
        steps.append(text[start : idx + len(separator)])
        start = idx + len(separator)
    if start < len(text):
        steps.append(text[start:])
    return steps


def token_texts(token_ids: Sequence[int], tokenizer: TokenDecoder) -> list[str]:
    """Each token's own text. Exact for the ASCII separators this module looks for; a token holding part of
    a multi-byte character decodes to a replacement character, which never contains a separator."""
    return [tokenizer.decode([t], skip_special_tokens=False) for t in token_ids]


def split_token_steps(
    token_ids: Sequence[int],
    tokenizer: TokenDecoder,
    separator: str = "\n\n",
    eos_token_ids: Sequence[int] = (),
) -> list[list[int]]:
    """Split a generated token sequence into steps.

    A step ends with the token that completes the first separator occurrence in the step's text, or with an
    EOS token (which stays in its step); tokens after EOS are not part of the response and are dropped.

    Args:
        token_ids: the response tokens (no prompt).
        tokenizer: decodes single tokens.
        separator: step separator text.
        eos_token_ids: ids that end the response.

    Returns:
        Lists of token ids, one per step; their concatenation is ``token_ids`` up to and including the first
        EOS.
    """
    if not separator:
        raise ValueError("separator must be a non-empty string")
    eos = set(eos_token_ids)
    steps: list[list[int]] = []
    current: list[int] = []
    # Only the tail of the step text can hold a separator that the next token completes.
    tail = ""
    keep = len(separator) - 1
    for tok, text in zip(token_ids, token_texts(token_ids, tokenizer)):
        current.append(tok)
        if tok in eos:
            break
        window = tail + text
        if completes_step(window, separator):
            steps.append(current)
            current, tail = [], ""
        else:
            tail = window[-keep:] if keep else ""
    if current:
        steps.append(current)
    return steps
