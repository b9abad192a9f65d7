"""Plug-ins: a user module outside the package registers an estimator, a baseline, a PRM, a task and a verifier;
a YAML selects all five by name; a tiny run uses each of them. Also the registry's errors, loggers by name and
the Python API that takes hand-built objects."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

from pure_rl import registry
from pure_rl.config import ConfigError, describe, load_config
from pure_rl.plots import read_metrics
from pure_rl.train import main, train

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = textwrap.dedent(
    '''
    """A user's plug-in: every registered thing records that it was called."""
    from dataclasses import dataclass

    from envs.prm import ProcessRewardModel
    from envs.tasks import Problem
    from pure_rl.objectives import credit
    from pure_rl.objectives.estimators import StepCreditEstimator
    from pure_rl.registry import opt, register

    CALLS = {"estimator": 0, "baseline": 0, "prm": 0, "task": 0, "verifier": 0}


    @dataclass
    class ConstantOptions:
        constant_score: float = opt(0.25, "user PRM: the score of every step", check=lambda v: -1 <= v <= 1,
                                    allowed="in [-1, 1]")


    class ConstantPRM(ProcessRewardModel):
        def __init__(self, value):
            self.value = value

        def score(self, questions, steps):
            CALLS["prm"] += 1
            return [[self.value] * len(s) for s in steps]


    @register("prm", "user_constant", options=ConstantOptions)
    def constant_prm(cfg):
        return ConstantPRM(cfg.env.constant_score)


    class EchoTask:
        def __len__(self):
            return 0

        def problem(self, index):
            CALLS["task"] += 1
            return Problem(question=f"What is {index} + 1?", answer=str(index + 1), id=str(index))


    @register("task", "user_echo")
    def echo_task(cfg, split):
        return EchoTask()


    class AlwaysRight:
        def verify(self, response, reference):
            CALLS["verifier"] += 1
            return True


    @register("verifier", "user_always_right")
    def always_right(cfg):
        return AlwaysRight()


    @register("baseline", "user_group_mean", needs_group=True)
    def group_mean(batch):
        CALLS["baseline"] += 1
        mean = credit.group_leave_one_out_mean(batch.value_targets[:, 0], batch.group_ids)
        return (batch.value_targets - mean[:, None]) * batch.mask


    @register("estimator", "user_sum")
    class UserSum(StepCreditEstimator):
        def forward(self, tensordict, **kwargs):
            CALLS["estimator"] += 1
            return super().forward(tensordict, **kwargs)

        def __init__(self, **kwargs):
            kwargs.pop("form", None)
            super().__init__(form="sum_form", **kwargs)
    '''
)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder outside the package holding the user's module ``user_plugin`` (importable, fresh per test)."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "user_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("user_plugin", None)
    importlib.invalidate_caches()
    yield folder
    sys.modules.pop("user_plugin", None)


def write_config(folder: Path, **extra: str) -> Path:
    path = folder / "user.yaml"
    lines = [
        f"base: {ROOT / 'configs' / 'tiny.yaml'}",
        "plugins: [user_plugin]",
        "env:",
        "  task: user_echo",
        "  prm: user_constant",
        "  constant_score: -0.75",
        "  verifier: user_always_right",
        "algo:",
        "  estimator: user_sum",
        "  baseline: user_group_mean",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_user_module_registers_all_five_kinds_and_a_run_uses_each(plugin_dir, tmp_path):
    config = write_config(plugin_dir)
    run_dir = tmp_path / "run"
    main(["--config", str(config), "--run-dir", str(run_dir), "train.iterations=1"])
    calls = sys.modules["user_plugin"].CALLS
    assert all(n > 0 for n in calls.values()), calls
    row = read_metrics(run_dir / "logs" / "scalars")[0]
    assert row["prm_reward_mean"] == pytest.approx(-0.75)  # the user's own key reached the user's PRM
    assert row["accuracy"] == 1.0  # the user's verifier says every answer is right
    # The run directory records the plug-in, so a resume imports it again.
    assert "user_plugin" in (run_dir / "config.yaml").read_text()


def test_plugin_names_and_keys_are_validated_and_listed(plugin_dir):
    config = write_config(plugin_dir)
    with pytest.raises(ConfigError, match=r"env\.constant_score=3\.0 is not allowed; it must be in \[-1, 1\]"):
        load_config(config, ["env.constant_score=3"])
    with pytest.raises(ConfigError, match=r"registered prms: \['arithmetic_rule', 'hf', .*'user_constant'"):
        load_config(config, ["env.prm=user_constnt"])
    load_config(config)
    assert any(line.startswith("env.constant_score = 0.25") and "(prm=user_constant)" in line for line in describe())


def test_a_plugin_that_fails_to_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"plugins: module 'broken_plugin' failed to import \(RuntimeError: boom\)"):
        load_config(ROOT / "configs" / "tiny.yaml", ["plugins=[broken_plugin]"])


def test_registering_a_taken_name_or_a_clashing_key_is_refused():
    with pytest.raises(registry.RegistryError, match="'min_form' is already registered"):

        @registry.register("estimator", "min_form")
        class Other:
            pass

    from dataclasses import dataclass

    @dataclass
    class Clash:
        temperature: int = registry.opt(3, "a different temperature")

    clash = r"declares algo\.temperature with another type, default, check than estimator 'min_form'"
    with pytest.raises(registry.RegistryError, match=clash):
        registry.register("estimator", "clashing_temperature", options=Clash)(type("X", (), {}))


CORE_KEY_PLUGIN = textwrap.dedent(
    """
    from dataclasses import dataclass

    from envs.prm import ProcessRewardModel
    from pure_rl.registry import opt, register


    @dataclass
    class Options:
        vr_coef: float = opt(1.0, "redeclares a core key without its check")
        max_steps: int = opt(99, "and another core key with another default")


    @register("prm", "core_key_thief", options=Options)
    def thief(cfg):
        raise AssertionError("never built")
    """
)


def test_a_plugin_redeclaring_a_core_key_is_refused_naming_both_and_the_core_key_stays(tmp_path, monkeypatch):
    (tmp_path / "core_key_plugin.py").write_text(CORE_KEY_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs" / "tiny.yaml", ["plugins=[core_key_plugin]"])
    message = str(info.value)
    assert "prm 'core_key_thief' (core_key_plugin.thief) declares env.vr_coef" in message
    assert "core key of the env section (pure_rl.config.EnvConfig)" in message
    assert "core_key_thief" not in registry.names("prm")
    # Nothing of it took: the core key keeps its check and default.
    with pytest.raises(ConfigError, match=r"env\.vr_coef"):
        load_config(ROOT / "configs" / "tiny.yaml", ["env.vr_coef=-5"])
    assert load_config(ROOT / "configs" / "default.yaml").env.max_steps != 99


def test_two_plugins_sharing_a_key_must_agree_on_its_check_and_choices():
    from dataclasses import dataclass

    @dataclass
    class First:
        shared_margin: float = registry.opt(0.5, "a margin", check=lambda v: v >= 0, allowed=">= 0")

    @dataclass
    class Same:
        shared_margin: float = registry.opt(0.5, "the same margin", check=lambda v: v >= 0, allowed=">= 0")

    @dataclass
    class Looser:
        shared_margin: float = registry.opt(0.5, "a margin without a check")

    registry.register("prm", "margin_first", options=First)(type("A", (), {}))
    registry.register("prm", "margin_same", options=Same)(type("B", (), {}))  # the same meaning: accepted
    with pytest.raises(registry.RegistryError) as info:
        registry.register("prm", "margin_looser", options=Looser)(type("C", (), {}))
    message = str(info.value)
    assert "prm 'margin_looser'" in message and "declares env.shared_margin with another check" in message
    assert "prm 'margin_first'" in message and "'margin_looser'" not in registry.names("prm")


def test_a_logger_whose_package_is_missing_is_a_config_error():
    @registry.register("logger", "needs_missing_package", package="no_such_package_pure_rl_test")
    def factory(cfg, run_dir):
        raise AssertionError("never built")

    with pytest.raises(ConfigError, match=r"needs the 'no_such_package_pure_rl_test' package: pip install"):
        load_config(ROOT / "configs" / "tiny.yaml", ["log.loggers=[csv, needs_missing_package]"])


def test_wandb_offline_and_mlflow_local_loggers_receive_the_metrics(tmp_path):
    # wandb and mlflow come with the tracking extra, which make test installs: their absence fails here.
    run_dir = tmp_path / "run"
    main(
        [
            "--config", str(ROOT / "configs" / "tiny.yaml"), "--run-dir", str(run_dir),
            "log.loggers=[csv, tensorboard, wandb, mlflow]", "train.iterations=1",
        ]
    )  # fmt: skip
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb")), "wandb wrote no offline run"
    mlflow_metrics = list((run_dir / "mlruns").glob("*/*/metrics/accuracy"))
    assert mlflow_metrics and mlflow_metrics[0].read_text().split()[1] == repr(
        read_metrics(run_dir / "logs" / "scalars")[0]["accuracy"]
    )
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_train_accepts_hand_built_prm_and_verifier(tmp_path):
    from envs.prm import ProcessRewardModel

    class HalfPRM(ProcessRewardModel):
        def score(self, questions, steps):
            return [[0.5] * len(s) for s in steps]

    class NeverRight:
        calls = 0

        def verify(self, response, reference):
            NeverRight.calls += 1
            return False

    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["train.iterations=1"])
    summary = train(cfg, tmp_path / "run", prm=HalfPRM(), verifier=NeverRight())
    assert NeverRight.calls > 0
    assert summary["prm_reward_mean"]["first"] == pytest.approx(0.5)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["accuracy"]["first"] == 0.0


def test_a_verifier_that_breaks_its_contract_is_an_error_naming_it(tmp_path):
    class Counts:
        def verify(self, response, reference):
            return 3  # not a bool: would be logged as an accuracy of 3

    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["train.iterations=1"])
    with pytest.raises(TypeError, match=r"verifier Counts\.verify returned 3 for problem .*must return a bool"):
        train(cfg, tmp_path / "run", verifier=Counts())
