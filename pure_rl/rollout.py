"""Rollouts: the policy acting in the step-level env, driven by a TorchRL collector.

Two ways to the same step trajectory ``[prompts x samples, steps]``: ``"step"`` lets the policy write one step
per env step (generation stops at the separator), ``"response"`` generates whole responses and segments them
with the same rule (fewer engine calls). With greedy decoding both give identical trajectories.

Training batches come from :func:`make_collector`, a TorchRL ``Collector`` with ``reset_at_each_iter=True`` over
the env: each ``collector.next()`` is one grouped batch ``[B, K]`` of fresh episodes (``K`` = the longest). The
env never resets a row on its own (``ReasoningStepEnv.restart_groups=False``, the default), so a finished
episode stays done, with zero reward and no generation, until the next batch (a collector's usual per-row
auto-reset would split the samples of one prompt, which the baselines compare), and the collector's
interruptor ends the batch once every episode is done. :func:`collect` runs the same batch with
``EnvBase.rollout`` (evaluation, tests).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.collectors import Collector

from agents.policy import generation_log_probs
from envs.ragged import log_probs_stack, text_stack, token_ids_stack
from envs.steps import split_token_steps

__all__ = [
    "GroupedBatchCollector",
    "PadSteps",
    "ResponseScript",
    "StopWhenAllDone",
    "WholeResponseActor",
    "collect",
    "make_collector",
    "rollout_actor",
    "rollout_responses",
]


class ResponseScript:
    """Whole generated responses (token ids, no prompt) split into steps by :func:`envs.steps.split_token_steps`
    (the rule a step-by-step policy stops by), written as the env's action one step per call: a policy for
    ``ReasoningStepEnv.rollout`` or a TorchRL collector. Row ``i`` gets its step number ``step_count[i]``;
    finished rows, and rows past their last step, get an empty step (the env ignores it), as a policy writes.
    :meth:`set_rows` replaces some rows' responses (a collector's restarted groups). Each step's tokens'
    generation log-probs go with it (``step_log_probs``; NaN where none were given).
    """

    def __init__(
        self,
        responses: Sequence[Sequence[int]],
        tokenizer,
        separator: str,
        eos_token_ids: Sequence[int],
        max_tokens: int,
    ):
        self.tokenizer, self.separator = tokenizer, separator
        self.eos_token_ids = list(eos_token_ids)
        self.eos = set(eos_token_ids)
        self.max_tokens = max_tokens
        n = len(responses)
        self.responses: list[list[int]] = [[] for _ in range(n)]
        self.steps: list[list[list[int]]] = [[] for _ in range(n)]
        self.step_log_probs: list[list[list[float]]] = [[] for _ in range(n)]
        self.texts: list[list[str]] = [[] for _ in range(n)]
        self.set_rows(range(n), responses)

    def set_rows(
        self,
        rows: Sequence[int],
        responses: Sequence[Sequence[int]],
        log_probs: Sequence[Sequence[float]] | None = None,
    ) -> None:
        """Give rows ``rows`` the responses ``responses`` (split into steps here), and optionally their tokens'
        generation log-probs ``log_probs`` (one per response token)."""
        for j, (i, response) in enumerate(zip(rows, responses)):
            steps = split_token_steps(list(response), self.tokenizer, self.separator, self.eos_token_ids)
            texts = [self.tokenizer.decode(s, skip_special_tokens=True) for s in steps]
            self.responses[i], self.steps[i], self.texts[i] = list(response), steps, texts
            # Steps concatenate to the response (up to its first EOS): each takes the next len(step) log-probs.
            row = list(log_probs[j]) if log_probs is not None else [float("nan")] * len(response)
            ends = itertools.accumulate(len(step) for step in steps)
            self.step_log_probs[i] = [row[end - len(step) : end] for step, end in zip(steps, ends)]

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        b = td.batch_size[0]
        done = td.get("done", None)
        done = [False] * b if done is None else done.reshape(b).tolist()
        step_text, step_tokens, step_eos, step_ids, step_log_probs = [], [], [], [], []
        for i, k in enumerate(td.get("step_count").reshape(b).tolist()):
            steps = self.steps[i]
            if k < len(steps) and not done[i]:
                step_text.append(self.texts[i][k])
                step_tokens.append(len(steps[k]))
                step_ids.append(steps[k])
                step_log_probs.append(self.step_log_probs[i][k])
                # The last step ends the response: by EOS, or (shorter than the token budget) because the
                # response simply stops there; a response cut by the budget is left to truncate.
                last = k == len(steps) - 1
                step_eos.append(steps[k][-1] in self.eos or (last and len(self.responses[i]) < self.max_tokens))
            else:
                step_text.append("")
                step_tokens.append(0)
                step_ids.append([])
                step_log_probs.append([])
                step_eos.append(True)
        td.set("step_text", text_stack(step_text, td.device))
        td.set("step_tokens", torch.tensor(step_tokens, dtype=torch.int64, device=td.device))
        td.set("step_eos", torch.tensor(step_eos, dtype=torch.bool, device=td.device))
        td.set("step_token_ids", token_ids_stack(step_ids, td.device))
        td.set("step_log_probs", log_probs_stack(step_log_probs, td.device))
        return td


def rollout_responses(
    env,
    responses: Sequence[Sequence[int]],
    tokenizer,
    eos_token_ids: Sequence[int] = (),
    tensordict: TensorDictBase | None = None,
) -> TensorDictBase:
    """Step trajectories ``[B, steps]`` of ``env`` built from whole generated responses (token ids, no prompt).

    Each response is split into steps with :func:`envs.steps.split_token_steps` (the same rule a step-by-step
    policy stops by) and fed to the env one step at a time, so the result equals stepping with a policy that
    wrote the same tokens step by step. Resets first unless ``tensordict`` (a reset output) is given.
    """
    b = env.batch_size[0]
    if len(responses) != b:
        raise ValueError(f"expected {b} responses, got {len(responses)}")
    script = ResponseScript(responses, tokenizer, env.separator, eos_token_ids, env.max_tokens)
    return env.rollout(
        max_steps=min(max([len(s) for s in script.steps] + [1]), env.max_steps),
        policy=script,
        auto_reset=tensordict is None,
        tensordict=tensordict,
        break_when_any_done=False,
        break_when_all_done=True,
    )


class WholeResponseActor(TensorDictModuleBase):
    """The ``"response"`` rollout mode as a policy: when rows start an episode (``step_count`` 0, not done) it
    generates their whole responses with the policy's engine (stopping at EOS, the token budget, or after the
    answer step when the env ends episodes there), then writes one step per call, split by the rule
    step-by-step generation stops at (:class:`ResponseScript`)."""

    def __init__(self, policy, env):
        super().__init__()
        self.policy = policy
        # An env that ends episodes at the answer step never uses what follows it: no need to generate it.
        self.stop_at_answer = getattr(env, "end_at_answer", False)
        self.in_keys = ["prompt", "step_count", "done"]
        self.out_keys = list(policy.out_keys)  # a collector reads these instead of probing the policy
        n = env.batch_size[0]
        self.script = ResponseScript([[]] * n, policy.tokenizer, env.separator, policy.eos_token_ids, env.max_tokens)
        # The env scores each whole response once (its PRM cost linear in the steps); a bound method, so the env
        # is not registered as a submodule of this policy.
        self.plan_responses = getattr(env, "plan_responses", None)

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        steps = td.get("step_count").reshape(-1).tolist()
        done = td.get("done").reshape(-1).tolist()
        fresh = [i for i, (k, d) in enumerate(zip(steps, done)) if k == 0 and not d]
        if fresh:
            rows = td if len(fresh) == len(steps) else td[fresh]
            generations = self.policy.generate_responses(rows, self.stop_at_answer)
            self.script.set_rows(
                fresh, [g.token_ids for g in generations], [generation_log_probs(g) for g in generations]
            )
            if self.plan_responses is not None:
                self.plan_responses(fresh, [self.script.texts[i] for i in fresh], [self.script.steps[i] for i in fresh])
        return self.script(td)


class StopWhenAllDone:
    """A collector interruptor that ends the batch once every episode of the env has finished (what
    ``EnvBase.rollout(break_when_all_done=True)`` does): no env steps after the longest episode."""

    def __init__(self, env):
        self.env = env

    def collection_stopped(self) -> bool:
        return self.env.all_finished


def make_collector(env, policy, mode: str = "step"):
    """A TorchRL ``Collector`` yielding one grouped batch of episodes ``[B, K]`` per ``next()``
    (:class:`GroupedBatchCollector`)."""
    return GroupedBatchCollector(env, policy, mode=mode)


class GroupedBatchCollector(Collector):
    """A TorchRL ``Collector`` yielding one grouped batch of episodes ``[B, K]`` per ``next()``.

    Every episode ends within ``max_steps`` env steps, so each batch holds exactly one whole episode per row,
    the same batch :func:`collect` returns. The collector resets the env once when it is built; the question
    order is rewound past that reset, so the first batch sees the first questions (and a resumed run its
    restored data position).

    ``env`` and ``policy`` may be given as factories (``policy_factory``): how a Ray actor builds its own
    (:class:`pure_rl.ray_rollout.GroupedRayCollector`). ``pad_to`` pads every batch to that many steps (the
    episode's last entry repeated with ``done`` set, which estimators mask), so batches of several workers
    stack. Other keyword arguments are the generic settings a ``RayCollector`` hands its workers (frames per
    batch, devices, reset flag): a grouped batch fixes those itself.
    """

    def __init__(self, env, policy=None, *, policy_factory=None, mode: str = "step", pad_to: int = 0, **_):
        env = env() if callable(env) and not hasattr(env, "batch_size") else env
        policy = policy_factory() if policy_factory is not None else policy
        if env.restart_groups:
            raise ValueError("a grouped batch needs an env with restart_groups=False (one episode per row)")
        position = env.state_dict()
        super().__init__(
            env,
            rollout_actor(env, policy, mode),
            frames_per_batch=env.batch_size[0] * env.max_steps,
            total_frames=-1,
            reset_at_each_iter=True,
            trust_policy=True,
            device=env.device,  # policy and env on one device: the text entries' device is kept as is
            auto_register_policy_transforms=False,  # the policy reads the env's own keys only
            use_buffers=False,  # with buffers the collector probes the policy once (a generation, RNG draws)
            interruptor=StopWhenAllDone(env),
            track_traj_ids=False,
            postproc=PadSteps(pad_to) if pad_to else None,
        )
        env.load_state_dict(position)
        self.reasoning_policy = policy
        if not hasattr(self, "_final_rollout"):
            # torchrl 0.14.1 reads this preallocated buffer on the interrupted path even without buffers (and
            # then stacks the steps itself); it only exists with use_buffers=True.
            self._final_rollout = None

    def env_state(self) -> dict:
        """The env's data position (for the run's checkpoint)."""
        return self.env.state_dict()

    def push_weights(self, model) -> None:
        """Nothing to push: the policy here is the trainer's own (its engine synced by the training loop)."""

    def load_weights(self, weights: dict) -> None:
        """``weights`` (by parameter name) into this collector's policy and its engine: a Ray worker's update."""
        self.reasoning_policy.load_weights(weights)


