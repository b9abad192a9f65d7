"""Checkpoints that resume exactly and cannot run code: policy weights, optimiser, every RNG, data position,
iteration, and the config they were trained with.

Guarantees:

- **Tensors and plain data only.** A checkpoint is loaded with ``torch.load(weights_only=True)``, so a crafted
  ``checkpoint.pt`` cannot execute code on ``--resume``; numpy's RNG state is stored as a tensor for that reason.
- **Integrity.** Beside ``checkpoint.pt``, ``checkpoint.json`` holds its SHA-256, iteration and format. A file
  whose digest does not match (flipped bytes, a truncated or empty file) is never loaded: :func:`load_checkpoint`
  says what is wrong and falls back to the previous checkpoint (``checkpoint.prev.pt``, kept at every save), or
  stops when that one is damaged too.
- **Atomic.** A checkpoint is written to a temporary file, synced, then renamed, and the previous one is kept,
  so a run killed while saving, or a write that fails (a full disk), always leaves a loadable checkpoint (a kill
  between the renames that rotate the previous pair included: a file matching either record is accepted).
- **Sharded runs** (``train.parallel``): every rank writes its shards of the model and optimiser with
  ``torch.distributed.checkpoint`` into ``checkpoint.shards.<iteration>/``, then rank 0 writes ``checkpoint.pt``
  (the rest) and a record that holds every shard file's digest; a shard folder no record names is never loaded
  (and is removed at the next save), a damaged one counts as a damaged checkpoint (the previous one is used).
  Unlike ``checkpoint.pt``, DCP's ``.metadata`` file is a pickle (torch's format, no ``weights_only`` mode):
  the digests catch damage, not someone who rewrites the record too; resume sharded runs from folders you trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "checkpoint_record",
    "checkpoint_shards",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_record_config",
    "set_rng_state",
]

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"
FORMAT = "pure-rl-checkpoint-2"
_KEYS = ("iteration", "model", "optimizer", "env", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, not a pure-rl checkpoint, or could not be written."""


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Python, numpy, torch (and the sampling generator's) RNG states, as tensors and plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    # random.setstate wants the nested tuples getstate gave; a weights_only load keeps them, this guards lists.
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def save_checkpoint(
    run_dir: str | Path,
    *,
    iteration: int,
    model_state: dict,
    optimizer,
    env_state: dict,
    rng: dict,
    config: dict | None = None,
    critic=None,
    extra: dict | None = None,
    shards: str | None = None,
) -> Path:
    """Write ``run_dir/checkpoint.pt`` (and its ``checkpoint.json``) atomically, keeping the previous pair as
    ``checkpoint.prev.*``; ``iteration`` is the number of finished iterations, ``model_state`` the policy's
    trained weights (all of them, or a LoRA model's adapters), ``config`` the run config as plain data,
    ``critic`` the estimator's learned critic if it has one. A failed write raises :class:`CheckpointError`
    and leaves the last good checkpoint in place.

    ``shards``: a sharded run's model and optimiser are in that folder of ``run_dir`` (written by every rank with
    ``torch.distributed.checkpoint``: :meth:`pure_rl.parallel.Parallel.save_sharded`); ``model_state`` and
    ``optimizer`` are then None, and the record holds each shard file's digest. Shard folders that neither the new
    nor the previous record names are removed."""
    run_dir = Path(run_dir)
    path, previous = run_dir / CHECKPOINT_NAME, run_dir / PREVIOUS_NAME
    payload = {
        "format": FORMAT,
        "iteration": iteration,
        "model": model_state if model_state is not None else {},
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        **({"shards": shards} if shards else {}),
        "env": env_state,
        "rng": rng,
        "config": config or {},
        **({"critic": critic.state_dict()} if critic is not None else {}),
        "extra": extra or {},
    }
    tmp = path.with_suffix(".pt.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        meta = {
            "format": FORMAT,
            "iteration": iteration,
            "sha256": _sha256(tmp),
            "bytes": tmp.stat().st_size,
            "config": config or {},
            **({"shards": {"folder": shards, "sha256": _folder_digests(run_dir / shards)}} if shards else {}),
        }
        meta_tmp = _meta_path(tmp)
        meta_tmp.write_text(json.dumps(meta))
        # The current pair becomes the previous one (a current file without its record is not worth keeping).
        if path.is_file() and _meta_path(path).is_file():
            os.replace(path, previous)
            os.replace(_meta_path(path), _meta_path(previous))
        os.replace(tmp, path)
        os.replace(meta_tmp, _meta_path(path))
        _remove_unrecorded_shards(run_dir)
    except OSError as e:
        for leftover in (tmp, _meta_path(tmp)):
            leftover.unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write the checkpoint of iteration {iteration} to {path} ({e.strerror or e}); the last good "
            "checkpoint is kept"
        ) from e
    return path


def _folder_digests(folder: Path) -> dict[str, str]:
    return {f.name: _sha256(f) for f in sorted(folder.iterdir()) if f.is_file()}


