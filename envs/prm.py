"""Process reward models: the one small interface the env calls, and the HF token-classification PRM.

A PRM scores every step of a solution from text: ``score(questions, steps) -> scores`` with one float in
``[-1, 1]`` per step. The policy's tokenizer is never assumed; an HF PRM tokenizes with its own. Plug in
your own reward source by subclassing :class:`ProcessRewardModel`.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = [
    "LAYOUTS",
    "HFTokenClassificationPRM",
    "PRMError",
    "PRMInputFormat",
    "ProcessRewardModel",
    "batch_prm_inputs",
    "is_causal_model",
    "load_trained_prm",
    "step_scores",
]

LAYOUTS = ("pure", "pure_text", "qwen")


class PRMError(RuntimeError):
    """A PRM broke its contract: not one list per solution, not one finite number per step, or out of range."""


class ProcessRewardModel(abc.ABC):
    """Scores each reasoning step given the question and the steps before it.

    Calling a PRM checks what :meth:`score` returned against the contract: one list per solution, one finite
    real number per step, each within :attr:`score_range`; anything else is a :class:`PRMError` naming the PRM
    and the row, never a reward.
    """

    score_range: tuple[float, float] = (-1.0, 1.0)
    # A PRM that reads the policy's own tokens (the reference layout) sets this; the env then passes
    # ``prompts`` (the formatted prompt texts) and ``step_token_ids`` (each step's sampled ids) to ``score``.
    wants_token_ids: bool = False
    # True when a step's score depends only on the question and the steps up to it (a decoder-only PRM, the rule
    # PRM): the env may then score a whole planned response in one call and read each step's reward from it,
    # instead of re-scoring every growing prefix (cost linear, not quadratic, in the steps).
    prefix_causal: bool = False

    @abc.abstractmethod
    def score(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """Scores of every step of each solution.

        Args:
            questions: ``B`` question texts.
            steps: ``B`` lists of step texts (each step as the policy wrote it, separator included).

        Returns:
            ``B`` lists of floats in ``[-1, 1]``, one per step.
        """

    def __call__(
        self,
        questions: Sequence[str],
        steps: Sequence[Sequence[str]],
        *,
        prompts: Sequence[str] | None = None,
        step_token_ids: Sequence[Sequence[Sequence[int]]] | None = None,
    ) -> list[list[float]]:
        if self.wants_token_ids:
            scores = self.score(questions, steps, prompts=prompts, step_token_ids=step_token_ids)
        else:
            scores = self.score(questions, steps)
        name = type(self).__name__
        if not isinstance(scores, (list, tuple)) or len(scores) != len(steps):
            got = f"{len(scores)} score lists" if isinstance(scores, (list, tuple)) else repr(scores)[:60]
            raise PRMError(f"{name} returned {got} for {len(steps)} solutions; score() must return one list each")
        lo, hi = self.score_range
        checked = []
        for i, (row, s) in enumerate(zip(scores, steps)):
            where = f"solution {i} (question {questions[i][:60]!r})"
            if not isinstance(row, (list, tuple)) or len(row) != len(s):
                got = f"{len(row)} scores" if isinstance(row, (list, tuple)) else repr(row)[:60]
                raise PRMError(f"{name} returned {got} for the {len(s)} steps of {where}")
            out = []
            for k, v in enumerate(row):
                if isinstance(v, bool) or not isinstance(v, numbers.Real):
                    raise PRMError(f"{name} returned {v!r} for step {k} of {where}: a score must be a real number")
                v = float(v)
                if not math.isfinite(v):
                    raise PRMError(
                        f"{name} returned {v} for step {k} of {where} (step {s[k][:60]!r}); a NaN usually means fp16 "
                        "overflow or an empty input: try dtype=float32 / bfloat16"
                    )
                if not lo <= v <= hi:
                    raise PRMError(f"{name} returned {v} for step {k} of {where}, outside its range [{lo}, {hi}]")
                out.append(v)
            checked.append(out)
        return checked


def load_trained_prm(path: str, dtype: torch.dtype) -> torch.nn.Module:
    """A token-classification PRM from ``path`` with every weight from the checkpoint.

    transformers' ``*ForTokenClassification`` has a one-layer head (``score``), PURE-PRM's layout; Qwen2.5-Math-PRM
    saves a two-layer head (``score.0`` -> ReLU -> ``score.2``), built here and loaded from its files. Any weight
    the checkpoint lacks (a head that would be newly initialised at random, e.g. a base LM given as a PRM) is a
    :class:`PRMError`: a random head scores steps with noise.
    """
    from safetensors.torch import load_file
    from transformers import AutoModelForTokenClassification

    model, info = AutoModelForTokenClassification.from_pretrained(path, dtype=dtype, output_loading_info=True)
    missing, unexpected = set(info["missing_keys"]), set(info["unexpected_keys"])
    two_layer = {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"}
    if two_layer <= unexpected and missing <= {"score.weight", "score.bias"}:
        hidden, labels = model.config.hidden_size, model.config.num_labels
        model.score = torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, labels)
        ).to(dtype)
        head = {}
        for f in sorted(Path(path).glob("*.safetensors")):
            head.update({k[len("score.") :]: v for k, v in load_file(str(f)).items() if k.startswith("score.")})
        model.score.load_state_dict(head)
        missing, unexpected = set(), unexpected - two_layer
    if missing:
        raise PRMError(
            f"PRM {path}: {len(missing)} weights are not in the checkpoint and would be initialised at random "
            f"({', '.join(sorted(missing)[:4])}): it is not a trained token-classification PRM (a PURE-PRM-style "
            "2-way head 'score', or Qwen2.5-Math-PRM's 'score.0'/'score.2')"
        )
    return model


class PRMInputFormat:
    """How a token-classification PRM reads a solution: the token ids and the positions its step scores are read
    at. Shared by the scorer (:class:`HFTokenClassificationPRM`) and the trainer (:mod:`pure_rl.prm`), so a PRM is
    trained on exactly the input it is later scored on. Layouts: see :class:`HFTokenClassificationPRM`."""

    def __init__(
        self,
        tokenizer,
        layout: str = "pure_text",
        *,
        step_token: str = "<extra_0>",
        system_prompt: str = "Please reason step by step, and put your final answer within \\boxed{}.",
        eos_token_ids: Sequence[int] = (),
    ):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.tokenizer = tokenizer
        self.layout = layout
        self.step_token = step_token
        self.system_prompt = system_prompt
        if layout in ("pure", "pure_text"):
            ids = tokenizer.encode("\n", add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"the PRM tokenizer encodes '\\n' as {len(ids)} tokens; the pure layout needs one")
            self.marker_id = ids[0]
        else:
            self.marker_id = tokenizer.convert_tokens_to_ids(step_token)
            if self.marker_id is None or self.marker_id == tokenizer.unk_token_id:
                raise ValueError(f"the PRM tokenizer has no step token {step_token!r}")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._eos_ids = {t for t in (tokenizer.eos_token_id, *eos_token_ids) if isinstance(t, int)}

    def encode(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of a solution given as text, and the positions of its step markers (one per step)."""
        enc = self.tokenizer
        if self.layout == "pure":
            raise PRMError("the 'pure' layout reads the policy's token ids (encode_reference); from text use pure_text")
        if self.layout == "pure_text":
            ids = [*enc.encode(question, add_special_tokens=False), self.marker_id]
            positions = []
            for step in steps:
                ids += [*enc.encode(step.strip(), add_special_tokens=False), self.marker_id]
                positions.append(len(ids) - 1)
            return ids, positions
        # Scores are read where the step token is, so text must not carry it: a step (or question) that writes
        # "<extra_0>" would otherwise move where every later step's score is read.
        body = "".join(self._unmarked(step).strip() + self.step_token for step in steps)
        messages = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": self._unmarked(question)},
            {"role": "assistant", "content": body},
        ]
        text = enc.apply_chat_template(messages, tokenize=False)
        ids = enc.encode(text, add_special_tokens=False)
        positions = [i for i, t in enumerate(ids) if t == self.marker_id]
        if len(positions) != len(steps):
            raise PRMError(
                f"{len(positions)} step tokens in the PRM input for {len(steps)} steps (the chat template or a "
                f"token merge holds {self.step_token!r})"
            )
        return ids, positions

    def encode_reference(self, prompt: str, step_ids: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
        """The PURE reference's PRM input: prompt ids, each step's ids without its boundary token, ``"\\n"``."""
        ids = list(self.tokenizer.encode(prompt, add_special_tokens=False))
        positions = []
        for toks in step_ids:
            toks = [int(t) for t in toks]  # tensors' elements too
            body = toks[:-1] if toks and self._is_boundary(toks[-1]) else toks
            ids += [*body, self.marker_id]
            positions.append(len(ids) - 1)
        return ids, positions

    def _is_boundary(self, token: int) -> bool:
        # The reference's separators: every token whose text ends with "\n\n"; and EOS.
        if token in self._eos_ids:
            return True
        return self.tokenizer.decode([token], skip_special_tokens=False).endswith("\n\n")

    def _unmarked(self, text: str) -> str:
        # Until none is left: one pass over "<extra<extra_0>_0>" would leave a marker it just assembled.
        while self.step_token in text:
            text = text.replace(self.step_token, "")
        return text


def batch_prm_inputs(
    encoded: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, max_length: int
) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Right-padded ``input_ids`` and ``attention_mask`` ``[B, T]`` for encoded solutions, and each one's marker
    positions. An input longer than ``max_length`` keeps its last ``max_length`` tokens; a marker that fell off
    gets position -1 (the scorer reads the oldest kept marker there, the trainer leaves it out)."""
    kept = []
    for ids, pos in encoded:
        cut = max(0, len(ids) - max_length)
        kept.append((list(ids[cut:]), [p - cut if p >= cut else -1 for p in pos]))
    width = max(len(ids) for ids, _ in kept)
    input_ids = torch.full((len(kept), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(kept), width), dtype=torch.long)
    for i, (ids, _) in enumerate(kept):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, : len(ids)] = 1
    return input_ids, attention, [pos for _, pos in kept]


def is_causal_model(model: torch.nn.Module) -> bool:
    """Whether every attention module of ``model`` is causal (a decoder-only backbone: a token's output, so a
    step's score, never depends on later tokens)."""
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return bool(flags) and all(flags)


class HFTokenClassificationPRM(ProcessRewardModel):
    """A 2-way token-classification PRM from transformers, scoring every step in one forward pass.

    The layouts the field uses:

    - ``"pure"`` (PURE-PRM-7B, exactly as the PURE reference code feeds it): the policy's prompt ids, then each
      step's sampled token ids without its boundary token (the one ending in ``"\\n\\n"``, or EOS), then the
      ``"\\n"`` token; a step's score is read at its ``"\\n"``. It needs the PRM to share the policy's tokenizer
      (PURE-PRM-7B and Qwen2.5-Math-7B do) and the env to pass the token ids (it does); the prompt is the
      template-formatted text, which is the policy's prompt when ``env.use_chat_template`` is false, as in the
      paper.
    - ``"pure_text"``: the same PRM from text: the bare question, ``"\\n"``, then each step stripped and followed
      by a ``"\\n"`` token (pieces tokenized separately). Close to TRL's PRMTrainer format, and what
      ``python -m pure_rl.prm train`` trains on; not what PURE-PRM-7B was trained on (on a random model, step
      scores differ from ``"pure"`` by 0.10 on average).
    - ``"qwen"`` (Qwen2.5-Math-PRM): the chat template with the question as user turn and the steps joined by
      a special step token (``<extra_0>``) as assistant turn; scores are read at that token.

    The score is ``p(1) - p(0)`` (``score_mode="difference"``, in ``[-1, 1]``, the spec's choice) or
    ``p(1)`` (``"positive"``). A decoder-only backbone makes the PRM :attr:`prefix_causal`.

    Args:
        model: a ``*ForTokenClassification`` model with 2 labels (or a folder / hub name to load).
        tokenizer: its tokenizer (or a folder / name; defaults to the model's).
        layout: ``"pure"``, ``"pure_text"`` or ``"qwen"``.
        step_token: the Qwen layout's step token.
        system_prompt: the Qwen layout's system turn.
        device, dtype: where and in which precision to run (e.g. ``"cuda:0"``, ``torch.bfloat16``).
        batch_size: solutions per forward pass.
        max_length: longer inputs keep their last ``max_length`` tokens (the latest steps keep their scores;
            the scores of steps whose marker fell off are taken from the oldest kept marker).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        layout: str = "pure",
        step_token: str = "<extra_0>",
        system_prompt: str = "Please reason step by step, and put your final answer within \\boxed{}.",
        score_mode: str = "difference",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
        max_length: int = 4096,
    ):
        from transformers import AutoTokenizer

        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if score_mode not in ("difference", "positive"):
            raise ValueError(f"score_mode must be 'difference' or 'positive', got {score_mode!r}")
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            tokenizer = tokenizer or str(model)
            model = load_trained_prm(str(model), dtype or torch.float32)
        if isinstance(tokenizer, (str, bytes)) or hasattr(tokenizer, "__fspath__"):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        if tokenizer is None:
            raise ValueError("pass the PRM's tokenizer (the policy's tokenizer is never assumed)")
        if getattr(model.config, "num_labels", 2) != 2:
            raise ValueError(f"the PRM head must have 2 labels, this one has {model.config.num_labels}")
        self.model = model.to(device=device, dtype=dtype or next(model.parameters()).dtype).eval()
        self.tokenizer = tokenizer
        self.layout = layout
        self.score_mode = score_mode
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.wants_token_ids = layout == "pure"
        self.prefix_causal = is_causal_model(model)
        eos = getattr(model.config, "eos_token_id", None)
        self.format = PRMInputFormat(
            tokenizer,
            layout,
            step_token=step_token,
            system_prompt=system_prompt,
            eos_token_ids=eos if isinstance(eos, list) else [eos],
        )

    @torch.no_grad()
    def score(
        self,
        questions: Sequence[str],
        steps: Sequence[Sequence[str]],
        *,
        prompts: Sequence[str] | None = None,
        step_token_ids: Sequence[Sequence[Sequence[int]]] | None = None,
    ) -> list[list[float]]:
        if self.layout == "pure":
            if prompts is None or step_token_ids is None:
                raise PRMError(
                    "the 'pure' layout reads the policy's prompt and step token ids (the env passes them); to score "
                    "text alone use layout 'pure_text'"
                )
            encoded = [self.format.encode_reference(p, ids) for p, ids in zip(prompts, step_token_ids)]
        else:
            encoded = [self.format.encode(q, s) for q, s in zip(questions, steps)]
        out: list[list[float]] = []
        for start in range(0, len(encoded), self.batch_size):
            input_ids, attention, positions = batch_prm_inputs(
                encoded[start : start + self.batch_size], self.format.pad_id, self.max_length
            )
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)).logits
            # Each row's score positions gathered on the device, then one transfer to the host per forward pass
            # (an .item() per step would synchronise the device once per step).
            width = max((len(pos) for pos in positions), default=0)
            index = torch.zeros(len(positions), max(1, width), dtype=torch.long)
            for i, pos in enumerate(positions):
                valid = [p for p in pos if p >= 0]
                first = valid[0] if valid else 0
                index[i, : len(pos)] = torch.tensor([p if p >= 0 else first for p in pos], dtype=torch.long)
            scores = step_scores(logits, self.score_mode).gather(1, index.to(logits.device)).cpu().tolist()
            out += [row[: len(pos)] for row, pos in zip(scores, positions)]
        return out


def step_scores(logits: torch.Tensor, score_mode: str = "difference") -> torch.Tensor:
    """Scores ``[B, T]`` from 2-way logits ``[B, T, 2]``: ``p(1) - p(0)`` (difference) or ``p(1)`` (positive)."""
    probs = torch.softmax(logits.float(), dim=-1)
    return probs[..., 1] - probs[..., 0] if score_mode == "difference" else probs[..., 1]
