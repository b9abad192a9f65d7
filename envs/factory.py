"""The built-in tasks, PRMs and verifier as registered factories, and ``make_env(cfg)`` that assembles them.

Each factory is registered by name (:mod:`pure_rl.registry`) with its own config keys, so the run config
selects it (``env.task``, ``env.prm``, ``env.verifier``) and a plug-in adds another without an edit here:

- ``task``: ``factory(cfg, split) -> ProblemSource`` (``split`` ``"train"`` or ``"eval"``);
- ``prm``: ``factory(cfg) -> ProcessRewardModel``;
- ``verifier``: ``factory(cfg) -> object with .verify(response, reference) -> bool``.
"""

from __future__ import annotations

from dataclasses import dataclass

from envs.datasets import ANSWER_PARSERS, PRESETS, DatasetError, FieldMap, check_dataset, load_dataset
from envs.prm import LAYOUTS, HFTokenClassificationPRM, ProcessRewardModel
from envs.reasoning_env import ReasoningStepEnv
from envs.rule_prm import ArithmeticRulePRM
from envs.tasks import ArithmeticTask, CopyNumberTask, ProblemSource, ProblemStream
from envs.verifier import MathVerifier
from pure_rl.registry import get, opt, register

__all__ = ["EVAL_SEED_OFFSET", "make_env", "make_prm", "make_source", "make_verifier"]

# Held-out arithmetic problems come from another seed: the generator is a function of (seed, index).
EVAL_SEED_OFFSET = 1_000_003
SPLITS = ("train", "eval")


# --- tasks --------------------------------------------------------------------------------------------------


@dataclass
class ArithmeticOptions:
    difficulty: int = opt(
        1,
        "arithmetic task: difficulty level (operand size and number of operations)",
        check=lambda v: 1 <= v <= 5,
        allowed="an integer from 1 to 5",
    )


@register("task", "arithmetic", options=ArithmeticOptions)
def arithmetic_task(cfg, split: str) -> ArithmeticTask:
    """Generated arithmetic word problems; the held-out split reads another seed's problems."""
    return ArithmeticTask(cfg.env.difficulty, seed=cfg.train.seed + (EVAL_SEED_OFFSET if split == "eval" else 0))


@dataclass
class CopyNumberOptions:
    copy_largest: int = opt(
        9, "copy_number task: the largest number to repeat (from 0)", check=lambda v: v >= 0, allowed=">= 0"
    )
    copy_unboxed_share: float = opt(
        0.5,
        "copy_number task: share of reference solutions (what a warm-up learns from) that leave the answer "
        "unboxed, which the verifier does not read",
        check=lambda v: 0 <= v <= 1,
        allowed="in [0, 1]",
    )


@register("task", "copy_number", options=CopyNumberOptions)
def copy_number_task(cfg, split: str) -> CopyNumberTask:
    """Repeat a number from the question (a learnability check); held-out problems read another seed's."""
    seed = cfg.train.seed + (EVAL_SEED_OFFSET if split == "eval" else 0)
    return CopyNumberTask(seed=seed, largest=cfg.env.copy_largest, unboxed_share=cfg.env.copy_unboxed_share)


@dataclass
class DatasetOptions:
    dataset: str | None = opt(
        None,
        "dataset task: a preset (math500, gsm8k, aime24, amc23, minerva), a .jsonl/.json/.parquet file, or a "
        "datasets hub name org/name",
        check=check_dataset,
    )
    dataset_split: str = opt("train", "dataset task: the split of a hub dataset")
    question_field: str = opt("question", "dataset task: the field holding the question (files and hub sets)")
    answer_field: str | None = opt("answer", "dataset task: the reference answer's field (null: no answers)")
    answer_format: str = opt(
        "text",
        "dataset task: the answer field holds the answer (text), a solution with a \\boxed{} answer (boxed), or a "
        "GSM8K solution ending in '#### answer' (gsm8k)",
        choices=("text", "boxed", "gsm8k"),
    )
    id_field: str | None = opt(None, "dataset task: a row id field (default: the row number)")
    filter_field: str | None = opt(None, "dataset task: keep only rows whose field is in filter_values, e.g. level")
    filter_values: list = opt(  # noqa: RUF009 (opt gives a list default its own default_factory)
        [], "dataset task: the values filter_field may take, as text, e.g. ['Level 3', 'Level 4', 'Level 5']"
    )


def field_map(cfg, filtered: bool = True) -> FieldMap:
    """The configured field mapping (and, with ``filtered``, the row filter) of the dataset task."""
    env = cfg.env
    return FieldMap(
        question=env.question_field,
        answer=env.answer_field,
        id=env.id_field,
        answer_parser=ANSWER_PARSERS[env.answer_format],
        filter_field=env.filter_field if filtered else None,
        filter_values=tuple(env.filter_values) if filtered else (),
    )


@register("task", "dataset", options=DatasetOptions, requires=("dataset",))
def dataset_task(cfg, split: str) -> ProblemSource:
    """A problem set (``envs.datasets.load_dataset``); its own rows serve as the held-out split too."""
    fields = field_map(cfg) if cfg.env.filter_field or cfg.env.dataset not in PRESETS else None
    return load_dataset(cfg.env.dataset, fields, split=cfg.env.dataset_split)


