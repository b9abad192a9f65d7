"""LoRA adapters through ``peft``: the trained policy is the base model plus low-rank adapters.

- :func:`apply_lora` injects adapters into the policy's own modules (so every engine that runs the base model
  object, the transformers backend included, generates with them) and freezes the base weights.
- The KL reference is the same model with its adapters disabled (:class:`AdaptersDisabled`): no second copy.
- :func:`engine_weights` gives the merged weights under the base model's own names, computed as ``W + B A s``
  without touching ``W`` (so repeated syncs never drift): what the vLLM weight sync pushes and export saves.
- Checkpoints hold the adapters only (:func:`adapter_state`, :func:`load_adapter_state`); the base weights are
  the run's starting model, which the config names.
"""

from __future__ import annotations

import torch

__all__ = ["AdaptersDisabled", "adapter_state", "apply_lora", "engine_weights", "is_lora", "load_adapter_state"]


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


def engine_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights an inference engine needs, by the base model's parameter names: for a LoRA model the merged
    ``W + delta`` of every adapted layer (computed, ``W`` untouched); otherwise the parameters themselves (tied
    weights once, as ``named_parameters`` lists them)."""
    if not is_lora(model):
        return {k: v.detach() for k, v in model.named_parameters()}
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    merged = {}
    with torch.no_grad():
        for module_name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                weight = module.get_base_layer().weight
                delta = sum(module.get_delta_weight(a) for a in module.active_adapters)
                merged[f"{module_name}.weight"] = weight + delta.to(weight.dtype)
        out = {}
        for name, param in base.named_parameters():
            if ".lora_" in name:
                continue
            clean = name.replace(".base_layer.", ".")
            out[clean] = merged.get(clean, param.detach())
    return out


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint saves of a LoRA model: the adapter weights only."""
    return _peft().get_peft_model_state_dict(model)


def load_adapter_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    result = _peft().set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"the checkpoint's adapters do not match this model's: unexpected {unexpected[:4]}")
