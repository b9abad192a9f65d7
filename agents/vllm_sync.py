"""Weight sync into a vLLM engine on the same device: a worker extension called through ``collective_rpc``.

TorchRL's NCCL weight-update scheme assumes the trainer and the engine sit on separate GPUs, and its local
wrapper's update is a no-op. Here the engine runs in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
TRL's colocate mode does the same), so ``collective_rpc`` hands its worker the trainer's own objects: a generator
of ``(name, tensor)`` pairs that :meth:`WeightSyncExtension.pure_rl_reload_weights` streams through vLLM's
in-place, layer-by-layer ``reload_weights`` (the path vLLM uses to read a checkpoint, so fused and sharded
parameters are vLLM's business). Each tensor is made when vLLM asks for it (cast to the engine's dtype, a LoRA
layer merged) and copied into the engine's parameter: no file and no whole-model copy.

An engine in another process (``VLLM_ENABLE_V1_MULTIPROCESSING=1``) cannot receive tensors through the RPC; for it
the trainer writes a safetensors file (in ``/dev/shm`` where it exists) that
:meth:`WeightSyncExtension.pure_rl_load_weights` reads, and the memory plan counts that file.
"""

from __future__ import annotations

__all__ = ["WeightSyncExtension"]


class _Counted:
    """An iterator that counts what it yields (how many tensors the engine took)."""

    def __init__(self, pairs):
        self.pairs, self.n = iter(pairs), 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.pairs)
        self.n += 1
        return item


class WeightSyncExtension:
    """Mixed into vLLM's worker (``worker_extension_cls="agents.vllm_sync.WeightSyncExtension"``)."""

    def pure_rl_reload_weights(self, weights) -> int:
        """Stream ``(name, tensor)`` pairs (HF names) into the running model in place; returns how many.

        In-process engines only: ``weights`` is the trainer's own generator. vLLM's in-place ``reload_weights``
        re-runs the post-load processing layer by layer: on CPU, linear weights are repacked for oneDNN after
        loading, so a plain ``load_weights`` cannot update them.
        """
        counted = _Counted(weights)
        self.model_runner.reload_weights(weights_iterator=counted)
        self._repack_cpu_gemms()
        return counted.n

    def pure_rl_load_weights(self, path: str) -> int:
        """Load a safetensors file of HF-named parameters into the running model; returns how many (an engine in
        another process, which a file path reaches and tensors do not)."""
        from safetensors.torch import load_file

        tensors = load_file(path)
        self.model_runner.reload_weights(weights_iterator=iter(tensors.items()))
        self._repack_cpu_gemms()
        return len(tensors)

    def _repack_cpu_gemms(self) -> None:
        """Rebuild CPU GEMM handles of layers that kept their weight (embeddings, a tied ``lm_head``).

        vLLM's CPU path packs each linear weight into a oneDNN / SGL handle at load time. Reloaded layers are
        repacked by the reload itself, but a tied ``lm_head`` gets no checkpoint entry, so its handle would
        keep the old embedding. No-op on GPU (no ``cpu_linear`` there).
        """
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        for module in self.model_runner.model.modules():
            weight = getattr(module, "weight", None)
            if hasattr(module, "cpu_linear") and weight is not None and weight.ndim == 2 and weight.numel() > 0:
                dispatch_cpu_unquantized_gemm(module, remove_weight=False)
