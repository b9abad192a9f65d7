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
    assert last.startswith("memory plan: does not fit: cuda:0 needs") and "lora.rank=16" in last
    assert "4 GPUs with FSDP: torchrun --nproc_per_node 4" in last  # the fewest 141 GiB devices (2 need 141.4)
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


def test_the_papers_config_fits_eight_80_gib_devices_under_fsdp_and_not_four():
    cfg = load_config("configs/paper_qwen7b_prm_vr.yaml")
    n = KNOWN["Qwen/Qwen2.5-Math-7B"].parameters()
    one, four, eight = (memory_plan(cfg, 80, world_size=w) for w in (1, 4, 8))
    assert not one.devices_fit and not four.devices_fit and eight.devices_fit
    parts = dict(eight.devices["cuda:0"])
    # Sharded 8 ways: the fp32 masters, gradients and AdamW state; the 16-bit reference too.
    assert parts["gradients, 1/8 per rank"] == pytest.approx(n * 4 / 8, rel=1e-6)
    assert parts["AdamW state (2 moments), 1/8 per rank"] == pytest.approx(2 * n * 4 / 8, rel=1e-6)
    assert parts["KL reference policy, 1/8 per rank"] == pytest.approx(n * 2 / 8, rel=1e-6)
    # FSDP gathers 16-bit layers (MixedPrecisionPolicy) instead of autocast's whole 16-bit copy.
    assert not any(name.startswith("autocast compute copy") for name in parts)
    assert any(name.startswith("FSDP all-gathered (16-bit)") for name in parts)
    assert any("8 GPUs with FSDP" in lever for lever in one.levers)
    # Eight processes on one host each load the policy there first.
    host = next(s for s in eight.storage if s.name == "host RAM")
    assert host.needs == 8 * n * 4


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


def test_a_run_whose_checkpoints_cannot_be_written_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys):
    import pure_rl.memory_plan as plan_module
    from pure_rl.train import train

    cfg = load_config(ROOT / "configs/tiny.yaml")
    need = 3 * plan_module.checkpoint_bytes(cfg)
    monkeypatch.setattr(plan_module, "_free_bytes", lambda path: need - 1)
    with pytest.raises(SystemExit) as stop:
        train(cfg, tmp_path / "run")
    assert stop.value.code == 3
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("memory plan: does not fit: run folder disk") and "3 checkpoints" not in last
    assert not (tmp_path / "run").exists()  # nothing claimed, nothing loaded
    monkeypatch.setattr(plan_module, "_free_bytes", lambda path: need)
    assert memory_plan(cfg, None, tmp_path / "run").fits


def test_the_planned_checkpoint_is_the_one_written(tmp_path):
    # Weights and AdamW's two moments, 12 bytes per fp32 trained parameter; the rest (env, RNG, config) is small.
    from pure_rl.memory_plan import checkpoint_bytes
    from pure_rl.train import train

    for extra in ([], ["lora.rank=16"]):
        cfg = load_config(ROOT / "configs/tiny.yaml", ["train.iterations=1", "policy.model=tiny-256x4", *extra])
        train(cfg, tmp_path / str(len(extra)))
        written = (tmp_path / str(len(extra)) / "checkpoint.pt").stat().st_size
        assert 0.9 < written / checkpoint_bytes(cfg) < 1.1, (extra, written, checkpoint_bytes(cfg))
