"""The step-level reasoning MDP: the TorchRL environment, step segmentation, reward sources, data.

Importing ``envs`` registers the gymnasium id ``pure_rl/ReasoningStep-v0``.
"""

import gymnasium as _gym

from envs.datasets import PRESETS, JsonlDataset, load_dataset
from envs.factory import make_env, make_prm, make_source, make_verifier
from envs.gym_adapter import ENV_ID, ReasoningStepGymEnv
from envs.prm import HFTokenClassificationPRM, PRMError, ProcessRewardModel
from envs.reasoning_env import ReasoningStepEnv
from envs.rule_prm import ArithmeticRulePRM, check_equations
from envs.steps import split_text_steps, split_token_steps
from envs.tasks import ArithmeticTask, Problem, ProblemStream
from envs.verifier import MathVerifier

if ENV_ID not in _gym.registry:
    _gym.register(id=ENV_ID, entry_point="envs.gym_adapter:ReasoningStepGymEnv")

__all__ = [
    "ENV_ID",
    "PRESETS",
    "ArithmeticRulePRM",
    "ArithmeticTask",
    "HFTokenClassificationPRM",
    "JsonlDataset",
    "MathVerifier",
    "PRMError",
    "Problem",
    "ProblemStream",
    "ProcessRewardModel",
    "ReasoningStepEnv",
    "ReasoningStepGymEnv",
    "check_equations",
    "load_dataset",
    "make_env",
    "make_prm",
    "make_source",
    "make_verifier",
    "split_text_steps",
    "split_token_steps",
]
