"""Rollouts on Ray: TorchRL's ``RayCollector`` over N workers, each a :class:`~pure_rl.rollout.GroupedBatchCollector`
with its own env (its 1/N of every batch's prompt groups, its own PRM and verifier) and its own policy copy and
generation engine (transformers, or vLLM on the worker's GPU), as an actor anywhere on the cluster.

``train.ray_rollout_workers: N`` (0: rollouts in the trainer's process). The trainer stays one process: it joins
the Ray cluster that ``RAY_ADDRESS`` names (Ray's own convention) or starts a local one, and each iteration asks
every worker for one batch at once (``RayCollector(sync=True)``). Worker ``i`` rolls out the ``i``-th block of
the iteration's prompt groups from the one global question order (``make_env(shard=(i, N))``, as a rank of a
torchrun job does) and samples with per-group seeds, so the gathered batch holds the trajectories one process
draws: the run does not depend on N. Each worker pads its batch to ``env.max_steps`` so they stack; the gathered
batch is cut back to its longest episode.

After each update :meth:`GroupedRayCollector.push_weights` puts the policy's weights (a LoRA policy's merged, a
tied weight once) into Ray's object store once and every worker copies them into its policy and syncs its
engine. That is one full copy of the weights per push in the object store: fine for the models this runs on a
CPU; on GPUs a NCCL broadcast would avoid it (not built).
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.collectors.distributed import RayCollector

from pure_rl.rollout import GroupedBatchCollector

__all__ = ["GroupedRayCollector", "make_ray_collector"]


def _ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "train.ray_rollout_workers > 0 needs Ray: pip install ray (pure-rl's `ray` extra), or set "
            "train.ray_rollout_workers=0 for rollouts in the trainer's process"
        ) from e
    return ray


class _WorkerEnv:
    """Builds worker ``i``'s env (its shard of each batch) at the trainer's data position."""

    def __init__(self, cfg, shard: tuple[int, int], state: dict):
        self.cfg, self.shard, self.state = cfg, shard, state

    def __call__(self):
        from envs import make_env

        env = make_env(self.cfg, shard=self.shard)
        env.load_state_dict(self.state)
        return env


class _WorkerPolicy:
    """Builds a worker's policy from the run's starting model (the trainer pushes its current weights next)."""

    def __init__(self, cfg, model_name: str):
        self.cfg, self.model_name = cfg, model_name

    def __call__(self):
        from agents import make_policy

        return make_policy(self.cfg, model_name=self.model_name)


class GroupedRayCollector(RayCollector):
    """``RayCollector`` over :class:`~pure_rl.rollout.GroupedBatchCollector` workers: each ``next()`` is the global
    grouped batch ``[B, K]``, the workers' blocks in order."""

    def iterator(self):
        for stacked in super().iterator():  # [workers, B / workers, max_steps]
            yield _longest_episode(stacked.reshape(-1, stacked.shape[-1]))

    def push_weights(self, model: torch.nn.Module) -> None:
        """The policy's current weights into every worker's policy and engine; returns when all have them."""
        from agents.lora import iter_engine_weights

        ray = _ray()
        weights = ray.put({name: t.detach().to("cpu").clone() for name, t in iter_engine_weights(model)})
        ray.get([w.cascade_execute.remote("load_weights", weights) for w in self.remote_collectors])

    def env_state(self) -> dict:
        """The data position of the workers' envs (one global position: worker 0's)."""
        return _ray().get(self.remote_collectors[0].cascade_execute.remote("env_state"))


def _longest_episode(batch: TensorDictBase) -> TensorDictBase:
    """``batch [B, S]`` cut to ``[B, K]``, ``K`` the longest episode's steps (the batch one process collects is
    that long); the steps cut are padding (every row done before them)."""
    done = batch.get(("next", "done")).reshape(batch.shape)
    # A step is needed while some row was not yet done before it.
    running = torch.cat([torch.ones_like(done[:, :1]), ~done[:, :-1]], dim=1).any(0)
    k = int(running.nonzero().max()) + 1
    return batch[:, :k]


def make_ray_collector(cfg, env, model_name: str):
    """The run's rollouts on ``cfg.train.ray_rollout_workers`` Ray workers, each with its shard of ``env``'s
    batches (built from ``cfg`` at ``env``'s data position) and a policy from ``model_name``."""
    ray = _ray()
    workers = cfg.train.ray_rollout_workers
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=True)  # RAY_ADDRESS, if set, names the cluster
    state = env.state_dict()
    on_gpu = str(cfg.policy.device).startswith("cuda")
    return GroupedRayCollector(
        [_WorkerEnv(cfg, (i, workers), state) for i in range(workers)],
        policy_factory=[_WorkerPolicy(cfg, model_name)] * workers,
        collector_class=GroupedBatchCollector,
        collector_kwargs={"mode": cfg.policy.rollout_mode, "pad_to": env.max_steps},
        frames_per_batch=env.batch_size[0] * env.max_steps,
        total_frames=2**62,  # RayCollector's iterator stops at total_frames (-1 ends it at once)
        sync=True,
        num_collectors=workers,
        remote_configs={"num_cpus": 1, "num_gpus": 1 if on_gpu else 0},
        weight_sync_schemes={},  # the weights go by push_weights (TorchRL's Ray scheme needs an nn.Module policy)
    )
