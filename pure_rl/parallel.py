"""One run on several processes: the process group, FSDP2 sharding, rank-0 I/O and the loop's few collectives.

Started by ``torchrun --nproc_per_node N -m pure_rl.train --config C train.parallel=fsdp`` (or ``ddp``; gloo on
CPU, NCCL on CUDA with rank ``r`` on ``cuda:LOCAL_RANK``); a plain ``python -m pure_rl.train`` with the same config
is the same run on one process. The training loop calls this module in a few named places; what it does on rank 0
alone (logging, the summary, the run lock) it asks of it (:attr:`Parallel.is_main`, :meth:`Parallel.main_only`).

**A run does not depend on the number of processes.** ``train.prompts_per_iter`` is the global batch; rank ``r``
of ``W`` rolls out the ``r``-th block of its prompt groups (a prompt's samples never split: the baselines compare
them), drawn from the one global question order, and every row samples from a generator seeded by its prompt
group and step (:func:`agents.policy.sampling_seeds`), so 1 and 2 processes draw the same trajectories. After the
rollout the step batch is gathered (:meth:`Parallel.gather_batch`): every rank holds the global batch and computes
the token batch, the credit (baselines, whitening, KL in the reward) and the metrics exactly as one process does.
Only the two costly parts are split by rows: the no-grad log-prob passes (each rank its own rows, then gathered:
:meth:`Parallel.row_pass`) and the loss's forward and backward (each rank its rows of every mini-batch, weighted
by their share of the global mini-batch: :meth:`Parallel.local_rows`). FSDP averages gradients over ranks while
those shares already sum to the batch's loss, hence :attr:`Parallel.loss_scale`. What remains different is float
reduction order (a gradient summed over ranks, a row's logits in a batch of another size).

Generation never runs the sharded module (its forward is a collective, and ranks generate different numbers of
tokens): each rank generates with an engine of its own, a vLLM engine that joined the job's process group
(``policy.backend=vllm``: :class:`agents.vllm_backend.VLLMBackend` with ``one_per_rank``) or a full copy of the
policy for the transformers backend (:meth:`Parallel.generation_copy`). The weight sync fills either from the
sharded parameters one tensor at a time (``full_tensor()``, in the same order on every rank:
:func:`agents.lora.iter_engine_weights`, :meth:`agents.generation.TransformersBackend.sync_weights`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from tensordict import TensorDictBase

from pure_rl.config import ConfigError

__all__ = ["Parallel", "setup_parallel"]


def _trained_only(strict: bool = True):
    """Checkpoints hold what trains: all weights, or a LoRA policy's adapters (its frozen base is the start model)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def _has_frozen(model: torch.nn.Module) -> bool:
    """A LoRA model (its base frozen): checkpoints hold what trains only."""
    return not all(p.requires_grad for p in model.parameters())


def _without_frozen_aliases(model: torch.nn.Module, state: dict) -> dict:
    """A LoRA model's trained tensors without a frozen tied weight under its second name (the head of a model
    whose head is its embedding): ``ignore_frozen_params`` knows parameters by their first name only."""
    if not _has_frozen(model):
        return state
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in trained}


# A rank that waits longer than this in a collective gives up (a peer that died without its socket closing).
_TIMEOUT = datetime.timedelta(minutes=10)