def make_source(cfg, split: str = "train") -> ProblemSource:
    """The problem source of ``cfg.env`` for ``split`` (``"train"`` or ``"eval"``): ``env.eval_dataset`` when
    set for ``"eval"``, else the registered task ``env.task``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "eval" and cfg.env.eval_dataset:
        # The training set's field names apply to a held-out file too; its row filter does not.
        name = cfg.env.eval_dataset
        return load_dataset(name, None if name in PRESETS else field_map(cfg, filtered=False))
    return get("task", cfg.env.task)(cfg, split)


# --- PRMs ---------------------------------------------------------------------------------------------------


@dataclass
class ArithmeticRuleOptions:
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


@register("prm", "arithmetic_rule", options=ArithmeticRuleOptions)
def arithmetic_rule_prm(cfg) -> ArithmeticRulePRM:
    return ArithmeticRulePRM(neutral_score=cfg.env.neutral_score, answer_check=cfg.env.answer_check)


@dataclass
class HFPRMOptions:
    prm_model: str | None = opt(None, "hf PRM: an HF token-classification PRM folder or hub name")
    prm_layout: str = opt(
        "pure",
        "hf PRM input layout: pure (PURE-PRM-7B as the reference feeds it: policy prompt and step token ids, '\\n' "
        "after each step), pure_text (the same from text), qwen (Qwen2.5-Math-PRM, <extra_0>)",
        choices=LAYOUTS,
    )
    prm_device: str = opt("cpu", "hf PRM: torch device")
    prm_dtype: str = opt("float32", "hf PRM: dtype", choices=("float32", "bfloat16", "float16"))
    prm_batch_size: int = opt(8, "hf PRM: solutions per forward pass", check=lambda v: v > 0, allowed="> 0")


@register("prm", "hf", options=HFPRMOptions, requires=("prm_model",))
def hf_prm(cfg) -> HFTokenClassificationPRM:
    import torch

    env = cfg.env
    return HFTokenClassificationPRM(
        env.prm_model,
        layout=env.prm_layout,
        device=env.prm_device,
        dtype=getattr(torch, env.prm_dtype),
        batch_size=env.prm_batch_size,
    )


def make_prm(cfg) -> ProcessRewardModel | None:
    """The PRM of ``cfg.env`` (None in VR-only mode, where no PRM is run)."""
    if cfg.env.reward_mode == "vr":
        return None
    return get("prm", cfg.env.prm)(cfg)


# --- verifiers ----------------------------------------------------------------------------------------------


@register("verifier", "math")
def math_verifier(cfg) -> MathVerifier:
    """math-verify on the last ``\\boxed{}`` answer."""
    return MathVerifier()


def make_verifier(cfg):
    """The verifier of ``cfg.env``."""
    return get("verifier", cfg.env.verifier)(cfg)


# --- the environment ----------------------------------------------------------------------------------------


def make_env(
    cfg,
    split: str = "train",
    batch_size: int | None = None,
    prm: ProcessRewardModel | None = None,
    group_size: int | None = None,
    *,
    source: ProblemSource | None = None,
    verifier=None,
    shard: tuple[int, int] = (0, 1),
):
    """A :class:`ReasoningStepEnv` built from the run config.

    Args:
        cfg: the run config (``pure_rl.config.RunConfig``).
        split: ``"train"`` (``prompts_per_iter x samples_per_prompt`` episodes, grouped) or ``"eval"``
            (held-out problems, one sample each).
        batch_size: override the number of episodes (eval: defaults to ``train.eval_prompts``; at most every
            problem of a finite held-out set once per sample).
        prm: a PRM built by hand (or already built: a 7B PRM is loaded once for train and eval envs); default
            the configured one.
        group_size: samples per problem (default: ``train.samples_per_prompt`` for train, 1 for eval).
        source: a problem source built by hand; default the configured task's.
        verifier: a verifier built by hand; default the configured one.
        shard: ``(rank, world)`` of a run on several processes: this rank's share of the batch (whole groups),
            drawn from the one global question order (:class:`envs.tasks.ProblemStream`).
    """
    if split == "train":
        group = cfg.train.samples_per_prompt
        size = batch_size or cfg.train.prompts_per_iter * group
        seed = cfg.train.seed
    else:
        group = 1
        size = batch_size or cfg.train.eval_prompts
        seed = cfg.train.seed + EVAL_SEED_OFFSET
    group = group_size or group
    source = source if source is not None else make_source(cfg, split)
    if split == "eval" and len(source) > 0:
        # A finite held-out set is scored once per problem: a batch larger than the set would wrap around and
        # count some problems twice (30 AIME problems in a batch of 500: each 16-17 times).
        size = min(size, len(source) * group)
    if (
        cfg.env.reward_mode != "prm"
        and 0 < len(source)
        and all(p.answer is None for p in map(source.problem, range(len(source))))
    ):
        raise DatasetError(
            f"env.reward_mode={cfg.env.reward_mode} uses the verifier, but no problem of the {split} set has a "
            "reference answer: set env.reward_mode=prm, or give the rows an answer field"
        )
    world = shard[1]
    if world > 1:
        if size % (group * world):
            what = "train.prompts_per_iter" if split == "train" else "train.eval_prompts (or the held-out set's size)"
            raise ValueError(
                f"{what}: {size // group} prompts do not split into {world} equal shares of whole groups (one per "
                f"process); make it a multiple of {world}"
            )
        size //= world
    return ReasoningStepEnv(
        ProblemStream(source, seed=seed, shard=shard),
        prm if prm is not None else make_prm(cfg),
        verifier if verifier is not None else make_verifier(cfg),
        batch_size=size,
        group_size=group,
        reward_mode=cfg.env.reward_mode,
        vr_coef=cfg.env.vr_coef,
        vr_share=cfg.env.vr_share,
        separator=cfg.env.step_separator,
        max_steps=cfg.env.max_steps,
        max_tokens=cfg.env.max_tokens,
        prompt_template=cfg.env.prompt_template,
        seed=seed,
        end_at_answer=cfg.env.end_at_answer,
        eos_on_truncation=cfg.algo.eos_on_truncation,
    )
