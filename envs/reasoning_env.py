"""``ReasoningStepEnv``: step-level reasoning as a batched TorchRL environment (docs/spec.md sections 2 and 4).

One episode is one response to one question. The state is the question plus the steps written so far; an
action is the next step (its text, its token count, and whether it ended with EOS); the reward is the PRM's
score of that step, with the verifiable reward added at the last step in ``prm+vr`` mode.

Batch layout: ``batch_size = [B]`` episodes, in groups of ``group_size`` consecutive episodes that share a
question (the samples of one prompt, compared by the RLOO/GRPO baselines). A reset draws ``B / group_size``
questions; a partial reset must cover whole groups.

Keys (everything is in the specs; ``check_env_specs`` passes):

- observation: ``question``, ``prompt`` (the question in the prompt template), ``response`` (steps so far,
  joined), ``reference`` (``""`` when unknown) as text; ``has_reference`` ``[B, 1]`` bool, and
  ``receives_vr`` ``[B, 1]`` bool (it has one and its group's verifiable reward counts: ``vr_share``); ``step_count``,
  ``num_tokens`` (response tokens so far), ``group_id`` ``[B]`` int64; ``prm_reward`` and
  ``verifier_reward`` ``[B, 1]`` (the PRM's score of the last step, and the verifier's 0/1 outcome at the last
  step, 0 before), written separately so metrics and estimators can use them apart from ``reward``.
- action: ``step_text`` (text), ``step_tokens`` ``[B]`` int64, ``step_eos`` ``[B]`` bool, and
  ``step_token_ids`` (optional: the env stores them so the trainer sees the exact sampled tokens; it never
  tokenizes anything itself). A policy may also write ``step_log_probs`` (each sampled token's log-probability,
  ragged float32); the env ignores it and it stays in the trajectory, where the trainer takes the old policy's
  log-probs from it (``train.old_log_probs``).
- Token ids (``response_token_ids``, ``step_token_ids``) are ragged, so each row holds a 1-D int64 tensor
  (:mod:`envs.ragged`).
- reward ``[B, 1]``; done / terminated (the step ended with EOS, or wrote the answer with ``end_at_answer``) /
  truncated (step or token budget spent).

Stepping an episode that is already done is a no-op that reports it done again with zero reward, so a
batch can be rolled out until every episode has finished (``env.rollout(..., break_when_all_done=True)``).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from tensordict import NonTensorData, NonTensorStack, TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, NonTensor, Unbounded
from torchrl.envs import EnvBase

from envs.prm import ProcessRewardModel
from envs.ragged import text_stack, token_id_lists, token_ids_stack
from envs.steps import is_answer_step
from envs.tasks import Problem, ProblemSource, ProblemStream
from envs.verifier import MathVerifier

__all__ = ["REWARD_MODES", "ReasoningStepEnv"]

REWARD_MODES = ("prm+vr", "prm", "vr")
DEFAULT_PROMPT = (
    '{question}\n\nPlease reason step by step with steps separated by "\\n\\n", '
    "and put your final answer within \\boxed{{}}."
)


def _texts(value, n: int) -> list[str]:
    """A batch of strings from what a tensordict holds (NonTensorStack, NonTensorData, list or str)."""
    if isinstance(value, (NonTensorStack, NonTensorData)):
        value = value.tolist()
    if isinstance(value, str):
        value = [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"expected {n} step texts, got {len(value)}")
    return [v if isinstance(v, str) else str(v) for v in value]


class ReasoningStepEnv(EnvBase):
    """Batched step-level reasoning MDP with PRM and verifier rewards.

    Args:
        source: where questions come from (an :class:`~envs.tasks.ArithmeticTask`, a
            :class:`~envs.datasets.JsonlDataset`, ...) or a ready :class:`~envs.tasks.ProblemStream`.
        prm: scores each step; may be None in ``vr`` mode only.
        verifier: checks the final answer (default :class:`~envs.verifier.MathVerifier`).
        batch_size: episodes run at once, ``B``.
        group_size: episodes per question (samples per prompt); must divide ``B``.
        reward_mode: ``"prm+vr"`` (PRM score, plus ``vr_coef * (v - 1)`` at the last step), ``"prm"`` or
            ``"vr"`` (0 until the last step, then ``v``).
        vr_coef: ``c_vr``.
        vr_share: the share of prompt groups whose verifiable reward counts in ``prm+vr`` mode (the paper's "just
            10% verifiable rewards" is 0.1). Each group is drawn once, from the question order's seed and its global
            position in the question order, so the draw does not depend on batch or rank; the others train on
            the PRM alone (their answers are still verified for the metrics). Observed as ``receives_vr``.
        separator: step separator text (informational here: the policy ends steps with it).
        max_steps, max_tokens: budgets per response; reaching one truncates the episode.
        prompt_template: ``{question}`` placeholder; the paper's prompt by default.
        seed: order of the questions.
        end_at_answer: a step that writes a ``\\boxed{}`` answer ends the episode (terminated), as EOS does.
            False (the paper's setting): the response runs to EOS and the verifier reads its last ``\\boxed{}``,
            so a policy that answers and then writes on (a small model often starts a new "Problem: ...")
            is judged by whatever it boxed last. With True the policy is never trained to write EOS after its
            answer, so a model trained so keeps writing past its answer when run with False.
        eos_on_truncation: the trainer replaces a cut response's last token by EOS (``algo.eos_on_truncation``,
            the reference code's ``process_sequences``); a PRM that reads token ids (:attr:`~envs.prm.
            ProcessRewardModel.wants_token_ids`) then gets the cut step without that token, as the reference's
            PRM input leaves the EOS out. Text PRMs read the step as written.
        restart_groups: what :meth:`maybe_reset` (called by ``step_and_maybe_reset``, so by TorchRL
            collectors) does with finished episodes. False (default): nothing; a finished episode stays done
            until the next reset, so a collector with ``reset_at_each_iter=True`` yields one grouped batch of
            episodes per iteration (the trainer's use). True: a group restarts, with a new question, once all of
            its episodes have finished (continuous collection; a group is never split).
    """

    batch_locked = True

    def __init__(
        self,
        source: ProblemSource | ProblemStream,
        prm: ProcessRewardModel | None,
        verifier: MathVerifier | None = None,
        *,
        batch_size: int = 1,
        group_size: int = 1,
        reward_mode: str = "prm+vr",
        vr_coef: float = 1.0,
        vr_share: float = 1.0,
        separator: str = "\n\n",
        max_steps: int = 16,
        max_tokens: int = 256,
        prompt_template: str = DEFAULT_PROMPT,
        seed: int = 0,
        device: str | torch.device = "cpu",
        end_at_answer: bool = False,
        restart_groups: bool = False,
        eos_on_truncation: bool = False,
    ):
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
        if prm is None and reward_mode != "vr":
            raise ValueError(f"reward_mode {reward_mode!r} needs a PRM; pass prm=... or use reward_mode='vr'")
        if batch_size % group_size:
            raise ValueError(f"group_size {group_size} must divide batch_size {batch_size}")
        if "{question}" not in prompt_template:
            raise ValueError("prompt_template must contain {question}")
        super().__init__(batch_size=torch.Size([batch_size]), device=device)
        self.stream = source if isinstance(source, ProblemStream) else ProblemStream(source, seed=seed)
        self.prm = prm
        self.verifier = verifier or MathVerifier()
        self.group_size = group_size
        self.reward_mode = reward_mode
        self.vr_coef = vr_coef
        if not 0.0 <= vr_share <= 1.0:
            raise ValueError(f"vr_share must be in [0, 1], got {vr_share}")
        self.vr_share = vr_share
        self.separator = separator
        self.max_steps = max_steps
        self.max_tokens = max_tokens
        self.prompt_template = prompt_template
        self.end_at_answer = end_at_answer
        self.restart_groups = restart_groups
        self.eos_on_truncation = eos_on_truncation
        b = batch_size
        self.problems: list[Problem | None] = [None] * b
        self.steps: list[list[str]] = [[] for _ in range(b)]
        self.step_ids: list[list[list[int]]] = [[] for _ in range(b)]  # each step's sampled token ids
        # Each row's planned response (plan_responses): step texts, step ids, PRM scores; read as its steps arrive.
        self.planned: list[tuple[list[str], list[list[int]], list[float]] | None] = [None] * b
        self.group_ids = torch.zeros(b, dtype=torch.int64)
        self.step_count = torch.zeros(b, dtype=torch.int64)
        self.num_tokens = torch.zeros(b, dtype=torch.int64)
        self.finished = torch.ones(b, dtype=torch.bool)
        self.terminated = torch.zeros(b, dtype=torch.bool)  # why each finished episode ended (vs truncated)
        self.reward_seconds = 0.0  # time spent in the PRM and the verifier (a metric, reset by the caller)
        self._make_specs()

    # --- specs ---------------------------------------------------------------------------------------------

    def _make_specs(self) -> None:
        b = self.batch_size
        text = lambda: NonTensor(shape=b, example_data="text", device=self.device)  # noqa: E731
        ids = lambda: NonTensor(shape=b, example_data=torch.zeros(1, dtype=torch.int64), device=self.device)  # noqa: E731
        flag = lambda: Categorical(2, shape=(*b, 1), dtype=torch.bool, device=self.device)  # noqa: E731
        self.observation_spec = Composite(
            question=text(),
            prompt=text(),
            response=text(),
            response_token_ids=ids(),
            reference=text(),
            has_reference=flag(),
            receives_vr=flag(),
            step_count=Bounded(0, self.max_steps, shape=b, dtype=torch.int64, device=self.device),
            num_tokens=Unbounded(shape=b, dtype=torch.int64, device=self.device),
            group_id=Unbounded(shape=b, dtype=torch.int64, device=self.device),
            prm_reward=Unbounded(shape=(*b, 1), dtype=torch.float32, device=self.device),
            verifier_reward=Unbounded(shape=(*b, 1), dtype=torch.float32, device=self.device),
            shape=b,
        )
        self.action_spec = Composite(
            step_text=text(),
            step_tokens=Bounded(0, self.max_tokens, shape=b, dtype=torch.int64, device=self.device),
            step_eos=Categorical(2, shape=b, dtype=torch.bool, device=self.device),
            step_token_ids=ids(),
            shape=b,
        )
        self.reward_spec = Unbounded(shape=(*b, 1), dtype=torch.float32, device=self.device)
        self.done_spec = Composite(done=flag(), terminated=flag(), truncated=flag(), shape=b)

    # --- observations --------------------------------------------------------------------------------------

    def _observation(self, prm_reward: torch.Tensor, verifier_reward: torch.Tensor) -> TensorDict:
        b = self.batch_size[0]
        problems = self.problems
        has_ref = torch.tensor([p is not None and p.answer is not None for p in problems], dtype=torch.bool)
        dev = self.device
        return TensorDict(
            {
                "question": text_stack([p.question if p else "" for p in problems], dev),
                "prompt": text_stack([self.format_prompt(p) if p else "" for p in problems], dev),
                "response": text_stack(["".join(s) for s in self.steps], dev),
                "response_token_ids": token_ids_stack(
                    [[t for ids in steps for t in ids] for steps in self.step_ids], dev
                ),
                "reference": text_stack([(p.answer or "") if p else "" for p in problems], dev),
                "has_reference": has_ref.view(b, 1),
                "receives_vr": (has_ref & self._receives_vr()).view(b, 1),
                "step_count": self.step_count.clone(),
                "num_tokens": self.num_tokens.clone(),
                "group_id": self.group_ids.clone(),
                "prm_reward": prm_reward.view(b, 1).to(torch.float32),
                "verifier_reward": verifier_reward.view(b, 1).to(torch.float32),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _receives_vr(self) -> torch.Tensor:
        """``[B]`` bool: whether each episode's group is in the ``vr_share`` of groups whose verifiable reward
        counts (a uniform draw per global group position, seeded)."""
        if self.vr_share >= 1.0:
            return torch.ones(self.batch_size[0], dtype=torch.bool)
        draws = [zlib.crc32(f"{self.stream.seed}:vr:{int(g)}".encode()) / 2**32 for g in self.group_ids.tolist()]
        return torch.tensor(draws) < self.vr_share

    def format_prompt(self, problem: Problem) -> str:
        """The question in the prompt template (the policy applies a chat template on top if configured)."""
        return self.prompt_template.format(question=problem.question)

    # --- reset / step --------------------------------------------------------------------------------------

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        b = self.batch_size[0]
        mask = None if tensordict is None else tensordict.get("_reset", None)
        mask = torch.ones(b, dtype=torch.bool) if mask is None else mask.reshape(b).to(torch.bool).cpu()
        groups = mask.view(-1, self.group_size)
        if not torch.equal(groups.all(-1), groups.any(-1)):
            raise ValueError(
                f"a partial reset must cover whole groups of {self.group_size} episodes (the samples of one prompt)"
            )
        reset_groups = groups.all(-1).nonzero().flatten().tolist()
        for g, (position, problem) in zip(reset_groups, self.stream.next_indexed(len(reset_groups))):
            for i in range(g * self.group_size, (g + 1) * self.group_size):
                self.problems[i] = problem
                self.steps[i] = []
                self.step_ids[i] = []
                self.planned[i] = None
            self.group_ids[g * self.group_size : (g + 1) * self.group_size] = position
        self.step_count[mask] = 0
        self.num_tokens[mask] = 0
        self.finished[mask] = False
        self.terminated[mask] = False
        zeros = torch.zeros(b)
        out = self._observation(zeros, zeros)
        out.update(
            {
                key: torch.zeros(b, 1, dtype=torch.bool, device=self.device)
                for key in ("done", "terminated", "truncated")
            }
        )
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        b = self.batch_size[0]
        texts = _texts(tensordict.get("step_text"), b)
        n_tokens = tensordict.get("step_tokens").reshape(b).to(torch.int64).cpu()
        eos = tensordict.get("step_eos").reshape(b).to(torch.bool).cpu()
        active = ~self.finished
        partial = tensordict.get("_step", None)
        if partial is not None:
            active &= partial.reshape(b).to(torch.bool).cpu()
        idx = active.nonzero().flatten().tolist()
        step_ids = tensordict.get("step_token_ids", None)
        step_ids = None if step_ids is None else token_id_lists(step_ids)
        if isinstance(step_ids, list) and b == 1 and step_ids and isinstance(step_ids[0], int):
            step_ids = [step_ids]  # a batch of one holding a single list

        for i in idx:
            self.steps[i].append(texts[i])
            if step_ids is not None:
                self.step_ids[i].append(list(step_ids[i]))
        self.step_count[active] += 1
        self.num_tokens[active] += n_tokens[active]
        if self.end_at_answer:
            eos = eos | torch.tensor([is_answer_step(t) for t in texts], dtype=torch.bool)
        terminated = eos & active
        truncated = active & ~terminated & ((self.step_count >= self.max_steps) | (self.num_tokens >= self.max_tokens))
        ended = terminated | truncated

        t0 = time.perf_counter()
        prm_reward = torch.zeros(b)
        if self.prm is not None and idx:
            # Cut steps whose last token the trainer turns into EOS: scored without it (never from a plan).
            cut = set(truncated.nonzero().flatten().tolist()) if self._cuts_for_prm() else set()
            live = []
            for i in idx:
                k = len(self.steps[i]) - 1
                plan = self.planned[i]
                if (
                    i not in cut
                    and plan is not None
                    and k < len(plan[0])
                    and (plan[0][k], plan[1][k])
                    == (
                        self.steps[i][k],
                        self.step_ids[i][k] if self.step_ids[i] else [],
                    )
                ):
                    prm_reward[i] = plan[2][k]
                else:
                    # Off the plan: this step and every later one are scored on what was written.
                    self.planned[i] = None
                    live.append(i)
            if live:
                scores = self._prm_scores(live, cut)
                prm_reward[live] = torch.tensor([s[-1] for s in scores], dtype=torch.float32)
        verifier_reward = torch.zeros(b)
        has_ref = torch.zeros(b, dtype=torch.bool)
        for i in ended.nonzero().flatten().tolist():
            problem = self.problems[i]
            if problem.answer is not None:
                has_ref[i] = True
                correct = self.verifier.verify("".join(self.steps[i]), problem.answer)
                if not isinstance(correct, (bool, np.bool_)):
                    # The contract is a bool: a 3 would be logged as an accuracy of 3 and scale the reward.
                    raise TypeError(
                        f"verifier {type(self.verifier).__name__}.verify returned {correct!r} for problem "
                        f"{problem.id!r}: it must return a bool (True when the final answer is right)"
                    )
                verifier_reward[i] = float(correct)
        self.reward_seconds += time.perf_counter() - t0

        if self.reward_mode == "prm":
            reward = prm_reward.clone()
        elif self.reward_mode == "vr":
            reward = verifier_reward.clone()
        else:
            vr = has_ref & self._receives_vr()
            reward = prm_reward + torch.where(vr, self.vr_coef * (verifier_reward - 1.0), torch.zeros(b))
        reward[~active] = 0.0
        self.finished |= ended

        out = self._observation(prm_reward, verifier_reward)
        done = self.finished.view(b, 1).clone()
        # An episode that ended earlier stays done; terminated/truncated keep the reason it ended with.
        self.terminated = torch.where(active, terminated, self.terminated)
        out.set("reward", reward.view(b, 1))
        out.set("done", done)
        out.set("terminated", self.terminated.view(b, 1).clone())
        out.set("truncated", (done.view(b) & ~self.terminated).view(b, 1))
        return out

    def _cuts_for_prm(self) -> bool:
        return self.eos_on_truncation and self.prm is not None and self.prm.wants_token_ids

    def _prm_scores(self, rows: list[int], cut: set[int] = frozenset()) -> list[list[float]]:
        """The PRM's scores of every step so far of each row in ``rows``; a row in ``cut`` has its last step's
        last token left out of a token-reading PRM's input (see ``eos_on_truncation``). A step's tokens before its
        last are never a boundary (the step would have ended there), so what remains is the reference's input."""
        context = {}
        if self.prm.wants_token_ids:
            context = dict(
                prompts=[self.format_prompt(self.problems[i]) for i in rows],
                step_token_ids=[
                    [*self.step_ids[i][:-1], self.step_ids[i][-1][:-1]]
                    if i in cut and self.step_ids[i]
                    else self.step_ids[i]
                    for i in rows
                ],
            )
        return self.prm([self.problems[i].question for i in rows], [self.steps[i] for i in rows], **context)

    def plan_responses(
        self, rows: Sequence[int], steps: Sequence[Sequence[str]], step_ids: Sequence[Sequence[Sequence[int]]]
    ) -> None:
        """Score the whole responses that freshly reset ``rows`` are about to write (the ``"response"`` rollout
        mode knows them before the first step): one PRM call over all steps of each, so the PRM's cost is linear
        in the steps instead of re-scoring every growing prefix. Each step's reward is then read from it, which
        equals scoring its prefix because the PRM is :attr:`~envs.prm.ProcessRewardModel.prefix_causal` (a PRM
        that is not is scored step by step, and this does nothing). A written step that differs from the
        planned one (text or token ids) is scored live, and so is every later step of that episode."""
        if self.prm is None or not self.prm.prefix_causal or not rows:
            return
        rows = list(rows)
        steps = [list(s[: self.max_steps]) for s in steps]
        step_ids = [[list(t) for t in ids[: self.max_steps]] for ids in step_ids]
        saved = [(self.steps[i], self.step_ids[i]) for i in rows]
        for i, s, ids in zip(rows, steps, step_ids):
            self.steps[i], self.step_ids[i] = s, ids
        t0 = time.perf_counter()
        try:
            scores = self._prm_scores(rows) if any(steps) else [[] for _ in rows]
        finally:
            for i, (s, ids) in zip(rows, saved):
                self.steps[i], self.step_ids[i] = s, ids
        self.reward_seconds += time.perf_counter() - t0
        for i, s, ids, sc in zip(rows, steps, step_ids, scores):
            self.planned[i] = (s, ids, sc)

    @property
    def all_finished(self) -> bool:
        """Whether every episode of the batch has ended (a collector's batch can stop there)."""
        return bool(self.finished.all())

    def maybe_reset(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Group-aware version of TorchRL's auto-reset: a row is never reset alone (that would split the
        samples of one prompt); see ``restart_groups``."""
        if not self.restart_groups:
            return tensordict
        done = tensordict.get("done").reshape(-1, self.group_size).all(-1)
        if not done.any():
            return tensordict
        tensordict.set("_reset", done.repeat_interleave(self.group_size).view(*self.batch_size, 1))
        return self.reset(tensordict, select_reset_only=True)

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self.stream.seed = int(seed)
            self.stream.position = 0
            self.stream._order_epoch = -1

    # --- data position (checkpoints) -----------------------------------------------------------------------

    def rewind(self) -> None:
        """Start the question order again (evaluations see the same held-out problems every time)."""
        self.stream.position = 0

    def state_dict(self, *args, **kwargs) -> dict:
        return {"stream": self.stream.state_dict()}

    def load_state_dict(self, state_dict: dict, *args, **kwargs) -> None:
        self.stream.load_state_dict(state_dict["stream"])
