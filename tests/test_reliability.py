"""Nothing lost, nothing mixed: run-directory reuse, locking, checkpoint integrity and safety, resume changes,
failed checkpoint writes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pure_rl import checkpoint
from pure_rl.checkpoint import CheckpointError, load_checkpoint
from pure_rl.plots import read_metrics
from pure_rl.train import main

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")


def train(run_dir: Path, *args: str) -> dict:
    return main(["--config", TINY, "--run-dir", str(run_dir), "train.checkpoint_every=1", *args])


def resume(run_dir: Path, *args: str) -> dict:
    return main(["--resume", str(run_dir), *args])


def iterations(run_dir: Path) -> list[float]:
    return [r["iteration"] for r in read_metrics(run_dir / "logs" / "scalars")]


def test_a_run_directory_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir)
    with pytest.raises(
        SystemExit, match=r"already holds a run \(checkpoint after iteration 2\).*--resume.*--overwrite"
    ):
        train(run_dir)
    assert iterations(run_dir) == [1.0, 2.0], "the refused run wrote nothing"
    (run_dir / "notes.txt").write_text("mine")
    train(run_dir, "--overwrite", "train.iterations=1")
    assert iterations(run_dir) == [1.0], "the overwritten run's logs are gone, not mixed"
    assert (run_dir / "notes.txt").read_text() == "mine", "files that are not the run's are left alone"


def test_overwrite_never_deletes_what_pure_rl_did_not_write(tmp_path):
    # A folder with no pure-rl run but the user's own logs/ is not a run; --overwrite of a real run removes the run's
    # files (its CSV logs included) and leaves the user's, even inside the loggers' folders.
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "logs" / "notes.txt").write_text("mine")
    train(run_dir, "--overwrite", "train.iterations=1")
    assert (run_dir / "logs" / "notes.txt").read_text() == "mine"
    (run_dir / "logs" / "scalars" / "my_own.txt").write_text("also mine")
    train(run_dir, "--overwrite", "train.iterations=2")
    assert iterations(run_dir) == [1.0, 2.0], "the first run's metrics are gone, not mixed"
    assert (run_dir / "logs" / "notes.txt").read_text() == "mine"
    assert (run_dir / "logs" / "scalars" / "my_own.txt").read_text() == "also mine"


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from pure_rl.run_dir import RunLock\nfrom pathlib import Path\nimport time\n"
         f"with RunLock(Path({str(run_dir)!r})):\n    print('locked', flush=True)\n    time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match=rf"{run_dir} is in use by process {holder.pid}"):
            train(run_dir)
        assert not (run_dir / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    train(run_dir, "train.iterations=1")  # the lock went with the process that held it


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_never_loaded_and_the_previous_one_is_used(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(run_dir)
    flip_bytes(run_dir / "checkpoint.pt")
    assert "is damaged" in checkpoint._verified(run_dir / "checkpoint.pt")
    capsys.readouterr()
    resume(run_dir, "train.iterations=3")
    out = capsys.readouterr().out
    assert "is damaged" in out and "resuming from the previous checkpoint" in out and "after iteration 1" in out
    assert iterations(run_dir) == [1.0, 2.0, 3.0]
    assert load_checkpoint(run_dir)["iteration"] == 3


def test_both_checkpoints_damaged_or_empty_stops_and_names_both(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir)
    (run_dir / "checkpoint.pt").write_bytes(b"")
    flip_bytes(run_dir / "checkpoint.prev.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt is damaged.*previous checkpoint is not usable"):
        load_checkpoint(run_dir)
    with pytest.raises(SystemExit, match="nothing was loaded"):
        resume(run_dir, "train.iterations=3")


def _record(path: Path) -> None:
    """A valid checkpoint.json for whatever ``path`` holds, so only the content is judged."""
    import hashlib

    data = path.read_bytes()
    path.with_suffix(".json").write_text(json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "iteration": 0}))


def test_a_file_that_is_not_a_pure_rl_checkpoint_is_a_clear_error(tmp_path):
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "checkpoint.pt")
    _record(tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="is not a pure-rl checkpoint"):
        load_checkpoint(tmp_path)


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_cannot_run_code_on_resume(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(
        {"format": checkpoint.FORMAT, "iteration": 1, "model": _Exploit(str(marker))}, tmp_path / "checkpoint.pt"
    )
    _record(tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="cannot be loaded as tensors and plain data"):
        load_checkpoint(tmp_path)
    assert not marker.exists(), "loading the checkpoint executed code"


def test_resume_refuses_experiment_changes_unless_allowed_and_records_them(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(run_dir)
    with pytest.raises(SystemExit, match=r"would change the experiment \(algo\.estimator: 'min_form' -> 'sum_form'"):
        resume(run_dir, "algo.estimator=sum_form", "train.iterations=3")
    with pytest.raises(SystemExit, match=r"--config would be ignored"):
        main(["--resume", str(run_dir), "--config", TINY])
    with pytest.raises(SystemExit, match=r"--run-dir would be ignored"):
        main(["--resume", str(run_dir), "--run-dir", str(tmp_path / "other")])
    resume(run_dir, "train.iterations=3")  # more iterations is a safe change
    resume(run_dir, "--allow-changes", "algo.kl_coef=0.0", "train.iterations=4")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["algo"]["kl_coef"] == 0.0 and saved["train"]["iterations"] == 4
    history = [json.loads(line) for line in (run_dir / "config_history.jsonl").read_text().splitlines()]
    assert history[0]["overrides"] == {"train.iterations": [2, 3]} and history[0]["from_iteration"] == 2
    assert history[1]["overrides"] == {"algo.kl_coef": [0.001, 0.0], "train.iterations": [3, 4]}
    assert history[1]["from_iteration"] == 3
    assert iterations(run_dir) == [1.0, 2.0, 3.0, 4.0]


def test_a_hand_edited_config_yaml_is_detected_on_resume(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir)
    path = run_dir / "config.yaml"
    path.write_text(path.read_text().replace("estimator: min_form", "estimator: sum_form"))
    with pytest.raises(SystemExit, match=r"algo\.estimator: 'min_form' -> 'sum_form'"):
        resume(run_dir, "train.iterations=3")
    resume(run_dir, "--allow-changes", "train.iterations=3")
    history = [json.loads(line) for line in (run_dir / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["config.yaml edited since the checkpoint"] == {"algo.estimator": ["min_form", "sum_form"]}
    resume(run_dir, "train.iterations=4")  # accepted once, the edit is the run's config: no second refusal


def test_a_checkpoint_write_that_fails_keeps_the_previous_one_and_stops_the_run(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_fsync, calls = os.fsync, []

    def full_disk(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", full_disk)
    with pytest.raises(SystemExit, match=r"could not write the checkpoint of iteration 2 .*No space left on device"):
        train(run_dir, "train.iterations=3")
    monkeypatch.setattr(checkpoint.os, "fsync", real_fsync)
    assert load_checkpoint(run_dir)["iteration"] == 1
    assert not list(run_dir.glob("*.tmp"))
    resume(run_dir)  # the failed run released its lock
    assert load_checkpoint(run_dir)["iteration"] == 3


def test_a_kill_between_the_renames_of_a_save_leaves_the_last_checkpoint_loadable(tmp_path):
    # A save moves checkpoint.pt to checkpoint.prev.pt, then checkpoint.json to checkpoint.prev.json. Killed in
    # between, the last checkpoint is prev.pt while its record is still checkpoint.json: it must still load.
    run_dir = tmp_path / "run"
    train(run_dir)  # checkpoints after iterations 1 (prev) and 2 (current)
    os.replace(run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt")
    assert load_checkpoint(run_dir)["iteration"] == 2
    resume(run_dir, "train.iterations=3")
    assert iterations(run_dir) == [1.0, 2.0, 3.0]


def test_a_multi_process_launch_is_refused_before_it_touches_the_run_folder(tmp_path):
    # torchrun sets WORLD_SIZE in each process; every one of them would run the whole job into one folder.
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "pure_rl.train", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir)],
        cwd=Path(__file__).resolve().parent.parent, env={**os.environ, "WORLD_SIZE": "2", "RANK": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "started as one of 2 processes (WORLD_SIZE=2" in done.stderr, done.stderr[-2000:]
    assert not run_dir.exists()
