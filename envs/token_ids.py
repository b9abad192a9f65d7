"""How ragged token ids live in a tensordict: one 1-D int64 tensor per row of a ``NonTensorStack``.

``response_token_ids`` and ``step_token_ids`` differ in length from row to row, so they cannot be one dense
tensor without padding to the token budget. They are not Python lists either: tensordict walks a list element
by element (a pytree) on every clone, and ``EnvBase.rollout`` clones each step several times, which made
list-held ids about half of a small model's rollout time. A tensor is cloned by reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import NonTensorData, NonTensorStack

__all__ = ["token_id_lists", "token_ids_stack"]


def token_ids_stack(rows: Sequence[Sequence[int]]) -> NonTensorStack:
    """Token ids of a batch ``[B]`` (one sequence of ints per row) as the env and the policy store them."""
    return NonTensorStack(*[NonTensorData(torch.as_tensor(list(r), dtype=torch.int64)) for r in rows])


def token_id_lists(value) -> list:
    """Token ids read back as nested Python lists of ints, whatever the batch shape: a ``[B]`` stack gives
    ``list[list[int]]``, a ``[B, steps]`` trajectory ``list[list[list[int]]]``. Lists pass through."""
    if isinstance(value, (NonTensorStack, NonTensorData)):
        value = value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [v if isinstance(v, int) else token_id_lists(v) for v in value]
    raise TypeError(f"expected token ids (tensors or lists of ints), got {type(value).__name__}")
