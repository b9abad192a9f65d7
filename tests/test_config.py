"""Run config: YAML loading, dotted overrides, validation that names the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pure_rl.config import PAPER_PROMPT, ConfigError, RunConfig, describe, load_config, save_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_tiny_config_loads():
    cfg = load_config(CONFIGS / "tiny.yaml")
    assert isinstance(cfg, RunConfig)
    assert cfg.policy.model == "tiny"
    assert cfg.train.iterations == 2
    assert cfg.env.prompt_template == PAPER_PROMPT


@pytest.mark.parametrize(
    "path",
    sorted(CONFIGS.glob("*.yaml"))
    + sorted((CONFIGS / "prm").glob("*.yaml"))
    + sorted((CONFIGS.parent / "examples").glob("*/*.yaml")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_shipped_config_validates(path):
    load_config(path)


def test_defaults_without_file():
    cfg = load_config(None)
    assert cfg.algo.estimator == "min_form" and cfg.algo.temperature == 0.1
    assert cfg.env.step_separator == "\n\n"


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        ["algo.temperature=0.05", "algo.whiten=false", "train.lr=3e-6", "env.dataset=null", "log.name=abc"],
    )
    assert cfg.algo.temperature == 0.05 and cfg.algo.whiten is False
    assert cfg.train.lr == 3e-6 and cfg.env.dataset is None and cfg.log.name == "abc"


def test_int_accepted_for_float():
    assert load_config(None, ["algo.temperature=0"]).algo.temperature == 0.0


@pytest.mark.parametrize(
    "override,message",
    [
        ("algo.temprature=0.1", r"unknown key algo\.temprature; did you mean algo\.temperature"),
        ("algorithm.temperature=0.1", r"unknown key algorithm"),
        (
            "algo.baseline=median",
            r"algo\.baseline='median'.*registered baselines: "
            r"\['grpo', 'grpo_batch_std', 'grpo_no_std', 'none', 'rloo', 'rloo_token'",
        ),
        ("algo.estimator=min_from", r"algo\.estimator='min_from'.*did you mean 'min_form'.*registered estimators"),
        ("env.prm=hff", r"env\.prm='hff'.*registered prms: \['arithmetic_rule', 'hf'"),
        ("env.verifier=exact", r"env\.verifier='exact'.*registered verifiers: \['math'"),
        ("log.loggers=[csv, neptune]", r"log\.loggers='neptune'.*registered loggers"),
        ("env.reward_mode=both", r"env\.reward_mode='both' is not allowed; choices: \['prm\+vr', 'prm', 'vr'\]"),
        ("train.lr=.inf", r"train\.lr: expected a finite number"),
        ("plugins=[no_such_plugin_module]", r"plugins: module 'no_such_plugin_module' failed to import"),
        ("train.seed=-1", r"train\.seed=-1 is not allowed; it must be >= 0"),
        ("env.prompt_template='Q: {question} {answer}'", r"unknown placeholder \{answer\}: only \{question\}"),
        ("log.run_dir=runs/{nme}", r"log\.run_dir='runs/\{nme\}': unknown placeholder \{nme\}"),
        ("env.eval_dataset=gsm8kk", r"env\.eval_dataset='gsm8kk': unknown dataset 'gsm8kk'; did you mean 'gsm8k'"),
        ("env.dataset=missing/rows.jsonl", r"env\.dataset='missing/rows\.jsonl': dataset file .* does not exist"),
        ("policy.model=/no/such/model", r"policy\.model='/no/such/model': model folder '/no/such/model' does not"),
        ("algo.clip_epsilon=0", r"algo\.clip_epsilon=0\.0 .* > 0"),
        ("algo.temperature=-1", r"algo\.temperature=-1\.0 .*>= 0"),
        ("train.iterations=1.5", r"train\.iterations: expected int"),
        ("train.iterations=true", r"train\.iterations: expected int"),
        ("algo.whiten=maybe", r"algo\.whiten: expected bool"),
        ("policy.vllm_block_size=24", r"policy\.vllm_block_size=24 .*multiple of 16"),
        ("warmup.steps=-1", r"warmup\.steps=-1 .*>= 0"),
        ("warmup.lr=0", r"warmup\.lr=0\.0 .*> 0"),
        ("train.samples_per_prompt=1", r"train\.samples_per_prompt=1.*needs >= 2"),
        ("env.task=dataset", r"env\.dataset is required"),
        ("env.prompt_template=hello", r"env\.prompt_template.*\{question\}"),
        ("temperature=0.1", r"section\.key"),
        ("algo.temperature", r"section\.key=value"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "tiny.yaml", [override])


def test_samples_per_prompt_one_is_fine_without_group_baseline():
    cfg = load_config(CONFIGS / "tiny.yaml", ["train.samples_per_prompt=1", "algo.baseline=none"])
    assert cfg.train.samples_per_prompt == 1


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)
    section = tmp_path / "section.yaml"
    section.write_text("algo: 3\n")
    with pytest.raises(ConfigError, match="algo: expected a mapping"):
        load_config(section)


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", ["algo.temperature=0.2", "env.step_separator='\n'"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_describe_lists_every_key_with_help():
    lines = describe()
    assert any(line.startswith("algo.temperature = 0.1  # ") for line in lines)
    assert all("#" in line for line in lines)


def test_base_file_is_merged_under_this_files_keys(tmp_path):
    (tmp_path / "parent.yaml").write_text("env:\n  max_steps: 5\n  max_tokens: 64\ntrain:\n  lr: 1.0e-5\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nenv:\n  max_tokens: 32\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.env.max_steps, cfg.env.max_tokens, cfg.train.lr) == (5, 32, 1e-5)


def test_base_cycle_and_missing_base_are_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml does not exist"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "name, difference",
    [
        ("sum_form", {"algo.estimator": "sum_form"}),
        ("min_exact", {"algo.temperature": 0.0}),
        ("prm_only", {"env.reward_mode": "prm"}),
        ("vr_only", {"env.reward_mode": "vr"}),
    ],
)
def test_ablation_configs_differ_from_the_default_in_one_key(name, difference):
    from pure_rl.config import flat_config

    default = flat_config(load_config(CONFIGS / "default.yaml"))
    ablation = flat_config(load_config(CONFIGS / f"{name}.yaml"))
    changed = {key: value for key, value in ablation.items() if default[key] != value and key != "log.name"}
    assert changed == difference


@pytest.mark.parametrize("installed", [True, False])
def test_auto_backend_is_vllm_exactly_when_it_is_installed(monkeypatch, installed):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (real("json") if installed else None) if name == "vllm" else real(name, *a),
    )
    cfg = load_config(CONFIGS / "default.yaml")
    assert cfg.policy.backend == ("vllm" if installed else "transformers")
    # Resolved when the config loads, so a run's saved config names the engine it used, and its resume keeps it.
    assert load_config(CONFIGS / "tiny.yaml", ["policy.backend=auto"]).policy.backend == cfg.policy.backend
    assert load_config(CONFIGS / "tiny.yaml").policy.backend == "transformers"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora.dropout=1.0", r"lora\.dropout=1\.0 is not allowed; it must be in \[0, 1\)"),
        ("log.run_dir=''", r"log\.run_dir='' is not allowed; it must be a non-empty path"),
        ("train.mini_batch_size=5", r"train\.mini_batch_size=5 is larger than the rollout batch \(4 = "),
    ],
)
def test_a_value_that_would_make_a_run_do_nothing_or_something_else_is_refused(override, message):
    # dropout 1 trains nothing; an empty run folder is the current one; a mini-batch above the rollout batch is
    # silently the whole batch.
    with pytest.raises(ConfigError, match=message):
        load_config("configs/tiny.yaml", [override])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--problems", "0"], "--problems must be >= 1"),
        (["--aggregate", "min"], "give --best-of N with it"),
    ],
)
def test_evaluate_refuses_flags_it_would_ignore_or_bend(argv, message):
    from pure_rl.evaluate import main

    with pytest.raises(SystemExit, match=message):
        main(["--config", "configs/tiny.yaml", *argv])


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-3", "lots"])
def test_device_memory_must_be_a_positive_finite_number(value, capsys):
    from pure_rl.train import main

    with pytest.raises(SystemExit) as stop:
        main(["--config", "configs/tiny.yaml", "--dry-run", "--device-memory", value])
    assert stop.value.code == 2 and "--device-memory" in capsys.readouterr().err


def test_a_vllm_context_longer_than_the_models_positions_is_refused_before_the_engine(tiny_model_path):
    import json

    from agents.vllm_backend import VLLMBackend

    positions = json.loads((tiny_model_path / "config.json").read_text())["max_position_embeddings"]
    expected = rf"policy\.max_model_len={positions + 1} is more than the model's {positions}"
    with pytest.raises(ValueError, match=expected):
        VLLMBackend(str(tiny_model_path), tokenizer=None, max_model_len=positions + 1)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    import time

    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):  # 10**9 values once every alias is followed
        name, previous = chr(97 + i), chr(96 + i)
        bomb.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 10) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("env:\n" + "\n".join("  " + line for line in bomb) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb\.yaml expands to more than 100000 values"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"override env\.prompt_template expands to more than"):
        load_config("configs/tiny.yaml", ["env.prompt_template={" + ", ".join(bomb) + "}"])
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["train.ray_rollout_workers=2", "train.parallel=fsdp"], "train.parallel=fsdp"),
        (["train.ray_rollout_workers=3", "train.prompts_per_iter=4"], "multiple of 3"),
    ],
)
def test_ray_rollouts_refuse_what_they_cannot_run(overrides, named):
    from pure_rl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=named):
        load_config("configs/tiny.yaml", overrides)


def test_vr_share_needs_prm_vr_and_points_the_verifier_term_at_the_drawn_groups():
    import torch

    from pure_rl.config import ConfigError, load_config
    from pure_rl.objectives.loss import StepTokenPPOLoss
    from pure_rl.update import make_estimator

    with pytest.raises(ConfigError, match=r"env\.vr_share=0\.1 with env\.reward_mode=prm"):
        load_config("configs/tiny.yaml", ["env.vr_share=0.1", "env.reward_mode=prm"])
    with pytest.raises(ConfigError, match="vr_share"):
        load_config("configs/tiny.yaml", ["env.vr_share=0"])
    loss = StepTokenPPOLoss(torch.nn.Linear(2, 2), kl_coef=0.0, log_prob_fn=None)
    estimator = make_estimator(loss, load_config("configs/tiny.yaml", ["env.vr_share=0.1"]))
    assert estimator.tensor_keys.has_reference == "receives_vr"
    estimator = make_estimator(loss, load_config("configs/tiny.yaml"))
    assert estimator.tensor_keys.has_reference == "has_reference"


def test_ray_rollouts_refuse_hand_made_envs_they_could_not_reach(tmp_path):
    from envs.rule_prm import ArithmeticRulePRM
    from pure_rl.config import ConfigError, load_config
    from pure_rl.train import train

    cfg = load_config("configs/tiny.yaml", ["train.ray_rollout_workers=2"])
    with pytest.raises(ConfigError, match="plug-ins"):
        train(cfg, tmp_path / "run", prm=ArithmeticRulePRM())
    assert not (tmp_path / "run").exists()  # refused before the run folder is claimed
