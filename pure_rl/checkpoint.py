"""Checkpoints that resume exactly: policy weights, optimiser, every RNG, data position, iteration.

A checkpoint is written to a temporary file and renamed, so a run killed while saving keeps the previous one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

__all__ = ["CHECKPOINT_NAME", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

CHECKPOINT_NAME = "checkpoint.pt"


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Python, numpy, torch (and the sampling generator's) RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if generator is not None:
        state["generator"] = generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | Path,
    *,
    iteration: int,
    model,
    optimizer,
    env_state: dict,
    rng: dict,
    critic=None,
    extra: dict | None = None,
) -> Path:
    """Write ``run_dir/checkpoint.pt`` atomically; ``iteration`` is the number of finished iterations;
    ``critic`` is the estimator's learned critic, if it has one."""
    path = Path(run_dir) / CHECKPOINT_NAME
    tmp = path.with_suffix(".pt.tmp")
    torch.save(
        {
            "iteration": iteration,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "env": env_state,
            "rng": rng,
            **({"critic": critic.state_dict()} if critic is not None else {}),
            "extra": extra or {},
        },
        tmp,
    )
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: str | Path) -> dict:
    """The checkpoint of ``run_dir``; a clear error when there is none."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    return torch.load(path, weights_only=False)
