"""The run config's supervised warm-up: built once into the cache, reused, keyed by what it depends on."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from envs.tasks import Problem
from pure_rl.config import load_config
from pure_rl.warmup import warmed_up_model, warmup


def _tiny_cfg(tiny_model_path, *extra: str):
    return load_config(
        "configs/tiny.yaml",
        [f"policy.model={tiny_model_path}", "warmup.steps=2", "warmup.batch_size=4", "warmup.lr=3e-3", *extra],
    )


def test_no_warmup_starts_from_the_configured_model(tiny_model_path):
    cfg = load_config("configs/tiny.yaml", [f"policy.model={tiny_model_path}"])
    assert cfg.warmup.steps == 0
    assert warmed_up_model(cfg) == str(tiny_model_path)


def test_warmup_is_built_once_then_reused(tmp_path, monkeypatch, tiny_model_path):
    monkeypatch.setenv("PURE_RL_CACHE", str(tmp_path))
    cfg = _tiny_cfg(tiny_model_path)
    first = warmed_up_model(cfg)
    assert first.startswith(str(tmp_path / "warmup"))
    record = json.loads((tmp_path / "warmup" / first.split("/")[-1] / "warmup.json").read_text())
    assert len(record["losses"]) == 2 and record["key"]["warmup"] == [2, 4, 3e-3]

    # The weights moved away from the starting model.
    base = load_file(tiny_model_path / "model.safetensors")
    warm = load_file(f"{first}/model.safetensors")
    assert any(not torch.equal(base[k], warm[k]) for k in base)

    # A second call reuses the folder (no training: the stamp is untouched) ...
    stamp = (tmp_path / "warmup" / first.split("/")[-1] / "warmup.json").stat().st_mtime_ns
    assert warmed_up_model(cfg) == first
    assert (tmp_path / "warmup" / first.split("/")[-1] / "warmup.json").stat().st_mtime_ns == stamp
    # ... and a change to a key it depends on builds another.
    assert warmed_up_model(_tiny_cfg(tiny_model_path, "warmup.lr=1e-3")) != first
    assert warmed_up_model(_tiny_cfg(tiny_model_path, "env.difficulty=2")) != first
    # No half-written folders are left behind.
    assert not [p for p in (tmp_path / "warmup").iterdir() if p.name.startswith(".")]


def test_training_starts_from_the_warmed_up_model(tmp_path, monkeypatch, tiny_model_path):
    from pure_rl.plots import read_metrics
    from pure_rl.train import main

    monkeypatch.setenv("PURE_RL_CACHE", str(tmp_path / "cache"))

    def run(name: str) -> tuple[dict, list[dict]]:
        summary = main(
            [
                "--config", "configs/tiny.yaml", "--run-dir", str(tmp_path / name),
                f"policy.model={tiny_model_path}", "warmup.steps=2", "warmup.batch_size=4",
            ]
        )  # fmt: skip
        return summary, read_metrics(tmp_path / name / "logs" / "scalars")

    summary, built = run("first")  # builds the warm-up
    assert summary["start_model"].startswith(str(tmp_path / "cache" / "warmup"))
    assert summary["model"] == str(tiny_model_path)
    # A run that finds the warm-up cached draws the same random numbers: same metrics.
    _, cached = run("second")
    timing = ("rollout_s", "reward_s", "update_s", "sync_s", "tokens_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in cached] == [
        {k: v for k, v in r.items() if k not in timing} for r in built
    ]


class _NoSolutions:
    def __len__(self) -> int:
        return 3

    def problem(self, index: int) -> Problem:
        return Problem(question="What is 1 + 1?", answer="2", id=f"q{index}")


def test_warmup_without_reference_solutions_says_how_to_turn_it_off(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    with pytest.raises(ValueError, match=r"problem q\d has none.*warmup\.steps=0"):
        warmup(model, tokenizer, _NoSolutions(), steps=1, batch_size=2)
