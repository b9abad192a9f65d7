"""Export a trained policy: ``python -m pure_rl.export --run-dir RUN --out DIR [--dtype float32]``.

Writes a Hugging Face model folder (``config.json``, ``model.safetensors``, the tokenizer, and ``export.json``
naming the run and iteration) that ``transformers`` and vLLM load as any model. The weights are the run's last
good checkpoint (a LoRA run's adapters merged into its base model; a run on several processes gathered from its
shards on this one process); the dtype is the run's training dtype (its compute dtype under mixed precision), or
``--dtype`` (``float32``: the fp32 master weights of a mixed-precision run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["export_run"]

DTYPES = ("float32", "bfloat16", "float16")


def training_dtype(cfg) -> str:
    """What the run computed in: ``policy.dtype``, or the mixed-precision dtype."""
    return {"bf16-mixed": "bfloat16", "fp16-mixed": "float16"}.get(cfg.train.precision, cfg.policy.dtype)


def export_run(run_dir: str | Path, out: str | Path, dtype: str | None = None) -> Path:
    """Save the policy of ``run_dir``'s last good checkpoint to ``out`` as an HF model folder; returns ``out``.

    Raises ``FileExistsError`` when ``out`` exists and is not empty (an export never replaces files).
    """
    import torch

    from agents.policy import load_model_and_tokenizer
    from pure_rl.checkpoint import load_checkpoint
    from pure_rl.config import load_config
    from pure_rl.warmup import warmed_up_model

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty: choose a new folder (an export never overwrites)")
    cfg = load_config(run_dir / "config.yaml")
    dtype = dtype or training_dtype(cfg)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    ckpt = load_checkpoint(run_dir)
    # The architecture and tokenizer come from the model the run started from; the weights from the checkpoint.
    model, tokenizer, _ = load_model_and_tokenizer(warmed_up_model(cfg), "float32", "cpu")
    if cfg.lora.rank > 0:
        from agents.lora import apply_lora, load_adapter_state

        lora = cfg.lora
        peft_model = apply_lora(model, lora.rank, lora.alpha, lora.dropout, lora.target_modules)
        if "shards" in ckpt:
            _load_shards(peft_model, run_dir / ckpt["shards"])
        else:
            load_adapter_state(peft_model, ckpt["model"])
        model = peft_model.merge_and_unload()  # adapters merged: a plain model of the base architecture
    elif "shards" in ckpt:
        _load_shards(model, run_dir / ckpt["shards"])
    else:
        model.load_state_dict(ckpt["model"])
    model = model.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "export.json").write_text(
        json.dumps({"run_dir": str(run_dir.resolve()), "iteration": ckpt["iteration"], "dtype": dtype}, indent=2)
    )
    return out


def _load_shards(model, folder: Path) -> None:
    """The trained tensors of a run on several processes (its ``torch.distributed.checkpoint`` shards, which hold
    what trains: every weight, or the LoRA adapters) gathered into ``model`` on this one process."""
    import torch.distributed.checkpoint as dcp

    # DCP loads into the given tensors in place: the parameters themselves (detached views of their storage).
    trained = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    dcp.load({"model": trained}, checkpoint_id=folder, no_dist=True)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m pure_rl.export", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True, help="the run whose last good checkpoint is exported")
    p.add_argument("--out", required=True, help="a new (or empty) folder for the HF model")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default: the run's training dtype")
    args = p.parse_args(argv)
    from pure_rl.checkpoint import CheckpointError
    from pure_rl.config import ConfigError

    try:
        out = export_run(args.run_dir, args.out, args.dtype)
    except (FileExistsError, CheckpointError, ConfigError, ValueError) as e:
        sys.exit(f"export error: {e}")
    print(f"exported {args.run_dir} to {out}: load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return out


if __name__ == "__main__":
    main()