class Parallel:
    """The process layout of a run and the collectives the loop uses; with ``mode="none"`` (one process, no
    process group) every method is the identity, so the loop reads the same either way.

    Args:
        mode: ``train.parallel``: ``"none"``, ``"fsdp"`` or ``"ddp"``.
        rank, world: this process and how many there are.
        device: this rank's device.
    """

    def __init__(self, mode: str, rank: int = 0, world: int = 1, device: str = "cpu"):
        self.mode, self.rank, self.world, self.device = mode, rank, world, device
        self.mesh = None
        self.owns_group = False  # made the process group (and so ends it); else the caller's
        self._before_close: list = []

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, prints, plots and writes the run folder."""
        return self.rank == 0

    @property
    def loss_scale(self) -> float:
        """Each rank's loss is weighted by its rows' share of the global batch, so the gradient wanted is the sum
        over ranks; FSDP's reduce-scatter (and DDP's all-reduce) average, so each loss is scaled by the world size."""
        return float(self.world) if self.enabled else 1.0

    @property
    def rank_label(self) -> str:
        """`` on rank r`` in a message of a run on several processes, else nothing."""
        return f" on rank {self.rank} of {self.world}" if self.enabled else ""

    def describe(self) -> str:
        return f", {self.world} processes ({self.mode})" if self.enabled else ""

    # --- rank-0 I/O ---------------------------------------------------------------------------------------------

    def print(self, *args, **kwargs) -> None:
        if self.is_main:
            print(*args, **kwargs)

    def main_only(self, context):
        """``context`` (a run lock) entered on rank 0 alone."""
        return context if self.is_main else contextlib.nullcontext()

    def main_only_loggers(self, make_loggers, cfg, run_dir: Path):
        """The run's loggers on rank 0; on the others loggers that log nothing (every rank computes the metrics)."""
        from pure_rl.loggers import RunLoggers

        return make_loggers(cfg, run_dir) if self.is_main else RunLoggers({})

    def main_first(self, fn, *args):
        """``fn(*args)`` on rank 0, then on the others (what rank 0 builds into a shared cache, they find there)."""
        if not self.is_main:
            self.barrier()
        out = fn(*args)
        if self.is_main:
            self.barrier()
        return out

    def on_this_rank(self, cfg):
        """``cfg`` with this rank's device (``cuda:LOCAL_RANK`` for a config that says ``cuda``)."""
        if self.device == cfg.policy.device:
            return cfg
        return dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, device=self.device))

    # --- rows ---------------------------------------------------------------------------------------------------

    def rows(self, n: int) -> slice:
        """This rank's contiguous block of ``n`` global rows (``n`` is a multiple of the world size)."""
        if n % self.world:
            raise ValueError(f"{n} rows do not split into {self.world} equal blocks, one per process")
        size = n // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def local_rows(self, batch):
        """This rank's rows of a global batch (a tensordict or tensor with rows first)."""
        return batch[self.rows(batch.shape[0])] if self.enabled else batch

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """The global ``[n * world, ...]`` tensor from every rank's ``[n, ...]`` block, in rank order."""
        if not self.enabled:
            return local
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    def row_pass(self, fn, tokens: TensorDictBase) -> torch.Tensor:
        """``fn(rows) -> [rows, ...]`` over the global token batch, each rank computing its own block."""
        if not self.enabled:
            return fn(tokens)
        return self.gather_rows(fn(self.local_rows(tokens)))

    def gather_batch(self, traj: TensorDictBase) -> TensorDictBase:
        """The global step batch ``[B, K]`` from every rank's ``[B / W, K_r]``, padded to the longest rank's ``K``
        by repeating each row's last entry (``done`` set: estimators and metrics mask it)."""
        if not self.enabled:
            return traj
        from pure_rl.rollout import PadSteps

        parts = [None] * self.world
        dist.all_gather_object(parts, traj.cpu())
        pad = PadSteps(max(p.shape[1] for p in parts))
        return torch.cat([pad(p) for p in parts], dim=0).to(traj.device)

    # --- reductions ---------------------------------------------------------------------------------------------

    def sum(self, values: dict[str, float], keys) -> dict[str, float]:
        """``values`` with ``keys`` summed over ranks (each rank holds its rows' weighted part)."""
        if not self.enabled:
            return values
        keys = [k for k in keys if k in values]
        total = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(total)
        return {**values, **dict(zip(keys, total.tolist()))}

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Every value averaged over ranks (per-rank means over equal shares: the global mean)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        total = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(total)
        return dict(zip(keys, (total / self.world).tolist()))

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (a stop request seen by one rank stops them all together)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    # --- the model ----------------------------------------------------------------------------------------------

    def shard(self, model: torch.nn.Module, compute_dtype: torch.dtype | None = None) -> torch.nn.Module:
        """FSDP2 in place: ``fully_shard`` on every decoder layer (the model's ``_no_split_modules`` classes), then
        on the whole model; ``ddp`` is the same over a replicate-only mesh (parameters and optimiser state
        replicated, gradients all-reduced). With a ``compute_dtype`` (``train.precision=bf16-mixed``) the sharded
        parameters stay float32 masters and FSDP's ``MixedPrecisionPolicy`` all-gathers them in bf16 and reduces
        gradients in float32: no float32 layer is ever gathered, and autocast never caches a 16-bit copy of the
        whole model (what it does for float32 weights)."""
        if not self.enabled:
            return model
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        options = {"mesh": self.mesh}
        if compute_dtype is not None:
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)

        layer_classes = set(getattr(model, "_no_split_modules", None) or ())
        if not layer_classes:
            raise ValueError(
                f"train.parallel={self.mode}: {type(model).__name__} names no decoder layer class "
                "(_no_split_modules), so it cannot be sharded layer by layer"
            )
        for module in model.modules():
            if type(module).__name__ in layer_classes:
                fully_shard(module, **options)
        fully_shard(model, **options)
        return model

    def generation_copy(self, model: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module | None:
        """A full, unsharded copy of the policy for generation in ``dtype`` (``policy.engine_dtype``: bf16 on CUDA,
        as a vLLM engine; the sync casts as it copies), made before sharding (a LoRA policy's base model with its
        adapters injected, as the trained one); None when generation can run on the trained module itself (one
        process)."""
        if not self.enabled:
            return None
        import copy

        from agents.lora import is_lora

        replica = copy.deepcopy(model).eval()
        if dtype is not None:
            replica = replica.to(dtype)
        for p in replica.parameters():
            p.requires_grad_(False)
        return replica.get_base_model() if is_lora(replica) else replica

    # --- checkpoints --------------------------------------------------------------------------------------------

    def save_sharded(self, run_dir: Path, iteration: int, model, optimizer) -> str:
        """Every rank writes its shards of the model and optimiser (``torch.distributed.checkpoint``) into
        ``run_dir/checkpoint.shards.<iteration>``; returns that folder's name. The record that makes it the
        checkpoint is written afterwards by rank 0 (:func:`pure_rl.checkpoint.save_checkpoint`), so a folder
        without a record is never loaded."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        name = f"checkpoint.shards.{iteration}"
        folder = Path(run_dir) / name
        if self.is_main and folder.exists():
            shutil.rmtree(folder)  # a save of this iteration cut short before its record
        self.barrier()
        model_state, optim_state = get_state_dict(model, optimizer, options=_trained_only())
        model_state = _without_frozen_aliases(model, model_state)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=folder)
        self.barrier()
        return name

    def load_sharded(self, folder: Path, model, optimizer) -> None:
        """Load a sharded checkpoint into the (sharded) model and optimiser, on any number of ranks: DCP reshards."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(model, optimizer, options=_trained_only())
        state = {"model": _without_frozen_aliases(model, model_state), "optimizer": optim_state}
        dcp.load(state, checkpoint_id=folder)
        # DCP loaded every trained tensor or failed; strict=False lets the frozen tied alias stay out.
        options = _trained_only(strict=not _has_frozen(model))
        model_state, optim_state = state["model"], state["optimizer"]
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state, options=options)

    def at_close(self, fn) -> None:
        """Call ``fn()`` when the run ends, before the process group does (a vLLM engine that joined the group)."""
        self._before_close.append(fn)

    def close(self) -> None:
        """Shut down what joined the process group, then end the group if this object made it."""
        while self._before_close:
            self._before_close.pop()()
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup_parallel(cfg) -> Parallel:
    """The run's process layout from ``train.parallel`` and torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``): joins (or, started without torchrun, makes) the process group and the device mesh, and
    puts this rank on ``cuda:LOCAL_RANK`` when the policy is on CUDA. Refuses a launch it cannot run."""
    mode = cfg.train.parallel
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if mode == "none":
        if world > 1:
            # Each process would run the whole job on its own and race the others for the run folder.
            raise ConfigError(
                f"started as one of {world} processes (WORLD_SIZE={world}, torchrun or a launcher) with "
                "train.parallel=none: add train.parallel=fsdp (or ddp) to train one run on all of them, or start "
                "it once without torchrun"
            )
        return Parallel("none", device=cfg.policy.device)
    cuda = str(cfg.policy.device).startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if cuda else "gloo"
        if "RANK" in os.environ:
            dist.init_process_group(backend, timeout=_TIMEOUT)
        else:  # one process started without torchrun: a group of one
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=_TIMEOUT)
    par = Parallel(mode, dist.get_rank(), dist.get_world_size(), device)
    par.owns_group = owns_group
    if cfg.train.prompts_per_iter % par.world:
        raise ConfigError(
            f"train.prompts_per_iter={cfg.train.prompts_per_iter} does not split into {par.world} equal shares of "
            f"whole prompt groups, one per process; make it a multiple of {par.world}"
        )
    rows = cfg.train.prompts_per_iter * cfg.train.samples_per_prompt
    if cfg.train.mini_batch_size and (cfg.train.mini_batch_size % par.world or rows % cfg.train.mini_batch_size):
        raise ConfigError(
            f"train.mini_batch_size={cfg.train.mini_batch_size} with {par.world} processes: every mini-batch must "
            f"split into {par.world} equal shares (a multiple of {par.world} that divides the batch of {rows}), so "
            "every rank runs the same number of FSDP passes"
        )
    from torch.distributed.device_mesh import init_device_mesh

    device_type = "cuda" if cuda else "cpu"
    if mode == "ddp":
        par.mesh = init_device_mesh(device_type, (par.world, 1), mesh_dim_names=("replicate", "shard"))
    else:
        par.mesh = init_device_mesh(device_type, (par.world,))
    return par
