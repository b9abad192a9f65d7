"""The GPU check runs on CPU with tiny shapes: every row of the table it prints on a GPU, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_every_row_on_cpu_with_tiny_shapes(tmp_path, tiny_model_path):
    out = tmp_path / "check"
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--tiny", "--device", "cpu", "--out", str(out)]
    done = subprocess.run([*cmd, "--tokenizer", str(tiny_model_path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["row"]: r for r in json.loads((out / "gpu_check.json").read_text())}
    assert set(rows) == {"tiny", "single_gpu", "lora", "torchrun", "trl", "update"}
    assert not [r for r in rows.values() if "error" in r], rows
    for name in ("tiny", "single_gpu", "lora", "torchrun"):
        row = rows[name]
        assert row["iterations"] == 2 and row["rollout_s"] > 0 and row["update_s"] > 0, row
        assert row["plan_gib"] > 0 and row["checkpoint_gib"] > 0
    # The single-GPU rows train the real config's model, PRM and precision with random weights of the given shape.
    assert any("PRM" in line for line in rows["single_gpu"]["plan"])
    assert any("LoRA adapters, rank 16" in line for line in rows["lora"]["plan"])
    assert rows["lora"]["checkpoint_gib"] < rows["single_gpu"]["checkpoint_gib"]  # adapters only
    # The torchrun row is the single-GPU row on the multi-process path: the same work, a sharded checkpoint.
    assert "train.parallel=fsdp" in rows["torchrun"]["overrides"]
    assert rows["torchrun"]["response_tokens"] == rows["single_gpu"]["response_tokens"]
    # Its checkpoint is the shards plus checkpoint.pt (DCP's per-tensor metadata weighs at these tiny shapes).
    assert 0.5 < rows["torchrun"]["checkpoint_gib"] / rows["single_gpu"]["checkpoint_gib"] < 2
    assert {"TRL", "pure-rl"} <= set(rows["trl"])
    phases = rows["update"]["phases"]
    assert len(phases) == 5 and all(t["ref"] > 0 and t["loss"] > 0 and t["step"] > 0 for t in phases.values())
    table = (out / "gpu_check.md").read_text()
    assert "| single_gpu | 2 |" in table and "vs TRL: TRL" in table and "| update: plain" in table
