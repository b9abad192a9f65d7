"""LoRA adapters through ``peft``: the trained policy is the base model plus low-rank adapters.

- :func:`apply_lora` injects adapters into the policy's own modules (so every engine that runs the base model
  object, the transformers backend included, generates with them) and freezes the base weights.
- The KL reference is the same model with its adapters disabled (:class:`AdaptersDisabled`): no second copy.
- :func:`iter_engine_weights` yields the weights an engine needs one tensor at a time under the base model's own
  names, an adapted layer's merged ``W + B A s`` computed when it is reached, without touching ``W`` (so repeated
  syncs never drift) and without ever holding more than one merged layer: what the vLLM weight sync streams.
- Checkpoints hold the adapters only (:func:`adapter_state`, :func:`load_adapter_state`); the base weights are
  the run's starting model, which the config names.
"""

from __future__ import annotations

import torch

__all__ = [
    "AdaptersDisabled",
    "adapter_state",
    "apply_lora",
    "is_lora",
    "iter_engine_weights",
    "load_adapter_state",
]


def _peft():
    try:
        import peft
    except ImportError as e:
        raise ImportError("lora.rank > 0 needs peft: pip install peft") from e
    return peft


def apply_lora(model: torch.nn.Module, rank: int, alpha: float, dropout: float, target_modules: list[str]):
    """``model`` wrapped as a ``peft.PeftModel`` with LoRA adapters of ``rank`` on ``target_modules``; only the
    adapters require gradients."""
    peft = _peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
    try:
        return peft.get_peft_model(model, config)
    except ValueError as e:  # no module matched target_modules
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"lora.target_modules={list(target_modules)}: {e}; this model's linear layers: {names}") from e


def is_lora(model: torch.nn.Module) -> bool:
    return type(model).__name__.startswith("Peft") and hasattr(model, "disable_adapter")


class AdaptersDisabled(torch.nn.Module):
    """The base model of a LoRA policy, run with its adapters off: the frozen KL reference without a copy."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        with torch.no_grad(), self.model.disable_adapter():
            return self.model(*args, **kwargs)


@torch.no_grad()  # on a generator torch sets the mode around each step, so it never leaks into the caller
def iter_engine_weights(model: torch.nn.Module, dtype: torch.dtype | None = None):
    """``(name, tensor)`` pairs of the weights an inference engine needs, one at a time, by the base model's
    parameter names, cast to ``dtype`` when given: for a LoRA model an adapted layer's merged ``W + delta``
    (computed when the layer is reached, ``W`` untouched); otherwise the parameters themselves (tied weights once,
    as ``named_parameters`` lists them; no copy unless a cast needs one).

    A sharded (FSDP2) model's tensors are gathered one at a time as they are reached (``full_tensor()``, a
    collective: every rank must consume the pairs in the same order, which one model's engine does); the whole
    model is never gathered at once."""

    def full(t: torch.Tensor) -> torch.Tensor:
        return t.full_tensor() if isinstance(t, DTensor) else t

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = full(t)
        return t if dtype is None else t.to(dtype)

    from torch.distributed.tensor import DTensor

    if not is_lora(model):
        for name, param in model.named_parameters():
            yield name, cast(param.detach())
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapted = {f"{n}.weight": m for n, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, param in base.named_parameters():
        if ".lora_" in name:
            continue
        clean = name.replace(".base_layer.", ".")
        layer = adapted.get(clean)
        if layer is None:
            yield clean, cast(param.detach())
            continue
        weight = full(layer.get_base_layer().weight)
        delta = sum(_delta_weight(layer, a, full) for a in layer.active_adapters)
        yield clean, cast(weight + delta.to(weight.dtype))


def _delta_weight(layer, adapter: str, full) -> torch.Tensor:
    """peft's ``get_delta_weight`` of one adapter; for sharded adapters the same ``B A s`` from gathered factors
    (peft's own would multiply DTensors, a collective per op)."""
    from torch.distributed.tensor import DTensor

    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if not isinstance(a, DTensor) and not isinstance(b, DTensor):
        return layer.get_delta_weight(adapter)
    if getattr(layer, "fan_in_fan_out", False) or getattr(layer, "use_dora", {}).get(adapter, False):
        raise NotImplementedError("a sharded LoRA layer with fan_in_fan_out or DoRA cannot be merged for the engine")
    return (full(b) @ full(a)) * layer.scaling[adapter]


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint saves of a LoRA model: the adapter weights only."""
    return _peft().get_peft_model_state_dict(model)


def load_adapter_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    result = _peft().set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"the checkpoint's adapters do not match this model's: unexpected {unexpected[:4]}")
