"""jsonl datasets mapped to ``Problem`` by field names, with presets for the benchmark files shipped in
``envs/data`` (MATH-500, GSM8K, AIME24, AMC23, Minerva; see its README for sources and licence).

A malformed row stops loading with an error naming the file, the line and the field; a row without a
reference answer is kept (it gets no verifiable reward).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envs.tasks import Problem
from envs.verifier import last_boxed

__all__ = ["DATA_DIR", "PRESETS", "DatasetError", "DatasetPreset", "JsonlDataset", "check_dataset", "load_dataset"]

DATA_DIR = Path(__file__).resolve().parent / "data"


class DatasetError(ValueError):
    """A dataset file is missing or one of its rows is malformed."""


def _gsm8k_answer(raw: object) -> str | None:
    if not isinstance(raw, str) or "####" not in raw:
        raise ValueError("expected a GSM8K solution ending in '#### <number>'")
    return raw.rsplit("####", 1)[1].strip().replace(",", "")


def _number_answer(raw: object) -> str | None:
    # AMC23 stores answers as floats (27.0): write integers without the ".0".
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


def _boxed_answer(raw: object) -> str | None:
    if not isinstance(raw, str):
        raise ValueError("expected a solution string")
    answer = last_boxed(raw)
    if answer is None:
        raise ValueError("the solution has no \\boxed{} answer")
    return answer


@dataclass(frozen=True)
class DatasetPreset:
    """Field mapping of one dataset format."""

    path: str
    question_field: str
    answer_field: str | None
    answer_parser: Callable[[object], str | None] | None = None
    id_field: str | None = None


PRESETS: dict[str, DatasetPreset] = {
    "math500": DatasetPreset("math500/test.jsonl", "problem", "answer", None, "unique_id"),
    "gsm8k": DatasetPreset("gsm8k/test.jsonl", "question", "answer", _gsm8k_answer, "idx"),
    "aime24": DatasetPreset("aime24/test.jsonl", "problem", "answer", _number_answer, "id"),
    "amc23": DatasetPreset("amc23/test.jsonl", "question", "answer", _number_answer, "id"),
    "minerva": DatasetPreset("minerva_math/test.jsonl", "problem", "solution", _boxed_answer),
}


class JsonlDataset:
    """Problems from a jsonl file, one JSON object per line, mapped by field names.

    Args:
        path: the jsonl file.
        question_field: field holding the question text (required in every row).
        answer_field: field holding the reference answer; None, or a missing/null value in a row, means
            no reference (no verifiable reward for that problem).
        answer_parser: turns the raw field value into the reference string (raise ValueError if malformed).
        id_field: field holding a row id (defaults to the line number).
    """

    def __init__(
        self,
        path: str | Path,
        question_field: str = "question",
        answer_field: str | None = "answer",
        answer_parser: Callable[[object], str | None] | None = None,
        id_field: str | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"dataset file {self.path} does not exist")
        self.problems: list[Problem] = []
        for lineno, raw in enumerate(self.path.read_bytes().splitlines(), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(
                    f"{self.path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                    "re-encode the file as UTF-8"
                ) from e
            if not line.strip():
                continue
            self.problems.append(self._row(line, lineno, question_field, answer_field, answer_parser, id_field))
        if not self.problems:
            raise DatasetError(f"dataset file {self.path} has no rows")

    def _row(self, line, lineno, question_field, answer_field, answer_parser, id_field) -> Problem:
        where = f"{self.path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
        question = row.get(question_field)
        if not isinstance(question, str) or not question.strip():
            raise DatasetError(
                f"{where}: field {question_field!r} must be a non-empty string "
                f"(got {question!r}; fields present: {sorted(row)})"
            )
        answer = None
        if answer_field is not None and row.get(answer_field) is not None:
            raw = row[answer_field]
            try:
                answer = answer_parser(raw) if answer_parser else str(raw)
            except ValueError as e:
                raise DatasetError(f"{where}: field {answer_field!r} is malformed: {e} (got {str(raw)[:80]!r})") from e
        row_id = str(row.get(id_field, lineno)) if id_field else str(lineno)
        return Problem(question=question, answer=answer, id=f"{self.path.stem}:{row_id}")

    def __len__(self) -> int:
        return len(self.problems)

    def problem(self, index: int) -> Problem:
        return self.problems[index]


def load_dataset(name_or_path: str) -> JsonlDataset:
    """A preset by name (``math500``, ``gsm8k``, ``aime24``, ``amc23``, ``minerva``) or a jsonl path with
    ``question`` / ``answer`` fields."""
    if name_or_path in PRESETS:
        p = PRESETS[name_or_path]
        return JsonlDataset(DATA_DIR / p.path, p.question_field, p.answer_field, p.answer_parser, p.id_field)
    path = Path(name_or_path)
    if path.suffix != ".jsonl":
        if not path.is_file():
            close = difflib.get_close_matches(name_or_path, PRESETS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DatasetError(
                f"unknown dataset {name_or_path!r}{hint}: use a preset ({', '.join(PRESETS)}) or a .jsonl path"
            )
        raise DatasetError(
            f"dataset file {path}: unsupported format {path.suffix or '(no suffix)'!r}; a dataset is a .jsonl file, "
            "one JSON object per line with 'question' and 'answer' fields"
        )
    return JsonlDataset(path)


def check_dataset(name_or_path: str) -> bool:
    """True if ``name_or_path`` is a preset or an existing ``.jsonl`` file, else :class:`DatasetError` saying which
    (cheap: the file is not read; config validation, so ``--dry-run``, calls it)."""
    if name_or_path in PRESETS:
        return True
    path = Path(name_or_path)
    if path.suffix == ".jsonl" and not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist")
    if path.suffix != ".jsonl":
        load_dataset(name_or_path)  # raises the unknown-name or unsupported-format error
    return True
