"""Per-row ragged data in a tensordict: texts and token ids, one ``NonTensorData`` per row of a ``NonTensorStack``.

Token ids (``response_token_ids``, ``step_token_ids``) differ in length from row to row, so they cannot be one
dense tensor without padding to the token budget. Each row holds a 1-D int64 tensor, not a Python list:
tensordict walks a list element by element (a pytree) on every clone, and ``EnvBase.rollout`` and collectors
clone each step several times, which made list-held ids about half of a small model's rollout time.

Entries are built on the tensordict's device: a ``NonTensorData`` without one is copied element by element
when it is put into a tensordict that has a device (about 1 ms per key of 32 rows, every env step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import NonTensorData, NonTensorStack

__all__ = ["log_probs_stack", "text_stack", "token_id_lists", "token_ids_stack"]


def text_stack(texts: Sequence[str], device: torch.device | str | None = None) -> NonTensorStack:
    """Texts of a batch ``[B]`` (one string per row)."""
    return NonTensorStack(*[NonTensorData(t, device=device) for t in texts])


def token_ids_stack(rows: Sequence[Sequence[int]], device: torch.device | str | None = None) -> NonTensorStack:
    """Token ids of a batch ``[B]`` (one sequence of ints per row) as the env and the policy store them."""
    return NonTensorStack(
        *[NonTensorData(torch.as_tensor(list(r), dtype=torch.int64, device=device), device=device) for r in rows]
    )


def log_probs_stack(rows: Sequence[Sequence[float]], device: torch.device | str | None = None) -> NonTensorStack:
    """Per-token log-probabilities of a batch ``[B]`` (one float32 sequence per row, aligned with its token
    ids); read back with :func:`token_id_lists` like the ids."""
    return NonTensorStack(
        *[NonTensorData(torch.as_tensor(list(r), dtype=torch.float32, device=device), device=device) for r in rows]
    )


def token_id_lists(value) -> list:
    """Token ids (or any ragged per-token entry, such as log-probs) read back as nested Python lists, whatever the
    batch shape: a ``[B]`` stack gives ``list[list[int]]``, a ``[B, steps]`` trajectory ``list[list[list[int]]]``.
    Lists pass through."""
    if isinstance(value, (NonTensorStack, NonTensorData)):
        value = value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [v if isinstance(v, (int, float)) else token_id_lists(v) for v in value]
    raise TypeError(f"expected token ids (tensors or lists of ints), got {type(value).__name__}")