def _recorded_shards(record: Path) -> str | None:
    try:
        return json.loads(record.read_text())["shards"]["folder"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_unrecorded_shards(run_dir: Path) -> None:
    keep = {_recorded_shards(_meta_path(run_dir / name)) for name in (CHECKPOINT_NAME, PREVIOUS_NAME)}
    for folder in run_dir.glob("checkpoint.shards.*"):
        if folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def _shards_problem(path: Path, records: list[Path]) -> str | None:
    """None if the shard folder a record of ``path`` names is whole (every file's digest as recorded, none
    missing or added), else what is wrong; None too for an unsharded checkpoint."""
    for record in records:
        try:
            shards = json.loads(record.read_text()).get("shards")
        except (OSError, ValueError):
            continue
        if not shards:
            continue
        folder = path.parent / shards["folder"]
        if not folder.is_dir():
            return f"its shard folder {folder} does not exist"
        have = _folder_digests(folder)
        if have != shards["sha256"]:
            bad = sorted(k for k in have.keys() | shards["sha256"].keys() if have.get(k) != shards["sha256"].get(k))
            return f"its shard folder {folder} is damaged or incomplete ({', '.join(bad[:3])} differ from the record)"
    return None


def _sha256(path: Path) -> str:
    """The file's digest, read in chunks (a checkpoint of a large model is never held in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path: Path, other_record: Path | None = None) -> str | None:
    """None if ``path`` matches the digest of its ``.json`` record, or of ``other_record``, else what is wrong.

    A save renames the current pair to the previous one file by file: killed between the two renames, the
    previous data file sits beside the older record, and its own record is still the current one's. The other
    record is how that checkpoint is still recognised."""
    meta_path = _meta_path(path)
    if not path.is_file():
        return f"{path} does not exist"
    records = [m for m in (meta_path, other_record) if m is not None and m.is_file()]
    if not records:
        return f"{path} has no {meta_path.name} beside it (written by an older pure-rl, or the save was cut short)"
    expected = []
    for record in records:
        try:
            expected.append(json.loads(record.read_text())["sha256"])
        except (ValueError, KeyError, TypeError):
            expected.append(None)
    if all(e is None for e in expected):
        return f"{records[0]} is not a checkpoint record"
    digest = _sha256(path)
    if digest in expected:
        problem = _shards_problem(path, [r for r, e in zip(records, expected) if e == digest])
        return None if problem is None else f"{path}: {problem}"
    first = next(e for e in expected if e is not None)
    return f"{path} is damaged: its SHA-256 {digest[:12]}... does not match {first[:12]}... in {records[0].name}"


def _read(path: Path) -> dict:
    try:
        ckpt = torch.load(path, weights_only=True)
    except Exception as e:  # the unpickler's refusal of code, a malformed archive, ...
        raise CheckpointError(f"{path} cannot be loaded as tensors and plain data ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or not all(k in ckpt for k in _KEYS):
        have = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a pure-rl checkpoint (format {FORMAT!r} with {', '.join(_KEYS)}; found {have})"
        )
    return ckpt


def checkpoint_record(run_dir: str | Path) -> dict | None:
    """``checkpoint.json`` of ``run_dir`` (iteration, digest, the config as flat dotted keys) without loading the
    weights; None when there is none."""
    meta = _meta_path(Path(run_dir) / CHECKPOINT_NAME)
    try:
        return json.loads(meta.read_text()) if meta.is_file() else None
    except ValueError:
        return None


def checkpoint_shards(run_dir: str | Path) -> Path | None:
    """The shard folder the current checkpoint of ``run_dir`` names (a run on several processes); None for an
    unsharded checkpoint or none."""
    folder = _recorded_shards(_meta_path(Path(run_dir) / CHECKPOINT_NAME))
    return Path(run_dir) / folder if folder else None


def set_record_config(run_dir: str | Path, config: dict) -> None:
    """Record in ``checkpoint.json`` the config the checkpoint now resumes with (after an accepted change), so
    the change is not taken for a hand edit next time. The digest covers ``checkpoint.pt`` only."""
    meta_path = _meta_path(Path(run_dir) / CHECKPOINT_NAME)
    meta = json.loads(meta_path.read_text())
    meta["config"] = config
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, meta_path)


def load_checkpoint(run_dir: str | Path) -> dict:
    """The last good checkpoint of ``run_dir``: ``checkpoint.pt`` when its digest matches, else (saying why)
    ``checkpoint.prev.pt``; :class:`CheckpointError` when neither is usable."""
    run_dir = Path(run_dir)
    path, previous = run_dir / CHECKPOINT_NAME, run_dir / PREVIOUS_NAME
    if not path.is_file() and not previous.is_file():
        raise CheckpointError(f"no checkpoint to resume from: {path} does not exist")
    problem = _verified(path)
    if problem is None:
        return _read(path)
    fallback = _verified(previous, other_record=_meta_path(path))
    if fallback is not None:
        raise CheckpointError(
            f"{problem}; the previous checkpoint is not usable either ({fallback}). Start a new run (--overwrite), "
            "nothing was loaded"
        )
    ckpt = _read(previous)
    print(f"warning: {problem}; resuming from the previous checkpoint, {previous} (iteration {ckpt['iteration']})")
    return ckpt
