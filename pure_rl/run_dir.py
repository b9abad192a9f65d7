"""The run directory: one run per folder, one process at a time, and every change to a run's config recorded.

- A new run refuses a folder that holds a run (its ``config.yaml``, checkpoint or logs): resume it with
  ``--resume``, or pass ``--overwrite`` to delete that run's files and start over. Two runs' logs never mix.
- A run holds an exclusive lock on ``<run>/.lock`` while it trains (``flock``; released when the process ends,
  however it ends): a second training or resume of the same folder is refused, naming the first's process.
- A resume reads ``config.yaml``; it must agree with the config the last checkpoint was trained with (a hand
  edit is detected), and dotted overrides may change only what does not alter the experiment (:data:`SAFE_KEYS`:
  more iterations, checkpoint and logging cadence, loggers) unless ``--allow-changes`` is given. Every accepted
  change is written to ``config.yaml`` and appended to ``config_history.jsonl`` with the iteration it starts at.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
from pathlib import Path

from pure_rl.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, checkpoint_record, set_record_config
from pure_rl.config import ConfigError, RunConfig, flat_config, load_config, save_config

__all__ = [
    "SAFE_KEYS",
    "RunDirError",
    "RunLock",
    "claim_new_run",
    "holds_run",
    "record_changes",
    "resume_config",
    "run_files",
]

# Keys a resume may change without --allow-changes: they extend or observe a run, never alter what it learns.
SAFE_KEYS = ("train.iterations", "train.checkpoint_every", "train.eval_every", "log.sample_every", "log.loggers")
# The prm section is read by the PRM tools (python -m pure_rl.prm), never by RL training.
SAFE_PREFIXES = ("log.wandb_", "log.mlflow_", "prm.")
# What a run writes into its folder (``--overwrite`` deletes exactly these; other files are left alone).
RUN_FILES = (
    "config.yaml",
    "config_history.jsonl",
    CHECKPOINT_NAME,
    "checkpoint.json",
    PREVIOUS_NAME,
    "checkpoint.prev.json",
    "summary.json",
    "curves.png",
)
RUN_FOLDERS = ("logs", "tensorboard", "wandb", "mlruns")
# Inside those folders, what the loggers write (anything else there is the user's and is never deleted): TorchRL's
# CSV logger's logs/<kind>/*, TensorBoard's event files, and the wandb and mlflow stores, which pure-rl creates.
LOGGER_FILES = ("logs/scalars/*.csv", "logs/texts/*.txt", "logs/videos/*", "logs/histograms/*",
                "tensorboard/events.out.tfevents.*", "wandb/**/*", "mlruns/**/*")  # fmt: skip


class RunDirError(ConfigError):
    """The run directory holds another run, is in use, or a resume would change the experiment."""


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds (part of) a training run: its config, a checkpoint or its metric logs (a ``logs``
    folder of the user's own is not one)."""
    names = ("config.yaml", CHECKPOINT_NAME, PREVIOUS_NAME)
    return any((run_dir / name).exists() for name in names) or any((run_dir / "logs" / "scalars").glob("*.csv"))


def run_files(run_dir: Path) -> list[Path]:
    """The files a training run wrote into ``run_dir`` (:data:`RUN_FILES` and the loggers' :data:`LOGGER_FILES`)."""
    own = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()]
    for pattern in LOGGER_FILES:
        own += [p for p in run_dir.glob(pattern) if p.is_file() or p.is_symlink()]
    return own


def claim_new_run(run_dir: Path, overwrite: bool = False, writes: tuple[str, ...] = ()) -> None:
    """Make ``run_dir`` ready for a new run: refuse one that holds a run unless ``overwrite`` (then delete that
    run's files only), and one that holds no run but files the new run would write over (``writes``: glob
    patterns, e.g. a model folder's ``config.json`` and ``*.safetensors``): those are someone else's."""
    theirs = sorted({p.name for pattern in writes for p in run_dir.glob(pattern)}) if run_dir.is_dir() else []
    if theirs and not holds_run(run_dir):
        raise RunDirError(
            f"{run_dir} holds files pure-rl did not write ({', '.join(theirs[:4])}) that this run would write over: "
            "choose another folder (pure-rl never replaces what it did not write)"
        )
    if holds_run(run_dir):
        if not overwrite:
            record = checkpoint_record(run_dir)
            done = f" (checkpoint after iteration {record['iteration']})" if record else ""
            raise RunDirError(
                f"run directory {run_dir} already holds a run{done}: continue it with --resume {run_dir}, choose "
                "another --run-dir, or pass --overwrite to delete that run and start over"
            )
        for path in run_files(run_dir):
            path.unlink(missing_ok=True)
        # Folders the loggers made go when nothing else is left in them; a user's file keeps its folder.
        for name in RUN_FOLDERS:
            folders = sorted((p for p in (run_dir / name).glob("**/*") if p.is_dir()), key=lambda p: -len(p.parts))
            for folder in [*folders, run_dir / name]:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
    run_dir.mkdir(parents=True, exist_ok=True)


