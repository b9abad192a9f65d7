"""Soak: a tiny run killed with SIGKILL at random moments (rollout, update, checkpoint write) 20 times and
resumed each time ends with the same metrics and weights as an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pure_rl.plots import read_metrics

ROOT = Path(__file__).resolve().parent.parent
KILLS = int(os.environ.get("PURE_RL_SOAK_KILLS", "20"))
ITERATIONS = 60
TIMING = {"rollout_s", "reward_s", "update_s", "sync_s", "tokens_per_s"}


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pure_rl.train", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for_training(proc: subprocess.Popen) -> bool:
    """Read the output until the loop starts ("setup ..."); False if the process ended first."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("setup "):
            return True
    proc.wait()
    assert proc.returncode == 0, "".join(seen[-30:])
    return False


@pytest.mark.slow
def test_twenty_random_sigkills_and_resumes_reproduce_the_uninterrupted_run(tmp_path, warm_tiny_path):
    settings = [f"policy.model={warm_tiny_path}", f"train.iterations={ITERATIONS}", "train.checkpoint_every=1"]
    config = ["--config", str(ROOT / "configs" / "tiny.yaml")]
    reference = tmp_path / "reference"
    proc = start([*config, "--run-dir", str(reference), *settings])
    assert proc.wait(timeout=600) == 0, proc.stdout.read()

    run_dir = tmp_path / "killed"
    rng = random.Random(0)
    kills, finished = 0, False
    args = [*config, "--run-dir", str(run_dir), *settings]
    while kills < KILLS and not finished:
        proc = start(args)
        if wait_for_training(proc):
            time.sleep(rng.uniform(0.0, 1.2))  # a few iterations at most: lands in rollout, update or a save
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            finished = proc.returncode == 0
        else:
            finished = True
        if (run_dir / "checkpoint.pt").exists() or (run_dir / "checkpoint.prev.pt").exists():
            args = ["--resume", str(run_dir)]
        else:
            args = [*config, "--run-dir", str(run_dir), "--overwrite", *settings]  # killed before its first save
    assert kills == KILLS, f"the run finished after {kills} kills: give it more iterations"
    done = subprocess.run(
        [sys.executable, "-m", "pure_rl.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    expected = read_metrics(reference / "logs" / "scalars")
    got = read_metrics(run_dir / "logs" / "scalars")
    assert [r["iteration"] for r in got] == [float(i) for i in range(1, ITERATIONS + 1)]
    for exp, res in zip(expected, got):
        for key in exp:
            if key not in TIMING:
                assert res[key] == pytest.approx(exp[key], rel=1e-4, abs=1e-6), (res["iteration"], key)
    final_a = torch.load(reference / "checkpoint.pt", weights_only=True)["model"]
    final_b = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.allclose(final_a[k], final_b[k], atol=1e-6) for k in final_a)
