"""jsonl datasets mapped to ``Problem`` by field names, with presets for the benchmark files shipped in
``envs/data`` (MATH-500, GSM8K, AIME24, AMC23, Minerva; see its README for sources and licence).

Other problem sets load through the ``datasets`` library (``.json``, ``.parquet``, or a hub name ``org/name`` where
a hub is reachable), with the field mapping and row filter of :class:`FieldMap`. A malformed row stops loading
with an error naming the file, the line (or row) and the field; a row without a reference answer is kept (it
gets no verifiable reward).
"""

from __future__ import annotations

import ast
import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envs.tasks import Problem
from envs.verifier import last_boxed

__all__ = [
    "ANSWER_PARSERS",
    "DATA_DIR",
    "PRESETS",
    "DatasetError",
    "DatasetPreset",
    "FieldMap",
    "JsonlDataset",
    "RowDataset",
    "check_dataset",
    "load_dataset",
]

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


def _answer_list(value) -> str | None:
    """OlympiadBench's ``final_answer``: a list (or a Python-style list written as text, ``"['2']"``) of the
    answer's values; several values become one comma-separated answer (``"3, 5"``), which math-verify reads as
    a set, so a response must give them all, in any order."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            return value.strip() or None
    if isinstance(value, (list, tuple)):
        parts = [str(v).replace("$", "").strip() for v in value if str(v).replace("$", "").strip()]
        return ", ".join(parts) or None
    return None if value is None else str(value).strip() or None


# How a file's answer field becomes the reference answer (``env.answer_format``).
ANSWER_PARSERS: dict[str, Callable[[object], str | None] | None] = {
    "text": None,
    "boxed": _boxed_answer,
    "gsm8k": _gsm8k_answer,
}


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
    "olympiadbench": DatasetPreset("olympiadbench/test.jsonl", "question", "final_answer", _answer_list, "id"),
}


@dataclass(frozen=True)
class FieldMap:
    """How a row becomes a :class:`~envs.tasks.Problem`, and which rows to keep.

    ``question``: the field holding the question (required, a non-empty string); ``answer``: the reference
    answer's field (None, or a missing/null value in a row: no reference, so no verifiable reward); ``id``: a row
    id field (default: the row number); ``filter_field`` / ``filter_values``: keep only rows whose field, as text,
    is one of the values (e.g. MATH's ``level`` in ``["3", "4", "5"]``).
    """

    question: str = "question"
    answer: str | None = "answer"
    id: str | None = None
    answer_parser: Callable[[object], str | None] | None = None
    filter_field: str | None = None
    filter_values: tuple[str, ...] = ()


class RowDataset:
    """Problems from rows (mappings), mapped by a :class:`FieldMap`; every error names the row's place.

    Args:
        rows: ``(where, row)`` pairs, ``where`` naming the row for errors (``"file.jsonl:12"``).
        fields: the field mapping and filter.
        name: the dataset's name (problem ids are ``name:row id``).
    """

    def __init__(self, rows, fields: FieldMap, name: str):
        self.name = name
        self.problems: list[Problem] = []
        first_seen: dict[str, str] = {}
        for n, (where, row) in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if fields.filter_field is not None and str(row.get(fields.filter_field)) not in fields.filter_values:
                continue
            problem = self._problem(where, n, row, fields)
            if problem.id in first_seen:
                # One id for two problems: a resumed labelling or evaluation would take one for the other.
                raise DatasetError(
                    f"{where}: id {problem.id!r} was already given to {first_seen[problem.id]}; ids must be unique "
                    f"(fix the {fields.id!r} field, or leave env.id_field unset to number the rows)"
                )
            first_seen[problem.id] = where
            self.problems.append(problem)
        if not self.problems:
            kept = (
                f" after keeping {fields.filter_field} in {list(fields.filter_values)}" if fields.filter_field else ""
            )
            raise DatasetError(f"dataset {name} has no rows{kept}")

    def _problem(self, where: str, n: int, row: dict, fields: FieldMap) -> Problem:
        question = row.get(fields.question)
        if not isinstance(question, str) or not question.strip():
            raise DatasetError(
                f"{where}: field {fields.question!r} must be a non-empty string "
                f"(got {question!r}; fields present: {sorted(row)})"
            )
        answer = None
        if fields.answer is not None and row.get(fields.answer) is not None:
            raw = row[fields.answer]
            if isinstance(raw, dict) or (isinstance(raw, list) and fields.answer_parser is None):
                # str() of these ("{'value': 5}") is a reference nothing can match.
                raise DatasetError(
                    f"{where}: field {fields.answer!r} holds a JSON {type(raw).__name__} ({str(raw)[:80]}); a "
                    "reference answer is text or a number (OlympiadBench-style lists of several values: the "
                    "'olympiadbench' preset)"
                )
            try:
                answer = fields.answer_parser(raw) if fields.answer_parser else str(raw)
            except ValueError as e:
                raise DatasetError(f"{where}: field {fields.answer!r} is malformed: {e} (got {str(raw)[:80]!r})") from e
        row_id = str(row.get(fields.id, n)) if fields.id else str(n)
        return Problem(question=question, answer=answer, id=f"{self.name}:{row_id}")

    def __len__(self) -> int:
        return len(self.problems)

    def problem(self, index: int) -> Problem:
        return self.problems[index]


class JsonlDataset(RowDataset):
    """Problems from a jsonl file, one JSON object per line, mapped by field names (see :class:`FieldMap`).

    Args:
        path: the jsonl file.
        question_field, answer_field, answer_parser, id_field: the :class:`FieldMap` fields.
        fields: a whole :class:`FieldMap` instead (filters included).
    """

    def __init__(
        self,
        path: str | Path,
        question_field: str = "question",
        answer_field: str | None = "answer",
        answer_parser: Callable[[object], str | None] | None = None,
        id_field: str | None = None,
        fields: FieldMap | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"dataset file {self.path} does not exist")
        fields = fields or FieldMap(question_field, answer_field, id_field, answer_parser)
        super().__init__(self._rows(), fields, self.path.stem)

    def _rows(self):
        for lineno, raw in enumerate(self.path.read_bytes().splitlines(), start=1):
            where = f"{self.path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(
                    f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                    "re-encode the file as UTF-8"
                ) from e
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e


# Formats the datasets library reads for us (besides jsonl, which we read with line-exact errors).
LIBRARY_FORMATS = {".json": "json", ".parquet": "parquet"}


def _library_rows(builder: str, split: str, label: str, **kwargs):
    try:
        import datasets
    except ImportError as e:
        raise DatasetError(f"loading {label} needs the datasets library: pip install datasets") from e
    try:
        table = datasets.load_dataset(builder, split=split, **kwargs)
    except Exception as e:  # no hub, a missing split, a malformed file: say which dataset and why
        raise DatasetError(
            f"could not load {label} with the datasets library ({type(e).__name__}: {str(e)[:300]}). Where no hub is "
            "reachable, download it elsewhere, save it with .to_json('rows.jsonl'), and pass that file"
        ) from e
    return ((f"{label} row {i}", dict(row)) for i, row in enumerate(table))


def load_dataset(name_or_path: str, fields: FieldMap | None = None, split: str = "train") -> RowDataset:
    """A problem set: a preset (``math500``, ``gsm8k``, ``aime24``, ``amc23``, ``minerva``: the shipped files with
    their field mapping), a ``.jsonl`` / ``.json`` / ``.parquet`` file, or a ``datasets`` hub name ``org/name``
    (its ``split``), mapped by ``fields`` (default: ``question`` / ``answer``)."""
    if name_or_path in PRESETS:
        p = PRESETS[name_or_path]
        preset = FieldMap(p.question_field, p.answer_field, p.id_field, p.answer_parser)
        if fields is not None:  # a filter given with a preset applies to the preset's rows
            preset = FieldMap(**{**preset.__dict__, "filter_field": fields.filter_field,
                                 "filter_values": fields.filter_values})  # fmt: skip
        return JsonlDataset(DATA_DIR / p.path, fields=preset)
    fields = fields or FieldMap()
    path = Path(name_or_path)
    if path.suffix == ".jsonl":
        return JsonlDataset(path, fields=fields)
    if path.suffix in LIBRARY_FORMATS:
        if not path.is_file():
            raise DatasetError(f"dataset file {path} does not exist")
        rows = _library_rows(LIBRARY_FORMATS[path.suffix], "train", str(path), data_files=str(path))
        return RowDataset(rows, fields, path.stem)
    if path.is_file():
        raise DatasetError(
            f"dataset file {path}: unsupported format {path.suffix or '(no suffix)'!r}; use .jsonl (one JSON object "
            "per line), .json or .parquet"
        )
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")):
        return RowDataset(_library_rows(name_or_path, split, name_or_path), fields, name_or_path.rsplit("/", 1)[-1])
    close = difflib.get_close_matches(name_or_path, PRESETS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise DatasetError(
        f"unknown dataset {name_or_path!r}{hint}: use a preset ({', '.join(PRESETS)}), a .jsonl/.json/.parquet "
        "file, or a datasets hub name such as 'org/name'"
    )


def check_dataset(name_or_path: str) -> bool:
    """True if ``name_or_path`` can name a dataset: a preset, an existing file of a readable format, or a hub name
    (``org/name``, which only loading can check); else :class:`DatasetError` saying why. Cheap: nothing is read
    (config validation, so ``--dry-run``, calls it)."""
    if name_or_path in PRESETS:
        return True
    path = Path(name_or_path)
    if path.suffix in (".jsonl", *LIBRARY_FORMATS):
        if not path.is_file():
            raise DatasetError(f"dataset file {path} does not exist")
        return True
    if path.is_file() or "/" not in name_or_path or name_or_path.startswith((".", "/", "~")):
        load_dataset(name_or_path)  # raises the unsupported-format or unknown-name error
    return True
