"""Training: tiny runs for each estimator and reward mode, artefacts, metrics, kill-and-resume, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pure_rl.metrics import METRIC_NAMES
from pure_rl.plots import read_metrics
from pure_rl.samples import append_samples, read_samples, truncate_samples
from pure_rl.train import main

ROOT = Path(__file__).resolve().parent.parent
TRAINING_METRICS = (
    "loss",
    "loss_objective",
    "entropy",
    "clip_fraction",
    "kl",
    "grad_norm",
    "rollout_s",
    "reward_s",
    "update_s",
    "sync_s",
    "tokens_per_s",
)


def run(tmp_path, *overrides, name="run"):
    run_dir = tmp_path / name
    summary = main(["--config", str(ROOT / "configs" / "tiny.yaml"), "--run-dir", str(run_dir), *overrides])
    return run_dir, summary


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # min-form softmin, PRM+VR, RLOO token baseline
        ["algo.temperature=0"],  # exact min
        ["algo.estimator=sum_form"],
        ["env.reward_mode=vr"],
        ["env.reward_mode=prm", "algo.baseline=grpo"],
        ["algo.baseline=rloo", "algo.kl_estimator=k3", "train.ppo_epochs=2"],
        ["algo.baseline=none", "algo.kl_coef=0", "policy.rollout_mode=step"],
    ],
    ids=["min_softmin", "min_exact", "sum_form", "vr_only", "prm_grpo", "rloo_k3_epochs", "none_nokl_step"],
)
def test_two_iterations_train_and_write_artefacts(tmp_path, warm_tiny_path, overrides):
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(warm_tiny_path).state_dict()
    run_dir, summary = run(tmp_path, f"policy.model={warm_tiny_path}", *overrides)
    for artefact in ("config.yaml", "checkpoint.pt", "curves.png", "summary.json"):
        assert (run_dir / artefact).is_file(), artefact
    rows = read_metrics(run_dir / "logs" / "scalars")
    assert [r["iteration"] for r in rows] == [1.0, 2.0]
    for key in (*METRIC_NAMES, *TRAINING_METRICS):
        assert key in rows[-1], f"metric {key} missing"
        assert all(torch.isfinite(torch.tensor(r[key])) for r in rows if key in r)
    after = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    changed = sum(not torch.equal(before[k], after[k]) for k in before if k in after)
    had_gradient = any(r["grad_norm"] > 0 for r in rows)
    assert (changed > 0) == had_gradient, "parameters change exactly when there is a gradient"
    if "env.reward_mode=vr" not in overrides:
        # The rule PRM scores the warmed-up model's steps differently (right and wrong equations, filler): a signal.
        assert had_gradient and changed > 0, "the update must change the policy's parameters"
    assert json.loads((run_dir / "summary.json").read_text())["iterations"] == 2
    steps = [r["steps_per_response"] for r in rows]
    assert summary["steps_per_response"]["mean_first_5"] == pytest.approx(sum(steps) / 2)
    assert summary["estimator"] == ("sum_form" if "algo.estimator=sum_form" in overrides else "min_form")


def test_eval_metrics_logged(tmp_path, warm_tiny_path):
    settings = (f"policy.model={warm_tiny_path}", "train.eval_every=1", "train.eval_prompts=3")
    rows = read_metrics(run(tmp_path, *settings, name="plain")[0] / "logs" / "scalars")
    assert [r["iteration"] for r in rows] == [1.0, 2.0]
    run_dir, summary = run(tmp_path, *settings, "train.eval_at_start=true")
    rows = read_metrics(run_dir / "logs" / "scalars")
    assert [r["iteration"] for r in rows] == [0.0, 1.0, 2.0]  # a held-out baseline before the first update
    assert summary["eval_accuracy"]["first"] == rows[0]["eval_accuracy"] and summary["seconds_per_iteration"]
    assert all("eval_accuracy" in r and "eval_steps_per_response" in r for r in rows)
    assert "loss" not in rows[0] and "eval_sampled_accuracy" not in rows[0]


def test_sampled_evaluation_is_logged_and_leaves_training_as_it_was(tmp_path, warm_tiny_path):
    # The sampled evaluation draws from the policy's sampler; it must hand it back as it found it, or evaluating
    # would change what the run trains on.
    model, every = f"policy.model={warm_tiny_path}", "train.eval_every=1 train.eval_at_start=true".split()
    plain_dir, _ = run(tmp_path, model, *every, "train.eval_prompts=3", name="plain")
    sampled_dir, summary = run(tmp_path, model, *every, "train.eval_prompts=3", "train.eval_samples=2", name="sampled")
    plain, sampled = (read_metrics(d / "logs" / "scalars") for d in (plain_dir, sampled_dir))
    assert all("eval_sampled_accuracy" in r and "eval_sampled_pass_at_n" in r for r in sampled)
    assert summary["eval_sampled_accuracy"]["first"] == sampled[0]["eval_sampled_accuracy"]
    for a, b in zip(plain[1:], sampled[1:]):
        for key in ("reward_return", "response_tokens", "loss", "grad_norm", "eval_accuracy"):
            assert a[key] == b[key], (a["iteration"], key)


def test_shared_prompt_pass_trains_like_whole_sequence_passes(tmp_path, warm_tiny_path):
    """Iteration 1 has the same rollout either way, so its update statistics must agree; the default (shared) and
    the whole-sequence path (old-policy and reference passes through TorchRL's wrapper) are both exercised."""
    model = f"policy.model={warm_tiny_path}"
    shared_dir, _ = run(tmp_path, model, "train.iterations=1", name="shared")
    whole_dir, _ = run(tmp_path, model, "train.iterations=1", "train.shared_prompt_pass=false", name="whole")
    shared, whole = (read_metrics(d / "logs" / "scalars")[0] for d in (shared_dir, whole_dir))
    assert shared["reward_return"] == whole["reward_return"]
    assert shared["grad_norm"] > 0
    for key in ("loss", "loss_objective", "entropy", "kl", "grad_norm"):
        assert shared[key] == pytest.approx(whole[key], rel=1e-3, abs=1e-5), key


def test_config_errors_stop_before_any_model_loads(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"algo\.temprature; did you mean algo\.temperature"):
        run(tmp_path, "algo.temprature=0.1")
    with pytest.raises(SystemExit, match=r"train\.samples_per_prompt=1"):
        run(tmp_path, "train.samples_per_prompt=1")
    assert not (tmp_path / "run").exists()


def test_print_config_and_dry_run_of_the_paper_config(capsys):
    main(["--config", str(ROOT / "configs" / "paper_qwen7b_prm_vr.yaml"), "--dry-run"])
    assert "Qwen/Qwen2.5-Math-7B (vllm)" in capsys.readouterr().out
    main(["--config", str(ROOT / "configs" / "tiny.yaml"), "--print-config", "algo.temperature=0.3"])
    out = capsys.readouterr().out
    assert "temperature: 0.3" in out and "estimator: min_form" in out


def _train_process(run_dir: Path, model: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "pure_rl.train",
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--run-dir",
        str(run_dir),
        f"policy.model={model}",
        "train.iterations=5",
        "train.checkpoint_every=1",
        *extra,
    ]
    return subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for_checkpoint(run_dir: Path, iteration: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ckpt = run_dir / "checkpoint.pt"
        if ckpt.is_file():
            try:
                if torch.load(ckpt, weights_only=False)["iteration"] >= iteration:
                    return
            except Exception:  # being replaced right now
                pass
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


def _rounded(obj):
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return round(obj, 4) if isinstance(obj, float) else obj


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path, warm_tiny_path):
    reference_dir = tmp_path / "uninterrupted"
    proc = _train_process(reference_dir, warm_tiny_path, "policy.temperature=1.0", "log.sample_every=2")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    killed_dir = tmp_path / "killed"
    proc = _train_process(killed_dir, warm_tiny_path, "policy.temperature=1.0", "log.sample_every=2")
    _wait_for_checkpoint(killed_dir, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = torch.load(killed_dir / "checkpoint.pt", weights_only=False)["iteration"]
    assert done_before < 5, "the run must have been killed before it finished"
    resumed = subprocess.run(
        [sys.executable, "-m", "pure_rl.train", "--resume", str(killed_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed {killed_dir} after iteration {done_before}" in resumed.stdout

    expected = read_metrics(reference_dir / "logs" / "scalars")
    got = read_metrics(killed_dir / "logs" / "scalars")
    assert [r["iteration"] for r in got] == [1.0, 2.0, 3.0, 4.0, 5.0]
    timing = {"rollout_s", "reward_s", "update_s", "sync_s", "tokens_per_s"}
    for exp, res in zip(expected, got):
        for key in exp:
            if key not in timing:
                assert res[key] == pytest.approx(exp[key], rel=1e-4, abs=1e-6), (res["iteration"], key)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (reference_dir, killed_dir)]
    for summary in summaries:
        summary.pop("run_dir")
        summary.pop("seconds_per_iteration")
    assert _rounded(summaries[0]) == _rounded(summaries[1])
    assert summaries[1]["iterations"] == 5
    # Every response of iterations 1, 2 and 4 is kept, once, as the uninterrupted run wrote it.
    samples = [read_samples(d / "samples.jsonl") for d in (reference_dir, killed_dir)]
    batch = len([r for r in samples[0] if r["iteration"] == 1])
    assert batch > 1 and [r["iteration"] for r in samples[0]] == [1] * batch + [2] * batch + [4] * batch
    assert [(r["iteration"], r["question"], r["steps"], r["correct"]) for r in samples[1]] == [
        (r["iteration"], r["question"], r["steps"], r["correct"]) for r in samples[0]
    ]
    assert all(len(r["prm"]) == len(r["steps"]) >= 1 for r in samples[0])
    final_a = torch.load(reference_dir / "checkpoint.pt", weights_only=False)["model"]
    final_b = torch.load(killed_dir / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.allclose(final_a[k], final_b[k], atol=1e-6) for k in final_a)


def test_samples_of_iterations_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    path = tmp_path / "samples.jsonl"
    append_samples(path, [{"iteration": i, "steps": ["a"], "prm": [0.5], "correct": True} for i in (1, 2, 3)])
    truncate_samples(path, 2)
    assert [r["iteration"] for r in read_samples(path)] == [1, 2]
    truncate_samples(tmp_path / "none.jsonl", 2)  # a run that never sampled has no file, and gets none
    assert not (tmp_path / "none.jsonl").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, warm_tiny_path, sig):
    run_dir = tmp_path / "interrupted"
    proc = _train_process(run_dir, warm_tiny_path, "train.iterations=50", "train.checkpoint_every=100")
    deadline = time.time() + 120
    while not (run_dir / "logs" / "scalars" / "loss.csv").is_file():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "resume with: python -m pure_rl.train --resume" in out
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert 1 <= ckpt["iteration"] < 50
    assert (run_dir / "summary.json").is_file()
