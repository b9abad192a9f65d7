"""Rollouts: the policy acting in the step-level env, as TorchRL's ``EnvBase.rollout`` drives it.

Two ways to the same step trajectory ``[prompts x samples, steps]``: ``"step"`` lets the policy write one step
per env step (generation stops at the separator), ``"response"`` generates whole responses and segments them
with the same rule (fewer engine calls). With greedy decoding both give identical trajectories.

A TorchRL collector class is not used: collectors reset each finished env on its own, which would split the
groups of samples that share a prompt (the baselines need whole groups), while ``rollout`` with
``break_when_all_done`` runs one grouped batch of episodes to the end.
"""

from __future__ import annotations

from tensordict import TensorDictBase

__all__ = ["collect"]


def collect(env, policy, mode: str = "step") -> TensorDictBase:
    """One batch of episodes: a tensordict ``[B, K]`` (``K`` = the longest episode's steps).

    Steps after an episode's end repeat its last entry with ``done`` set; value estimators mask them.
    """
    if mode == "step":
        return env.rollout(env.max_steps, policy, break_when_any_done=False, break_when_all_done=True)
    if mode == "response":
        start = env.reset()
        responses = policy.generate_responses(start)
        return env.rollout_responses(responses, policy.tokenizer, policy.eos_token_ids, tensordict=start)
    raise ValueError(f"rollout mode must be 'step' or 'response', got {mode!r}")
