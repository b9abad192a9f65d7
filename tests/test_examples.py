"""The worked extensions in examples/ train end to end, selected only through ``plugins:`` and names in YAML."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pure_rl.plots import read_metrics

ROOT = Path(__file__).resolve().parent.parent


def train_example(config: str, run_dir: Path, *overrides: str) -> tuple[list[dict], str]:
    # A fresh process from the repository root, as the example's own comment tells a user to run it.
    done = subprocess.run(
        [sys.executable, "-m", "pure_rl.train", "--config", config, "--run-dir", str(run_dir), *overrides],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return read_metrics(run_dir / "logs" / "scalars"), done.stdout


@pytest.mark.slow
def test_sorting_environment_family_trains(tmp_path):
    rows, out = train_example("examples/sorting/sorting.yaml", tmp_path / "sorting", "log.sample_every=1")
    assert [r["iteration"] for r in rows] == [1.0, 2.0, 3.0]
    # The printed samples show each step's PRM score. The sorting rule PRM gives only +1, -1 and 0; arithmetic's
    # rule PRM would give 0.5 to these equation-free steps. So the rewards come from the plug-in.
    scores = re.findall(r"^  \[([+-]\d\.\d\d)\] ", out, flags=re.M)
    assert "Sort these numbers" in out and scores
    assert set(scores) <= {"+1.00", "-1.00", "+0.00"} and {"+1.00", "-1.00"} & set(scores), scores
    assert all(r["grad_norm"] > 0 for r in rows)
    config = (tmp_path / "sorting" / "config.yaml").read_text()
    assert "task: sorting" in config and "prm: sorting_rule" in config and "verifier: sorted_list" in config


@pytest.mark.slow
def test_min_form_critic_estimator_trains_its_critic(tmp_path):
    rows, _ = train_example("examples/min_form_critic/critic.yaml", tmp_path / "critic")
    assert len(rows) == 3
    assert all(r["loss_critic"] > 0 for r in rows), "the critic's value term is in the loss"
    ckpt = tmp_path / "critic" / "checkpoint.pt"
    import torch

    assert "critic" in torch.load(ckpt, weights_only=False), "the checkpoint holds the critic's weights"
