"""Weight sync into a vLLM engine on the same device: a worker extension called through ``collective_rpc``.

TorchRL's NCCL weight-update scheme assumes the trainer and the engine sit on separate GPUs, and its local
wrapper's update is a no-op. Here the trainer writes its state dict to a safetensors file (in ``/dev/shm``
where it exists, so it never touches a disk) and asks the engine's worker process, through
``collective_rpc``, to load it with the model's own ``load_weights``: the path vLLM uses to read a
checkpoint, so fused and sharded parameters are handled by vLLM. Tensors themselves do not survive vLLM's
RPC serialization; a file path does, on CPU and GPU alike.
"""

from __future__ import annotations

__all__ = ["WeightSyncExtension"]


class WeightSyncExtension:
    """Mixed into vLLM's worker (``worker_extension_cls="agents.vllm_sync.WeightSyncExtension"``)."""

    def pure_rl_load_weights(self, path: str) -> int:
        """Load a safetensors file of HF-named parameters into the running model; returns how many.

        Goes through vLLM's in-place ``reload_weights``, which re-runs the post-load processing: on CPU,
        linear weights are repacked for oneDNN after loading, so a plain ``load_weights`` cannot update them.
        """
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