class PadSteps:
    """A collector ``postproc`` padding a ``[B, K]`` batch to ``[B, steps]`` by repeating each row's last entry
    (``done`` is set there, so estimators and metrics mask what it adds)."""

    def __init__(self, steps: int):
        self.steps = steps

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        k = batch.shape[1]
        return torch.cat([batch] + [batch[:, -1:]] * (self.steps - k), dim=1) if k < self.steps else batch


def collect(env, policy, mode: str = "step") -> TensorDictBase:
    """One batch of episodes with ``EnvBase.rollout`` and the same actor a collector uses: a tensordict
    ``[B, K]`` (``K`` = the longest episode's steps). Steps after an episode's end repeat its last entry with
    ``done`` set; value estimators mask them."""
    return env.rollout(
        env.max_steps, rollout_actor(env, policy, mode), break_when_any_done=False, break_when_all_done=True
    )


def rollout_actor(env, policy, mode: str) -> TensorDictModuleBase:
    """The policy module that drives ``env`` in rollout ``mode``: the policy itself (``"step"``) or a
    :class:`WholeResponseActor` over it (``"response"``). For building your own collector around ``env``."""
    if mode == "step":
        return policy
    if mode == "response":
        return WholeResponseActor(policy, env)
    raise ValueError(f"rollout mode must be 'step' or 'response', got {mode!r}")
