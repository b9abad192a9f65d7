"""The LLM policy of the step-level MDP, as a TorchRL module, and ``make_policy(cfg)``.

:class:`ReasoningPolicy` reads a :class:`~envs.reasoning_env.ReasoningStepEnv` batch (``prompt``,
``response_token_ids``, ``num_tokens``, ``done``) and writes the next step as the env's action
(``step_text``, ``step_tokens``, ``step_eos``, ``step_token_ids``), with the sampled tokens' log-probabilities
(``step_log_probs``, which the env passes by and the trainer reads). It knows nothing about rewards; any
backend that turns token ids into token ids serves (transformers or vLLM).
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from agents.generation import Generation, GenerationBackend, TransformersBackend
from agents.models import resolve_model_dir
from envs.ragged import log_probs_stack, text_stack, token_id_lists, token_ids_stack

__all__ = [
    "ReasoningPolicy",
    "engine_dtype",
    "generation_log_probs",
    "load_model_and_tokenizer",
    "make_policy",
    "make_reference_model",
]


def _as_lists(value, n: int) -> list:
    if value is None:
        return [[] for _ in range(n)]
    value = token_id_lists(value)
    if n == 1 and value and isinstance(value[0], int):
        value = [value]
    return [list(v) for v in value]


def sampling_seeds(tensordict: TensorDictBase, prompts: list[str], seed: int) -> list[int] | None:
    """One sampling seed per row, a function of (run seed, the row's prompt group, its step, its prompt text)
    only, so a row draws the same tokens in any batch on any number of processes; None when the env gives no
    ``group_id`` (the engine's own generator then draws). The prompt text keeps groups of another split (the
    held-out env counts its groups from 0 too) apart."""
    groups = tensordict.get("group_id", None)
    if groups is None:
        return None
    n = len(prompts)
    groups = groups.reshape(n).tolist()
    steps = tensordict.get("step_count", torch.zeros(n, dtype=torch.long)).reshape(n).tolist()
    return [zlib.crc32(f"{seed}:{g}:{k}:".encode() + prompt.encode()) for g, k, prompt in zip(groups, steps, prompts)]


def generation_log_probs(generation: Generation) -> list[float]:
    """A generation's per-token log-probs, NaN for each token when its engine gives none (the trainer then
    computes them in a pass of its own)."""
    if generation.log_probs is None:
        return [float("nan")] * len(generation.token_ids)
    return list(generation.log_probs)


class ReasoningPolicy(TensorDictModuleBase):
    """Writes the next reasoning step of every unfinished episode in the batch.

    Args:
        backend: a generation backend (:class:`~agents.generation.TransformersBackend` or
            :class:`~agents.vllm_backend.VLLMBackend`).
        max_tokens: the response token budget (each call generates at most what is left of it).
        use_chat_template: wrap the env's prompt in the tokenizer's chat template (user turn) before the
            response; otherwise the prompt text is followed directly by the response.
        model: the trainable HF model (what the loss differentiates; the transformers backend generates with
            it directly, vLLM gets its weights through ``sync_weights``).
    """

    def __init__(
        self,
        backend: GenerationBackend,
        *,
        max_tokens: int,
        use_chat_template: bool = True,
        model: torch.nn.Module | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.in_keys = ["prompt", "response_token_ids", "num_tokens", "done"]
        self.out_keys = ["step_text", "step_tokens", "step_eos", "step_token_ids", "step_log_probs"]
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.max_tokens = max_tokens
        self.use_chat_template = use_chat_template and getattr(self.tokenizer, "chat_template", None) is not None
        self.model = model
        self.seed = seed
        self._prompt_cache: dict[str, list[int]] = {}

    def __setattr__(self, name: str, value) -> None:
        # The trained model is held outside the module tree. A TorchRL collector whose policy device differs from
        # where a policy's parameters are deep-copies the policy with its parameters cast there (the env's device,
        # the CPU, for a model on cuda:0): it would then generate with a stale CPU copy while the trainer updates
        # the model on the GPU. With no parameters in the tree the collector runs this module as it is.
        if name == "model":
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)

    @property
    def eos_token_ids(self) -> list[int]:
        return self.backend.eos_token_ids

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of the prompt the response continues (chat template applied if configured)."""
        ids = self._prompt_cache.get(prompt)
        if ids is None:
            if self.use_chat_template:
                ids = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
                )
                ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
            else:
                ids = self.tokenizer.encode(prompt, add_special_tokens=False)
            if len(self._prompt_cache) > 10_000:
                self._prompt_cache.clear()
            self._prompt_cache[prompt] = ids
        return list(ids)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        n = tensordict.batch_size[0]
        prompts = tensordict.get("prompt")
        prompts = prompts.tolist() if hasattr(prompts, "tolist") else list(prompts)
        responses = _as_lists(tensordict.get("response_token_ids", None), n)
        used = tensordict.get("num_tokens", torch.zeros(n, dtype=torch.long)).reshape(n).tolist()
        done = tensordict.get("done", None)
        done = [False] * n if done is None else done.reshape(n).tolist()
        # Finished episodes get an empty step (the env ignores it) and cost no generation.
        budget = [0 if done[i] else max(0, self.max_tokens - int(used[i])) for i in range(n)]
        inputs = [self.prompt_ids(prompts[i]) + responses[i] for i in range(n)]
        seeds = sampling_seeds(tensordict, prompts, self.seed)
        generations = self.backend.generate(inputs, budget, stop_at_step=True, seeds=seeds)
        ids = [g.token_ids for g in generations]
        dev = tensordict.device
        tensordict.set("step_token_ids", token_ids_stack(ids, dev))
        tensordict.set("step_log_probs", log_probs_stack([generation_log_probs(g) for g in generations], dev))
        tensordict.set("step_text", text_stack([self.tokenizer.decode(t, skip_special_tokens=True) for t in ids], dev))
        tensordict.set("step_tokens", torch.tensor([len(t) for t in ids], dtype=torch.int64, device=dev))
        eos = [g.finish == "eos" or done[i] for i, g in enumerate(generations)]
        tensordict.set("step_eos", torch.tensor(eos, dtype=torch.bool, device=dev))
        return tensordict

    def generate_responses(self, tensordict: TensorDictBase, stop_at_answer: bool = False) -> list[Generation]:
        """Whole responses for a freshly reset batch: each stops at EOS or the token budget, or with
        ``stop_at_answer`` (an env with ``end_at_answer``) after the step that writes a ``\\boxed{}`` answer."""
        prompts = tensordict.get("prompt")
        prompts = prompts.tolist() if hasattr(prompts, "tolist") else list(prompts)
        gens = self.backend.generate(
            [self.prompt_ids(p) for p in prompts],
            [self.max_tokens] * len(prompts),
            stop_at_step=False,
            stop_at_answer=stop_at_answer,
            seeds=sampling_seeds(tensordict, prompts, self.seed),
        )
        return gens

    def release_engine(self) -> None:
        """Let the generation engine free its memory until the next :meth:`sync_weights` (vLLM's sleep mode when
        ``policy.vllm_sleep``; a no-op otherwise)."""
        release = getattr(self.backend, "release", None)
        if release is not None:
            release()

    def sync_weights(self) -> None:
        """Make the generation engine use the current weights of :attr:`model` (after an optimiser step)."""
        if self.model is not None:
            self.backend.sync_weights(self.model)

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy ``weights`` (parameter names as :func:`agents.lora.iter_engine_weights` gives them: a LoRA policy's
        merged, a tied weight once) into :attr:`model`, then sync the engine: the policy copy of a rollout worker
        in another process, which the trainer's weights reach as tensors."""
        missing = {name for name, _ in self.model.named_parameters()} - set(weights)
        if missing:
            raise ValueError(f"load_weights: no tensor for {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        with torch.no_grad():
            for name, value in weights.items():
                self.model.get_parameter(name).copy_(value)
        self.sync_weights()


def load_model_and_tokenizer(name: str, dtype: str = "float32", device: str = "cpu"):
    """The HF causal LM and tokenizer for ``policy.model`` (see :func:`agents.models.resolve_model_dir`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
    return model, tokenizer, path


def make_reference_model(
    model: torch.nn.Module | str, dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> torch.nn.Module:
    """The frozen KL reference policy: loaded from ``model`` when it names a model folder (or the embedded or
    tiny model), straight into ``dtype`` on ``device`` so no float32 copy of the weights ever exists beside the
    policy's (+28 GiB at 7B under mixed precision); else a frozen deep copy of the module ``model``, then cast."""
    if isinstance(model, str):
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(resolve_model_dir(model), dtype=dtype or torch.float32)
        ref = ref.to(device or "cpu").eval()
    else:
        ref = copy.deepcopy(model).eval()
        if dtype is not None:
            ref = ref.to(dtype)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def engine_dtype(pc) -> str:
    """``policy.engine_dtype`` resolved: ``auto`` is bfloat16 on a CUDA device, the policy's dtype elsewhere."""
    if pc.engine_dtype != "auto":
        return pc.engine_dtype
    return "bfloat16" if str(pc.device).startswith("cuda") else pc.dtype


def make_policy(cfg, eos_token_ids: Sequence[int] | None = None, model_name: str | None = None) -> ReasoningPolicy:
    """The configured policy: model, tokenizer and backend from ``cfg.policy``; budgets from ``cfg.env``.

    ``model_name`` replaces ``cfg.policy.model`` (e.g. the warmed-up folder of :func:`pure_rl.warmup.warmed_up_model`).
    """
    pc = cfg.policy
    model, tokenizer, path = load_model_and_tokenizer(model_name or pc.model, pc.dtype, pc.device)
    sampling = dict(
        separator=cfg.env.step_separator,
        temperature=pc.temperature,
        top_p=pc.top_p,
        seed=cfg.train.seed,
        eos_token_ids=eos_token_ids,
    )
    if pc.backend == "vllm":
        from agents.vllm_backend import VLLMBackend

        backend = VLLMBackend(
            path,
            tokenizer,
            dtype=engine_dtype(pc),
            gpu_memory_utilization=pc.gpu_memory_utilization,
            max_model_len=pc.max_model_len,
            block_size=pc.vllm_block_size,
            kv_cache_gib=pc.vllm_kv_cache_gib,
            sleep_mode=pc.vllm_sleep,
            one_per_rank=cfg.train.parallel != "none",
            **sampling,
        )
    else:
        backend = TransformersBackend(model, tokenizer, **sampling)
    return ReasoningPolicy(
        backend,
        max_tokens=cfg.env.max_tokens,
        use_chat_template=cfg.env.use_chat_template,
        model=model,
        seed=cfg.train.seed,
    )
