"""Step-labelled solutions: the jsonl schema every PRM tool reads and writes, and converters from the field's
published formats (PRM800K, Math-Shepherd).

One JSON object per line (docs/prm.md):

.. code-block:: json

    {"id": "gsm8k-12/s0", "question": "Tom has 3 apples ...", "steps": ["3 + 4 = 7.", "So \\\\boxed{7}."],
     "labels": [1, 0], "answer": "7", "source": "monte_carlo"}

- ``question`` (str), ``steps`` (list of str, each step's text), ``labels`` (one per step): ``1``/``0`` (hard:
  the step is correct / wrong), a float in ``[0, 1]`` (soft: the probability it is correct), or ``null`` (not
  labelled: left out of the loss and the metrics, e.g. the steps after PRM800K's first error).
- Optional: ``id`` (default: the file and line), ``answer`` (the reference), ``source``, anything else (kept,
  ignored).

A row that breaks the schema is an error naming the file, the line and the field, never skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CONVERTERS",
    "LabelError",
    "StepLabels",
    "convert_file",
    "from_math_shepherd",
    "from_prm800k",
    "read_step_labels",
    "write_step_labels",
]


class LabelError(ValueError):
    """A step-label file or row breaks the schema (the message names the file, line and field)."""


@dataclass
class StepLabels:
    """One solution with a label per step (``None``: unlabelled)."""

    question: str
    steps: list[str]
    labels: list[float | None]
    id: str = ""
    answer: str | None = None
    source: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        row = {"id": self.id, "question": self.question, "steps": self.steps, "labels": self.labels}
        if self.answer is not None:
            row["answer"] = self.answer
        if self.source is not None:
            row["source"] = self.source
        return {**row, **self.extra}

    @property
    def first_error(self) -> int:
        """Index of the first step labelled wrong (label < 0.5), or -1 when no step is (ProcessBench's label)."""
        return next((k for k, v in enumerate(self.labels) if v is not None and v < 0.5), -1)


def _check_row(row, where: str) -> StepLabels:
    if not isinstance(row, dict):
        raise LabelError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    for key in ("question", "steps", "labels"):
        if key not in row:
            raise LabelError(f"{where}: missing field {key!r} (every row needs question, steps, labels)")
    question, steps, labels = row["question"], row["steps"], row["labels"]
    if not isinstance(question, str):
        raise LabelError(f"{where}: field 'question' must be a string")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise LabelError(f"{where}: field 'steps' must be a non-empty list of strings")
    if not isinstance(labels, list) or len(labels) != len(steps):
        n = len(labels) if isinstance(labels, list) else type(labels).__name__
        raise LabelError(f"{where}: field 'labels' must be a list with one label per step ({len(steps)}), got {n}")
    checked: list[float | None] = []
    for k, v in enumerate(labels):
        if v is None:
            checked.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise LabelError(f"{where}: labels[{k}] = {v!r}; a label is 1 / 0 (hard), a float in [0, 1] or null")
        checked.append(float(v))
    if all(v is None for v in checked):
        raise LabelError(f"{where}: no step is labelled (every label is null)")
    known = {"id", "question", "steps", "labels", "answer", "source"}
    answer = row.get("answer")
    return StepLabels(
        question=question,
        steps=list(steps),
        labels=checked,
        id=str(row.get("id", "")),
        answer=None if answer is None else str(answer),
        source=row.get("source"),
        extra={k: v for k, v in row.items() if k not in known},
    )


def _json_lines(path: Path) -> Iterator[tuple[int, str, object]]:
    """(line number, "file, line N", parsed object) of every non-blank line of a jsonl file."""
    # JSON lines end at "\n" only: str.splitlines() also splits at U+2028 and U+2029, which json.dumps writes raw
    # inside strings (ensure_ascii=False), and would cut a row in two.
    for n, line in enumerate(path.read_text().split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            yield n, where, json.loads(line)
        except json.JSONDecodeError as e:
            raise LabelError(f"{where}: not valid JSON ({e.msg})") from e


def read_step_labels(paths: str | Path | Sequence[str | Path]) -> list[StepLabels]:
    """Every row of one or more step-label jsonl files, checked against the schema."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise LabelError("no step-label files given (pass --labels FILE, or set prm.data)")
    rows: list[StepLabels] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise LabelError(f"step-label file {path} does not exist (make one with python -m pure_rl.prm label)")
        for n, where, raw in _json_lines(path):
            row = _check_row(raw, where)
            row.id = row.id or f"{path.name}:{n}"
            rows.append(row)
    if not rows:
        raise LabelError(f"step-label files {', '.join(map(str, paths))} hold no rows")
    return rows


def write_step_labels(rows: Iterable[StepLabels], path: str | Path, append: bool = False) -> int:
    """Write rows as jsonl (``append``: after what the file holds); returns the number written."""
    n = 0
    with open(path, "a" if append else "w") as f:
        for row in rows:
            f.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n


# --- converters ---------------------------------------------------------------------------------------------


def from_prm800k(row: dict, where: str, neutral: float = 1.0) -> StepLabels | None:
    """One PRM800K labelling (``{"question": {"problem", "ground_truth_answer"}, "label": {"steps": [...],
    "finish_reason"}}``): the path the labeller followed, each step the chosen completion (or the human one) with
    its rating, 1 -> 1, 0 (neutral) -> ``neutral``, -1 -> 0; the path ends at the first -1 (PRM800K's labellers
    stop there). None for a labelling with no rated step (e.g. "bad_problem")."""
    try:
        question = row["question"]["problem"]
        answer = row["question"].get("ground_truth_answer")
        label_steps = row["label"]["steps"]
    except (KeyError, TypeError) as e:
        raise LabelError(f"{where}: not a PRM800K row (needs question.problem and label.steps; missing {e})") from e
    steps, labels = [], []
    for k, step in enumerate(label_steps):
        chosen, human = step.get("chosen_completion"), step.get("human_completion")
        completions = step.get("completions") or []
        if chosen is not None:
            pick = completions[chosen]
        elif human is not None:
            pick = human
        else:  # the labeller stopped here: the step they rated -1 is the error
            pick = next((c for c in completions if c.get("rating") == -1), None)
            if pick is None:
                break
        rating = pick.get("rating")
        if rating is None and pick is human:
            rating = 1  # a human-written step is correct by construction
        if rating not in (-1, 0, 1):
            raise LabelError(f"{where}: label.steps[{k}] has rating {rating!r}; PRM800K ratings are -1, 0, 1")
        steps.append(pick["text"])
        labels.append({1: 1.0, 0: float(neutral), -1: 0.0}[rating])
        if rating == -1:
            break
    if not steps:
        return None
    return StepLabels(question=question, steps=steps, labels=labels, answer=answer, source="prm800k")


MATH_SHEPHERD_TAG = "ки"


def from_math_shepherd(row: dict, where: str) -> StepLabels:
    """One Math-Shepherd row (``{"input": "question Step 1: ... ки\\nStep 2: ... ки", "label": the same text with
    each ``ки`` replaced by ``+`` or ``-``, "task"}``): the question is the text before ``Step 1:``, each step
    the text up to its tag, ``+`` -> 1, ``-`` -> 0."""
    try:
        text, label_text = row["input"], row["label"]
    except (KeyError, TypeError) as e:
        raise LabelError(f"{where}: not a Math-Shepherd row (needs input and label; missing {e})") from e
    pieces = text.split(MATH_SHEPHERD_TAG)
    if len(pieces) < 2:
        raise LabelError(f"{where}: the input has no step tag {MATH_SHEPHERD_TAG!r}")
    head = pieces[0]
    cut = head.find("Step 1:")
    question, first = (head[:cut], head[cut:]) if cut >= 0 else ("", head)
    steps, labels = [], []
    offset = 0
    for k, piece in enumerate(pieces[:-1]):
        offset += len(piece)
        # The k earlier tags each became one label character: the label sits after the pieces and those k.
        mark = label_text[offset + k] if offset + k < len(label_text) else ""
        if not mark or mark not in "+-":
            raise LabelError(f"{where}: step {k + 1}: expected '+' or '-' in the label text, found {mark!r}")
        steps.append((first if k == 0 else piece).strip())
        labels.append(1.0 if mark == "+" else 0.0)
    return StepLabels(
        question=question.strip(), steps=steps, labels=labels, source=f"math_shepherd:{row.get('task', '')}"
    )


CONVERTERS = {"prm800k": from_prm800k, "math_shepherd": from_math_shepherd}


def convert_file(fmt: str, src: str | Path, out: str | Path) -> tuple[int, int]:
    """Convert a jsonl file in a published format to the schema; returns (rows written, rows without labels)."""
    if fmt not in CONVERTERS:
        raise LabelError(f"unknown format {fmt!r}; one of {sorted(CONVERTERS)}")
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise LabelError(f"{src} does not exist")
    if out.exists() and out.resolve() == src.resolve():
        raise LabelError(f"--out {out} is the source file: converting in place would destroy it; choose another --out")
    if out.exists():
        raise LabelError(f"--out {out} already exists: pure-rl never replaces a file; remove it or choose another")
    rows, skipped = [], 0
    for n, where, raw in _json_lines(src):
        row = CONVERTERS[fmt](raw, where)
        if row is None:
            skipped += 1
            continue
        row.id = row.id or f"{src.stem}:{n}"
        _check_row(row.to_json(), where)
        rows.append(row)
    return write_step_labels(rows, out), skipped
