"""A gymnasium view of the step-level reasoning MDP, for users outside TorchRL.

``gymnasium.make("pure_rl/ReasoningStep-v0")`` (registered on ``import envs``) gives one episode at a time:
the observation is a dict of texts (``question``, ``prompt``, ``response`` so far), the action is the next
step's text. A step that does not end with the separator ends the response (the text-level counterpart
of EOS). Rewards, budgets and modes are those of :class:`~envs.reasoning_env.ReasoningStepEnv`, which it
wraps with a batch of one.

Gymnasium's ``Text`` spaces need a finite charset: printable ASCII plus the Latin-1, Greek and math-symbol
blocks. Characters outside it are replaced by ``"?"`` in observations (and never appear in sampled actions).
"""

from __future__ import annotations

import re
import string
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from tensordict import NonTensorData, NonTensorStack, TensorDict

from envs.prm import ProcessRewardModel
from envs.reasoning_env import DEFAULT_PROMPT, ReasoningStepEnv
from envs.rule_prm import ArithmeticRulePRM
from envs.tasks import ArithmeticTask, ProblemSource

__all__ = ["CHARSET", "ENV_ID", "ReasoningStepGymEnv"]

ENV_ID = "pure_rl/ReasoningStep-v0"
CHARSET = "".join(
    sorted(
        set(string.printable)
        | {chr(c) for c in range(0xA0, 0x180)}  # Latin-1 supplement and Latin extended-A
        | {chr(c) for c in range(0x391, 0x3CA)}  # Greek
        | {chr(c) for c in range(0x2200, 0x2300)}  # mathematical operators
    )
)
_CHARSET_SET = frozenset(CHARSET)
_WORD_PIECES = re.compile(r"\w+|[^\w\s]")


def _in_charset(text: str) -> str:
    return "".join(c if c in _CHARSET_SET else "?" for c in text)


class ReasoningStepGymEnv(gym.Env):
    """One reasoning episode at a time, with text observations and text actions.

    Args:
        source: questions (default: arithmetic word problems of ``difficulty``).
        prm: step scorer (default: :class:`~envs.rule_prm.ArithmeticRulePRM`).
        difficulty: arithmetic difficulty when ``source`` is not given.
        tokenizer: counts step tokens for the token budget; without one, words and punctuation marks count.
        reward_mode, vr_coef, separator, max_steps, max_tokens, prompt_template: as in ``ReasoningStepEnv``.
        max_text_chars: ``max_length`` of the Text spaces.
    """

    metadata: ClassVar[dict] = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        source: ProblemSource | None = None,
        prm: ProcessRewardModel | None = None,
        *,
        difficulty: int = 1,
        tokenizer=None,
        reward_mode: str = "prm+vr",
        vr_coef: float = 1.0,
        separator: str = "\n\n",
        max_steps: int = 16,
        max_tokens: int = 256,
        prompt_template: str = DEFAULT_PROMPT,
        max_text_chars: int = 8192,
        render_mode: str | None = None,
    ):
        self.inner = ReasoningStepEnv(
            source or ArithmeticTask(difficulty),
            prm if prm is not None or reward_mode == "vr" else ArithmeticRulePRM(),
            batch_size=1,
            group_size=1,
            reward_mode=reward_mode,
            vr_coef=vr_coef,
            separator=separator,
            max_steps=max_steps,
            max_tokens=max_tokens,
            prompt_template=prompt_template,
        )
        self.tokenizer = tokenizer
        self.separator = separator
        self.render_mode = render_mode
        text = spaces.Text(max_length=max_text_chars, min_length=0, charset=CHARSET)
        self.observation_space = spaces.Dict({"question": text, "prompt": text, "response": text})
        self.action_space = spaces.Text(max_length=max_text_chars, min_length=0, charset=CHARSET)
        self._last: dict[str, str] = {}

    def _obs(self, td: TensorDict) -> dict[str, str]:
        obs = {
            k: _in_charset(str(td.get(k).tolist()[0]))[: self.observation_space[k].max_length]
            for k in ("question", "prompt", "response")
        }
        self._last = obs
        return obs

    def _count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        return len(_WORD_PIECES.findall(text))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.inner.set_seed(seed)
        td = self.inner.reset()
        return self._obs(td), {"reference": str(td.get("reference").tolist()[0])}

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"the action is the next step's text (str), got {type(action).__name__}")
        eos = self.separator not in action  # no separator: the response ends here
        td = TensorDict(
            {
                "step_text": NonTensorStack(NonTensorData(action)),
                "step_tokens": torch.tensor([self._count_tokens(action)], dtype=torch.int64),
                "step_eos": torch.tensor([eos]),
            },
            batch_size=[1],
        )
        nxt = self.inner.step(td).get("next")
        info = {
            "prm_reward": float(nxt["prm_reward"].item()),
            "verifier_reward": float(nxt["verifier_reward"].item()),
            "has_reference": bool(nxt["has_reference"].item()),
        }
        reward = float(np.float32(nxt["reward"].item()))
        return self._obs(nxt), reward, bool(nxt["terminated"].item()), bool(nxt["truncated"].item()), info

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return f"{self._last.get('prompt', '')}\n---\n{self._last.get('response', '')}"
        return None