_HELD: dict[Path, list] = {}  # lock file -> [open file, depth]: re-entrant within one process


class RunLock:
    """An exclusive, non-blocking lock on ``<run>/.lock`` for as long as the run trains (a context manager;
    re-entrant within a process, so the CLI can hold it around config checks and ``train`` inside it).
    ``what`` names the locked thing in the refusal; :meth:`for_file` locks one output file instead of a folder."""

    def __init__(self, run_dir: Path, *, lock_name: str = ".lock", what: str | None = None):
        self.path = (Path(run_dir) / lock_name).resolve()
        self.what = what or f"run directory {self.path.parent}"
        self.file = None

    @classmethod
    def for_file(cls, path: Path) -> RunLock:
        """The lock of one output file (``<folder>/.<name>.lock``): one writer at a time."""
        path = Path(path)
        return cls(path.parent, lock_name=f".{path.name}.lock", what=str(path))

    def __enter__(self) -> RunLock:
        held = _HELD.get(self.path)
        if held is not None:
            held[1] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunDirError(
                f"{self.what} is in use by {holder}; wait for it to finish or stop it (two writers would mix "
                "their work)"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()} (since {datetime.datetime.now().isoformat(timespec='seconds')})")
        self.file.flush()
        _HELD[self.path] = [self.file, 1]
        return self

    def __exit__(self, *exc) -> None:
        held = _HELD[self.path]
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[self.path]
        f = held[0]
        f.seek(0)
        f.truncate()
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _is_safe(key: str) -> bool:
    return key in SAFE_KEYS or key.startswith(SAFE_PREFIXES)


def _diff(old: dict, new: dict) -> dict[str, list]:
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def resume_config(run_dir: Path, overrides: list[str], allow_changes: bool = False) -> tuple[RunConfig, dict]:
    """The config to resume ``run_dir`` with (its ``config.yaml`` and ``overrides``), checked against the config
    its last checkpoint recorded, and the changes it makes (``{source: {key: [old, new]}}``; see
    :func:`record_changes`). Changes outside :data:`SAFE_KEYS` are refused unless ``allow_changes``."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise RunDirError(f"--resume {run_dir}: no config.yaml there (is it a pure_rl run directory?)")
    on_disk = load_config(saved_path)
    cfg = load_config(saved_path, overrides)
    record = checkpoint_record(run_dir)
    changes: dict[str, dict] = {}
    if record and record.get("config"):
        edited = _diff(record["config"], flat_config(on_disk))
        if edited:
            changes["config.yaml edited since the checkpoint"] = edited
    overridden = _diff(flat_config(on_disk), flat_config(cfg))
    if overridden:
        changes["overrides"] = overridden
    unsafe = {k: v for change in changes.values() for k, v in change.items() if not _is_safe(k)}
    if unsafe and not allow_changes:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in unsafe.items())
        raise RunDirError(
            f"--resume {run_dir} would change the experiment ({listed}). Resume without these changes, start a new "
            "run, or pass --allow-changes to apply them (they are recorded in config_history.jsonl)"
        )
    return cfg, changes


def record_changes(run_dir: Path, cfg: RunConfig, changes: dict) -> None:
    """Write the resumed config to ``config.yaml`` and append its changes to ``config_history.jsonl``."""
    if not changes:
        return
    record = checkpoint_record(run_dir)
    entry = {
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "from_iteration": record["iteration"] if record else 0,
        **changes,
    }
    with (run_dir / "config_history.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")
    save_config(cfg, run_dir / "config.yaml")
    if record:
        set_record_config(run_dir, flat_config(cfg))
    for source, change in changes.items():
        print(f"resume: {source}: " + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in change.items()))
