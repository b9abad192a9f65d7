"""The gymnasium adapter: registered id, env_checker, and an episode."""

from __future__ import annotations

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the id)


def test_registered_and_passes_env_checker():
    env = gym.make("pure_rl/ReasoningStep-v0")
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("mode", ["prm+vr", "prm", "vr"])
def test_episode(mode):
    env = gym.make("pure_rl/ReasoningStep-v0", reward_mode=mode, max_steps=5)
    obs, info = env.reset(seed=0)
    assert obs["response"] == "" and obs["question"] in obs["prompt"] and info["reference"]
    answer = info["reference"]
    obs, r1, term, trunc, _info1 = env.step("1 + 1 = 2.\n\n")
    assert not term and not trunc and obs["response"] == "1 + 1 = 2.\n\n"
    obs, r2, term, trunc, info2 = env.step(f"The answer is \\boxed{{{answer}}}.")
    assert term and not trunc  # no separator: the response ends
    assert info2["verifier_reward"] == 1.0
    expected = {"prm+vr": (1.0, 0.5), "prm": (1.0, 0.5), "vr": (0.0, 1.0)}[mode]
    assert (r1, r2) == pytest.approx(expected)


def test_step_budget_truncates():
    env = gym.make("pure_rl/ReasoningStep-v0", max_steps=2)
    env.reset(seed=1)
    env.step("hmm\n\n")
    _, _, term, trunc, _ = env.step("hmm\n\n")
    assert trunc and not term


def test_text_action_type_is_checked():
    env = gym.make("pure_rl/ReasoningStep-v0")
    env.reset(seed=0)
    with pytest.raises(TypeError, match="text"):
        env.unwrapped.step(3)
