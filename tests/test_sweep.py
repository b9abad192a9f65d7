"""Sweeps: spec checks, the comparison table's definitions, and a reduced end-to-end sweep."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pure_rl.config import ConfigError, flat_config, load_config
from pure_rl.experiments.records import weights_digest
from pure_rl.experiments.sweep import comparison_table, load_spec, run_overrides, run_state, runs_table
from pure_rl.plots import smooth

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ROOT / "configs" / "sweeps"


def run_series(acc, steps, tokens=None):
    n = len(acc)
    return {
        "iteration": np.arange(1, n + 1, dtype=float),
        "accuracy": np.asarray(acc, dtype=float),
        "steps_per_response": np.asarray(steps, dtype=float),
        "response_tokens": np.asarray(tokens if tokens is not None else [50.0] * n),
        "eval_accuracy": np.full(n, np.nan),
        **{k: np.ones(n) for k in ("rollout_s", "update_s", "sync_s")},
    }


def test_smooth_is_a_trailing_mean_that_skips_nan():
    x = np.array([1.0, 3.0, np.nan, 5.0])
    np.testing.assert_allclose(smooth(x, 2), [1.0, 2.0, 3.0, 5.0])


def test_table_finds_the_hack_onset_and_the_iteration_reaching_the_reference():
    n = 40
    hacked_steps = [3.0] * 20 + [6.0] * 20  # jumps by 3 steps at iteration 21 and stays
    stable_steps = [3.0] * 20 + [3.5] * 20
    series = {
        "sum": {0: run_series(np.linspace(0.5, 0.1, n), hacked_steps)},
        "min": {0: run_series(np.linspace(0.2, 0.6, n), stable_steps)},
        "ref": {0: run_series([0.4] * n, stable_steps)},
    }
    table = comparison_table(series, reference="ref", window=1)
    assert table["sum"]["hack_onset"] == 21
    assert table["min"]["hack_onset"] is None
    # min's accuracy (window 1) first reaches 0.4 at 0.2 + 0.4 * (i - 1) / 39 >= 0.4 -> i = 20.5 -> 21
    assert table["min"]["reaches_reference_at"] == 21
    assert table["sum"]["reaches_reference_at"] == 1  # starts above the reference's final accuracy
    assert table["sum"]["steps_start"]["mean"] == 3.0 and table["sum"]["steps_end"]["mean"] == 6.0
    assert abs(table["sum"]["final_accuracy"]["mean"] - 0.1) < 1e-9
    assert table["sum"]["train_minutes"]["mean"] == pytest.approx(3 * n / 60)


def test_the_runs_table_shows_every_seed_at_every_evaluation():
    def run(evals: dict[int, float], steps: float, prm_min: float, kl: float) -> dict:
        r = run_series([0.3] * 20, [steps] * 20)
        for i, a in evals.items():
            r["eval_accuracy"][i - 1] = a
        return {**r, "prm_reward_min": np.full(20, prm_min), "kl": np.linspace(0.0, kl, 20)}

    series = {
        "min": {1: run({10: 0.1, 20: 0.0}, 5.0, -0.5, 1.0), 0: run({10: 0.2, 20: 0.05}, 4.0, -0.6, 0.9)},
        "vr": {0: run({10: 0.25}, 3.0, 0.0, 0.02)},  # its run stopped before the evaluation at 20
    }
    lines = runs_table(series, window=2, without_prm={"vr"}).splitlines()
    assert lines[0] == "| method | seed | 10 | 20 | steps | PRM min step | KL at end |"
    assert lines[2:5] == [
        "| min | 0 | 0.200 | 0.050 | 4.0 → 4.0 | -0.60 → -0.60 | 0.88 |",  # seeds in order
        "| min | 1 | 0.100 | 0.000 | 5.0 → 5.0 | -0.50 → -0.50 | 0.97 |",  # KL: mean of the last 2 of 0..1
        "| vr | 0 | 0.250 | — | 3.0 → 3.0 | — | 0.02 |",  # no PRM scores its steps
    ]


def test_the_figure_shows_held_out_accuracy_at_its_evaluations_unsmoothed_and_the_rest_smoothed(tmp_path):
    from PIL import Image

    from pure_rl.experiments.sweep import panel_curves, plot_sweep

    seeds = {}
    for seed, evals in ((0, {10: 0.2, 20: 0.0}), (1, {10: 0.4, 20: 0.1})):
        seeds[seed] = {**run_series([0.0] * 10 + [1.0] * 10, [3.0] * 20), "prm_reward_mean": np.zeros(20)}
        for i, a in evals.items():
            seeds[seed]["eval_accuracy"][i - 1] = a
    x, curves = panel_curves(seeds, "eval_accuracy", window=5)
    assert x.tolist() == [10, 20] and curves.tolist() == [[0.2, 0.0], [0.4, 0.1]]  # the points, as measured
    x, curves = panel_curves(seeds, "accuracy", window=5)
    assert len(x) == 20 and curves[0, 11] == pytest.approx(0.4)  # a 5-iteration average across the step
    png = plot_sweep({"m": seeds}, tmp_path / "with.png", window=5)
    for r in seeds.values():
        r["eval_accuracy"][:] = np.nan  # a sweep that never evaluates gets no empty panel
    plot_sweep({"m": seeds}, tmp_path / "without.png", window=5)
    assert Image.open(png).width > Image.open(tmp_path / "without.png").width


def test_an_evaluation_before_the_first_update_leaves_the_table_finite():
    # train.eval_at_start logs an iteration-0 row holding the eval metrics only.
    run = {k: np.concatenate([[np.nan], v]) for k, v in run_series([0.3] * 20, [3.0] * 20).items()}
    run["iteration"][0], run["eval_accuracy"][0] = 0.0, 0.25
    table = comparison_table({"m": {0: run}}, reference=None, window=10)["m"]
    assert table["response_tokens_start"]["mean"] == 50.0 and table["response_tokens_end"]["mean"] == 50.0
    assert table["steps_start"]["mean"] == 3.0 and table["final_accuracy"]["mean"] == pytest.approx(0.3)


def test_the_samples_report_shows_the_start_middle_and_end_of_each_methods_first_seed(tmp_path):
    from pure_rl.experiments.sweep import samples_report
    from pure_rl.samples import append_samples

    def response(it, k, correct):
        return {"iteration": it, "question": "q", "steps": [f"s{it}.{k}"] * (k + 1), "prm": [0.5] * (k + 1),
                "correct": correct}  # fmt: skip

    runs = []
    for method, seed in (("a", 0), ("a", 1), ("b", 3)):
        run_dir = tmp_path / method / f"seed{seed}"
        run_dir.mkdir(parents=True)
        if method == "a":
            for it in (1, 50, 100, 150):
                append_samples(run_dir / "samples.jsonl", [response(it, k, k == 0) for k in range(4)])
        runs.append((method, seed, run_dir))
    report = samples_report(runs)
    assert "## a (seed 0)" in report and "## a (seed 1)" not in report and "## b (seed 3)" in report
    shown = [line.split(":")[0] for line in report.splitlines() if line.startswith("iteration ")]
    assert shown == ["iteration 1", "iteration 100", "iteration 150"]
    assert "1/4 correct, 2.5 steps, mean PRM step score +0.50" in report
    assert "'s150.1'" in report and "'s150.2'" not in report  # the first two responses, step by step
    assert "no samples logged" in report.split("## b")[1]


def test_a_temporary_rise_in_steps_is_not_a_hack():
    steps = [3.0] * 10 + [6.0] * 10 + [3.0] * 10
    table = comparison_table({"m": {0: run_series([0.3] * 30, steps)}}, reference=None, window=1)
    assert table["m"]["hack_onset"] is None


def test_spec_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nconfig: configs/tiny.yaml\nmethods: {a: {}}\nseed: [0]\n")
    with pytest.raises(ConfigError, match="unknown keys \\['seed'\\]"):
        load_spec(bad)
    bad.write_text("name: x\nconfig: configs/tiny.yaml\nmethods: {a: {}}\nreference: b\n")
    with pytest.raises(ConfigError, match="reference 'b'"):
        load_spec(bad)


# Every sweep file shipped (the folder also holds the run configs they name, which have no methods).
SWEEP_FILES = sorted(p for p in SWEEPS.glob("*.yaml") if "methods" in (yaml.safe_load(p.read_text()) or {}))


def test_the_shipped_sweeps_are_all_checked_below():
    assert {p.stem for p in SWEEP_FILES} >= {"small", "real", "aggregation", "learned_prm", "learned_prm_real"}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_shipped_sweeps_resolve_to_valid_run_configs(path, tmp_path):
    # Every run a sweep would launch, each seed, and its PRM recipe: a typo in one method fails here, not hours
    # into the sweep.
    spec = load_spec(path)
    if spec.prm is not None:
        load_config(ROOT / spec.prm["config"])
    prm_dir = tmp_path / "prm" / "model" if spec.prm is not None else None
    for method in spec.methods:
        for seed in spec.method_seeds.get(method, spec.seeds):
            cfg = load_config(ROOT / spec.config, run_overrides(spec, method, seed, None, prm_dir))
            assert cfg.log.name == f"{spec.name}_{method}" and cfg.train.seed == seed
        if spec.prm is not None and cfg.env.prm == "hf":
            assert cfg.env.prm_model == str(prm_dir)  # the PRM the sweep builds, never a hand-made one


def test_a_method_may_have_its_own_seeds(tmp_path):
    spec = load_spec(SWEEPS / "learned_prm.yaml")
    assert spec.method_seeds["min_prm_vr10"] == [0, 1, 2, 3, 4] and spec.seeds == [0, 1, 2]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nconfig: configs/tiny.yaml\nmethods: {a: {}}\nmethod_seeds: {b: [1]}\n")
    with pytest.raises(ConfigError, match=r"method_seeds names \['b'\]"):
        load_spec(bad)


def test_a_run_folder_of_another_config_is_refused(tmp_path):
    from pure_rl.config import save_config

    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    save_config(cfg, tmp_path / "config.yaml")
    assert run_state(tmp_path, flat_config(cfg), cfg.train.iterations) == "new"
    other = load_config(ROOT / "configs" / "tiny.yaml", ["train.lr=0.5"])
    with pytest.raises(ConfigError, match=r"train\.lr"):
        run_state(tmp_path, flat_config(other), other.train.iterations)


@pytest.mark.slow
def test_small_sweep_runs_end_to_end_at_reduced_size(tmp_path):
    """The machinery only: warm-up, every method x 2 seeds, results, figure, table; no claim on who wins."""
    out = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "pure_rl.experiments.sweep", str(SWEEPS / "small.yaml"), "--out", str(out),
        "--iterations", "3", "--seeds", "0", "1", "--warmup-steps", "3", "--jobs", "2",
        "--set", "train.prompts_per_iter=2", "train.eval_every=3", "train.eval_prompts=4", "env.max_tokens=32",
    ]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=900)
    spec = load_spec(SWEEPS / "small.yaml")
    assert (out / "warmup" / "model" / "config.json").is_file()
    assert (out / "sweep.png").stat().st_size > 10_000
    record = json.loads((out / "sweep.json").read_text())
    assert set(record["table"]) == set(spec.methods)
    assert len(record["run_wall_seconds"]) == len(spec.methods) * 2
    assert record["invocations"][0]["runs_run"] == len(spec.methods) * 2
    for method in spec.methods:
        for seed in (0, 1):
            result = json.loads((out / "results" / f"{method}_seed{seed}.json").read_text())
            assert result["iteration"] == [1.0, 2.0, 3.0]
            assert all(np.isfinite(result["steps_per_response"]))
            assert result["summary"]["iterations"] == 3
    table = (out / "table.md").read_text()
    assert all(f"| {m} |" in table for m in spec.methods)
    samples = (out / "samples.md").read_text()
    assert all(f"## {m} (seed 0)" in samples for m in spec.methods) and "iteration 1: " in samples
    # Running it again finds every run finished: nothing is re-run, the report is rebuilt.
    again = subprocess.run(cmd, cwd=ROOT, check=True, timeout=300, capture_output=True, text=True)
    assert "0 to run" in again.stdout


def test_one_lucky_early_iteration_does_not_reach_the_reference():
    series = {
        "lucky": {0: run_series([0.9] + [0.1] * 39, [3.0] * 40)},
        "ref": {0: run_series([0.4] * 40, [3.0] * 40)},
    }
    assert comparison_table(series, reference="ref", window=5)["lucky"]["reaches_reference_at"] is None
    assert comparison_table(series, reference="ref", window=5)["ref"]["reaches_reference_at"] == 5


def test_run_plot_of_a_long_run_overlays_the_trailing_mean(tmp_path, monkeypatch):
    import pure_rl.plots as plots

    calls = []
    monkeypatch.setattr(plots, "smooth", lambda values, window: calls.append(window) or smooth(values, window))
    scalars = tmp_path / "scalars"
    scalars.mkdir()
    (scalars / "accuracy.csv").write_text("".join(f"{i},{(i % 3) / 2}\n" for i in range(1, 13)))
    out = plots.plot_run(scalars, tmp_path / "curves.png", window=5)
    assert out.is_file() and out.stat().st_size > 0
    assert calls == [5]  # 12 points > 2 x 5: the mean is drawn
    (scalars / "accuracy.csv").write_text("".join(f"{i},{(i % 3) / 2}\n" for i in range(1, 9)))
    plots.plot_run(scalars, tmp_path / "short.png", window=5)
    assert calls == [5]  # 8 points: raw curve only


@pytest.mark.slow
def test_a_sweep_builds_its_learned_prm_from_its_starting_policy_then_trains_against_it(tmp_path):
    """The one-command study: warm-up, Monte-Carlo labels from the warmed-up policy, the trained PRM, its best-of-N
    and hackability measurements, then the runs against that PRM; a second call re-runs nothing."""
    spec_file = tmp_path / "prm_sweep.yaml"
    spec_file.write_text(
        "name: prm_stage\nconfig: configs/tiny.yaml\n"
        "warmup: {hidden_size: 32, layers: 1, steps: 3, batch_size: 4, lr: 3.0e-3, seed: 0}\n"
        "prm: {config: configs/prm/tiny.yaml, best_of: 2, problems: 3}\n"
        "overrides: {env.prm: hf, env.prm_layout: pure_text, train.iterations: 2, train.eval_every: 0}\n"
        "methods: {min_prm_vr: {env.reward_mode: prm+vr}}\n"
        f"record: {tmp_path / 'record'}\n"
    )
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "pure_rl.experiments.sweep", str(spec_file), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    prm = out / "prm"
    meta = json.loads((prm / "labels.jsonl.meta.json").read_text())
    assert meta["key"]["model"] == str((out / "warmup" / "model").resolve())  # labelled by the sweep's own policy
    trained = json.loads((prm / "model" / "prm_train.json").read_text())
    assert trained["steps"] == 12 and "step_auc" in trained["heldout_after"]  # nan where one class only
    best_of = json.loads((prm / "best_of_n" / "best_of_n.json").read_text())
    assert best_of["prm_dtype"] == "float32" and best_of["table"]  # written by the evaluate command the stage ran
    probed = json.loads((prm / "hackability.json").read_text())
    assert probed["prm_dtype"] == "float32" and {"honest_correct", "filler", "empty"} <= set(probed["probes"])
    # What the stage measured is recorded beside the runs, under the PRM's fingerprint.
    (stage_record,) = (tmp_path / "record").glob("prm_*.json")
    recorded = json.loads(stage_record.read_text())
    assert stage_record.name == f"prm_{weights_digest(prm / 'model')}.json" and recorded["hackability"] == probed
    assert recorded["train"] == trained and recorded["best_of_n"]["table"] == best_of["table"]
    run_cfg = load_config(out / "min_prm_vr" / "seed0" / "config.yaml")
    assert run_cfg.env.prm == "hf" and run_cfg.env.prm_model == str((prm / "model").resolve())
    assert json.loads((out / "results" / "min_prm_vr_seed0.json").read_text())["summary"]["iterations"] == 2
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "prm:" not in again.stdout and "0 to run" in again.stdout  # every stage and run was complete
    # A measurement of the PRM in another dtype than the runs score with is measured again, the earlier kept.
    (prm / "hackability.json").write_text(json.dumps({**probed, "prm_dtype": "bfloat16"}))
    shutil.rmtree(out / "min_prm_vr" / "seed0")
    (tmp_path / "record" / "min_prm_vr_seed0.json").unlink()  # a run still to do: the sweep visits its PRM
    third = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "measured the PRM in dtype bfloat16, the runs score in float32: measuring again" in third.stdout
    assert json.loads((prm / "hackability_bfloat16_dtype.json").read_text())["prm_dtype"] == "bfloat16"
    assert json.loads((prm / "hackability.json").read_text())["prm_dtype"] == "float32"
    assert (prm / "best_of_n" / "best_of_n.json").is_file() and "best-of" not in third.stdout  # that one was current


def test_a_sweep_refuses_a_prm_built_with_another_recipe(tmp_path):
    from pure_rl.config import save_config
    from pure_rl.experiments.sweep import SweepSpec, build_prm, prm_model_dir

    spec = SweepSpec(name="x", config="configs/tiny.yaml", methods={"a": {}}, prm={"config": "configs/prm/tiny.yaml"})
    model = prm_model_dir(tmp_path)
    model.mkdir(parents=True)
    save_config(load_config(ROOT / "configs" / "prm" / "tiny.yaml", ["prm.lr=0.5"]), model / "config.yaml")
    with pytest.raises(ConfigError, match=r"another recipe \(prm\.lr: 0\.5 \(there\) vs 0\.001"):
        build_prm(spec, tmp_path, None, threads=1)


@pytest.mark.parametrize(
    ("files", "flag"), [((), None), (("config.yaml",), "--overwrite"), (("config.yaml", "checkpoint.pt"), "--resume")]
)
def test_an_interrupted_prm_training_resumes_from_its_checkpoint_or_starts_over_without_one(
    tmp_path, monkeypatch, files, flag
):
    """Killed before its first checkpoint, the training left a folder the trainer would refuse: it starts over."""
    from pure_rl.config import save_config
    from pure_rl.experiments import sweep

    spec = sweep.SweepSpec(
        name="x", config="configs/tiny.yaml", methods={"a": {}}, prm={"config": "configs/prm/tiny.yaml"}
    )
    model = sweep.prm_model_dir(tmp_path)
    model.mkdir(parents=True)
    for name in files:
        if name == "config.yaml":
            save_config(load_config(ROOT / "configs" / "prm" / "tiny.yaml"), model / name)
        else:
            (model / name).write_bytes(b"")
    launched = []
    monkeypatch.setattr(sweep, "launch_command", lambda args, log, threads: launched.append(args))
    sweep.build_prm(spec, tmp_path, None, threads=1)
    (train,) = [args for args in launched if args[1:3] == ["pure_rl.prm", "train"]]
    assert [a for a in train if a in ("--resume", "--overwrite")] == ([flag] if flag else [])


@pytest.mark.parametrize(
    ("best_of_dtype", "probe_dtype", "run_dtype"),
    [
        ("float32", "float32", "float32"),
        ("float32", "bfloat16", "float32"),
        (None, "float32", "float32"),
        ("float32", "float32", None),
    ],
)
def test_the_prm_stage_is_recorded_only_when_measured_in_the_dtype_the_runs_score_in(
    tmp_path, best_of_dtype, probe_dtype, run_dtype
):
    from pure_rl.experiments.sweep import prm_model_dir, record_prm_stage

    model = prm_model_dir(tmp_path)
    (tmp_path / "prm" / "best_of_n").mkdir(parents=True)
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "prm_train.json").write_text(json.dumps({"steps": 3}))
    best_of = {"table": [1], "samples": [2]} | ({"prm_dtype": best_of_dtype} if best_of_dtype else {})
    (tmp_path / "prm" / "best_of_n" / "best_of_n.json").write_text(json.dumps(best_of))
    (tmp_path / "prm" / "hackability.json").write_text(json.dumps({"prm_dtype": probe_dtype, "probes": {}}))
    path = record_prm_stage(tmp_path / "record", tmp_path, run_dtype)
    if best_of_dtype == probe_dtype == run_dtype:
        record = json.loads(path.read_text())
        assert path.name == f"prm_{weights_digest(model)}.json" and record["train"] == {"steps": 3}
        assert record["best_of_n"] == {"table": [1], "prm_dtype": "float32"}  # the per-sample scores stay local
    else:  # a file from before the dtype was recorded, or another dtype, or runs that disagree: not theirs
        assert path is None and not (tmp_path / "record").exists()


@pytest.mark.parametrize(
    ("prm", "overrides", "error"),
    [
        ("{best_of: 4}", "{}", "prm takes config"),
        ("{config: configs/prm/tiny.yaml, n: 4}", "{}", r"got \['config', 'n'\]"),
        ("{config: configs/prm/tiny.yaml}", "{env.prm_model: some/prm}", "env.prm_model is the PRM the prm stage"),
    ],
)
def test_a_sweep_file_with_a_bad_prm_stage_is_refused_naming_the_key(tmp_path, prm, overrides, error):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: x\nconfig: configs/tiny.yaml\nmethods: {{a: {{}}}}\nprm: {prm}\noverrides: {overrides}\n")
    with pytest.raises(ConfigError, match=error):
        load_spec(bad)


def test_a_sweep_records_its_runs_and_another_clone_continues_from_the_records(tmp_path):
    """A study that outlives its machine: finished runs are recorded in the repository's record folder; a sweep
    in a fresh output folder (another clone) runs only what is not recorded and reports over all of it; a
    record of another config is refused, naming the key."""
    record = tmp_path / "record"
    spec_file = tmp_path / "recorded.yaml"
    body = (
        "name: recorded\nconfig: configs/tiny.yaml\n"
        "warmup: {hidden_size: 32, layers: 1, steps: 3, batch_size: 4, lr: 3.0e-3, seed: 0}\n"
        "overrides: {train.iterations: 2, train.eval_every: 0, log.sample_every: 1}\n"
        f"record: {record}\nseeds: [0]\nclaims: {{vr_only: vr_only}}\n"  # the claims read recorded runs too
    )
    spec_file.write_text(body + "methods: {vr_only: {env.reward_mode: vr}}\n")
    first = [sys.executable, "-m", "pure_rl.experiments.sweep", str(spec_file), "--out", str(tmp_path / "a")]
    subprocess.run(first, cwd=ROOT, check=True, timeout=600, capture_output=True)
    saved = json.loads((record / "vr_only_seed0.json").read_text())
    assert saved["summary"]["iterations"] == 2 and saved["series"]["iteration"] == [1.0, 2.0]
    assert saved["fingerprints"]["policy"] and saved["fingerprints"]["prm"] is None
    assert "policy.model" not in saved["config"] and saved["config"]["env.reward_mode"] == "vr"
    assert {r["iteration"] for r in saved["samples"]} == {1, 2}
    # Another clone adds a method: the recorded run is not run again, the new one is, and both are reported.
    spec_file.write_text(body + "methods: {vr_only: {env.reward_mode: vr}, prm_only: {env.reward_mode: prm}}\n")
    second = [sys.executable, "-m", "pure_rl.experiments.sweep", str(spec_file), "--out", str(tmp_path / "b")]
    done = subprocess.run(second, cwd=ROOT, check=True, timeout=600, capture_output=True, text=True)
    assert "1 to run" in done.stdout and not (tmp_path / "b" / "vr_only").exists()
    assert (record / "prm_only_seed0.json").is_file()
    result = json.loads((tmp_path / "b" / "results" / "vr_only_seed0.json").read_text())
    assert result["summary"] == saved["summary"] and result["run_dir"] == str(record / "vr_only_seed0.json")
    assert "## vr_only (seed 0)" in (tmp_path / "b" / "samples.md").read_text()
    assert "policy " + saved["fingerprints"]["policy"] in (tmp_path / "b" / "table.md").read_text()
    assert (tmp_path / "b" / "claims.md").is_file()
    # A report half way covers what is recorded and names what it leaves out.
    spec_file.write_text(body + "methods: {vr_only: {env.reward_mode: vr}, later: {env.reward_mode: prm+vr}}\n")
    report = [
        sys.executable,
        "-m",
        "pure_rl.experiments.sweep",
        str(spec_file),
        "--out",
        str(tmp_path / "d"),
        "--report",
    ]
    done = subprocess.run(report, cwd=ROOT, check=True, timeout=600, capture_output=True, text=True)
    assert "leaves out 1 runs with no metrics and no record: later/seed0" in done.stdout
    assert "| vr_only |" in (tmp_path / "d" / "table.md").read_text()
    # A record made with another setting is never taken for this sweep's run.
    spec_file.write_text(
        body.replace("train.iterations: 2", "train.iterations: 2, train.lr: 0.5")
        + "methods: {vr_only: {env.reward_mode: vr}}\n"
    )
    third = [sys.executable, "-m", "pure_rl.experiments.sweep", str(spec_file), "--out", str(tmp_path / "c")]
    refused = subprocess.run(third, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert refused.returncode != 0 and "train.lr" in refused.stderr and "vr_only_seed0.json" in refused.stderr


def test_a_record_folder_git_ignores_is_refused(tmp_path):
    # Records in an ignored folder (runs/ is) would be lost with the machine, the very thing they are for.
    spec_file = tmp_path / "ignored.yaml"
    spec_file.write_text("name: x\nconfig: configs/tiny.yaml\nmethods: {a: {}}\nrecord: runs/records\n")
    with pytest.raises(ConfigError, match="record: runs/records is ignored by git"):
        load_spec(spec_file)
    spec_file.write_text("name: x\nconfig: configs/tiny.yaml\nmethods: {a: {}}\nrecord: docs/results/x/records\n")
    assert load_spec(spec_file).record_dir() == ROOT / "docs/results/x/records"


def test_a_sweep_of_methods_without_the_learned_prm_does_not_build_it(tmp_path):
    """VR-only (and rule-PRM) methods of a learned-PRM sweep run without paying for the PRM stage."""
    spec_file = tmp_path / "prm_sweep.yaml"
    spec_file.write_text(
        "name: no_prm_needed\nconfig: configs/tiny.yaml\n"
        "prm: {config: configs/prm/tiny.yaml, best_of: 2, problems: 3}\n"
        "overrides: {env.prm: hf, env.prm_layout: pure_text, train.iterations: 2, train.eval_every: 0}\n"
        "methods: {vr_only: {env.reward_mode: vr}, rule: {env.reward_mode: prm+vr, env.prm: arithmetic_rule}}\n"
    )
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "pure_rl.experiments.sweep", str(spec_file), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "prm:" not in done.stdout and not (out / "prm" / "model").exists()
    assert json.loads((out / "results" / "rule_seed0.json").read_text())["summary"]["iterations"] == 2
