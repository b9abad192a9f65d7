"""The memory plan: per-device components, the fits / does-not-fit line and exit code, levers, known models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pure_rl.config import load_config
from pure_rl.memory_plan import GIB, KNOWN, memory_plan

ROOT = Path(__file__).resolve().parent.parent


def dry_run(config: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pure_rl.train", "--config", config, "--dry-run", *args],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip


def test_the_papers_config_does_not_fit_one_h200_and_says_which_levers():
    done = dry_run("configs/paper_qwen7b_prm_vr.yaml", "--device-memory", "141")
    assert done.returncode == 3, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("memory plan: does not fit: cuda:0 needs") and "more GPUs" in last and "lora.rank=16" in last
    for part in ("fp32 masters", "autocast compute copy", "gradients", "AdamW state", "KL reference", "PRM",
                 "vLLM engine", "activations"):  # fmt: skip
        assert part in done.stdout, part


def test_the_tiny_config_fits_and_exits_0():
    done = dry_run("configs/tiny.yaml", "--device-memory", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "memory plan: fits (1 GiB per device)"


def test_components_follow_the_config():
    cfg = load_config("configs/paper_qwen7b_prm_vr.yaml")
    plan = memory_plan(cfg, 141)
    parts = dict(plan.devices["cuda:0"])
    n = KNOWN["Qwen/Qwen2.5-Math-7B"].parameters()
    assert 7.6e9 < n < 7.7e9  # Qwen2.5-7B's published size
    assert parts["gradients"] == n * 4 and parts["AdamW state (2 moments)"] == 2 * n * 4
    # Checkpointing is a lever only when off; without it, activations grow.
    off = memory_plan(load_config("configs/paper_qwen7b_prm_vr.yaml", ["train.gradient_checkpointing=false"]), 141)
    act = lambda p: next(b for name, b in p.devices["cuda:0"] if name.startswith("activations"))  # noqa: E731
    assert act(off) > 3 * act(plan)
    assert any("gradient_checkpointing=true" in lever for lever in off.levers)
    # The PRM on another device is planned there.
    moved = memory_plan(load_config("configs/paper_qwen7b_prm_vr.yaml", ["env.prm_device=cuda:1"]), 141)
    assert [name for name, _ in moved.devices["cuda:1"]] == ["PRM (7.07B, bfloat16)"]
    assert moved.total("cuda:0") < plan.total("cuda:0")


def test_an_unknown_hub_model_is_a_clear_error():
    cfg = load_config("configs/tiny.yaml", ["policy.model=someone/unknown-model"])
    with pytest.raises(ValueError, match="no architecture for 'someone/unknown-model'"):
        memory_plan(cfg, 80)


def test_a_local_folder_is_read_from_its_config(tiny_model_path):
    cfg = load_config("configs/tiny.yaml", [f"policy.model={tiny_model_path}"])
    from transformers import AutoModelForCausalLM

    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_path).parameters())
    weights = memory_plan(cfg).devices["cpu"][0][1]
    assert weights == n * 4 and weights < GIB
