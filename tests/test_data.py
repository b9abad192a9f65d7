"""Tasks and datasets: the arithmetic generator, jsonl presets, malformed rows, the problem stream."""

from __future__ import annotations

import json

import pytest

from envs.datasets import PRESETS, DatasetError, JsonlDataset, load_dataset
from envs.tasks import ArithmeticTask, ProblemStream
from envs.verifier import MathVerifier


@pytest.mark.parametrize(
    "name,rows", [("math500", 500), ("gsm8k", 1319), ("aime24", 30), ("amc23", 40), ("minerva", 272)]
)
def test_presets_load_with_references(name, rows):
    ds = load_dataset(name)
    assert len(ds) == rows and name in PRESETS
    assert all(p.question and p.answer for p in ds.problems)


def test_preset_answer_parsing():
    assert load_dataset("gsm8k").problem(0).answer == "18"
    assert load_dataset("amc23").problem(0).answer == "27"
    assert load_dataset("minerva").problem(0).answer == "1.6"


def test_malformed_rows_name_file_line_and_field(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "ok?", "answer": "1"}\n{"question": \n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: not valid JSON"):
        JsonlDataset(f)
    f.write_text('{"question": "ok?", "answer": "1"}\n\n{"prompt": "where is the question?"}\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:3: field 'question' must be a non-empty string"):
        JsonlDataset(f)
    f.write_text("[1, 2]\n")
    with pytest.raises(DatasetError, match=r"bad\.jsonl:1: expected a JSON object"):
        JsonlDataset(f)
    f.write_text('{"question": "q", "answer": "no hashes"}\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:1: field 'answer' is malformed"):
        JsonlDataset(f, answer_parser=PRESETS["gsm8k"].answer_parser)
    with pytest.raises(DatasetError, match="does not exist"):
        JsonlDataset(tmp_path / "missing.jsonl")
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("math5000")


def test_missing_reference_is_allowed(tmp_path):
    f = tmp_path / "free.jsonl"
    f.write_text('{"question": "a?"}\n{"question": "b?", "answer": null}\n{"question": "c?", "answer": 3}\n')
    ds = JsonlDataset(f)
    assert [p.answer for p in ds.problems] == [None, None, "3"]


def test_arithmetic_task_is_seeded_and_correct():
    verifier = MathVerifier()
    for level in range(1, 6):
        task = ArithmeticTask(level, seed=1)
        assert task.problem(7) == ArithmeticTask(level, seed=1).problem(7)
        assert task.problem(7) != ArithmeticTask(level, seed=2).problem(7)
        for i in range(30):
            p = task.problem(i)
            assert int(p.answer) >= 0
            assert verifier.verify(p.solution, p.answer)
    with pytest.raises(ValueError, match="difficulty"):
        ArithmeticTask(9)


def test_difficulty_grows():
    def mean_ops(level):
        return sum(ArithmeticTask(level).problem(i).question.count("Then") for i in range(50)) / 50

    assert mean_ops(1) < mean_ops(3) < mean_ops(5)


def test_stream_epochs_shuffle_and_resume():
    ds = load_dataset("aime24")
    stream = ProblemStream(ds, seed=3)
    first = [p.id for p in stream.next(30)]
    assert sorted(first) == sorted(p.id for p in ds.problems)  # one epoch sees every problem once
    second = [p.id for p in stream.next(30)]
    assert sorted(second) == sorted(first) and second != first  # a new order next epoch
    state = stream.state_dict()
    upcoming = [p.id for p in stream.next(5)]
    other = ProblemStream(ds, seed=0)
    other.load_state_dict(state)
    assert [p.id for p in other.next(5)] == upcoming


def test_a_non_utf8_byte_names_the_file_and_line(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{"question": "a?", "answer": 1}\n{"question": "caf\xe9?", "answer": 2}\n')
    with pytest.raises(DatasetError, match=r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 18\)"):
        JsonlDataset(f)


def test_a_csv_file_is_an_unsupported_format_and_a_typo_gets_a_suggestion(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("question,answer\na?,1\n")
    with pytest.raises(DatasetError, match=r"unsupported format '\.csv'"):
        load_dataset(str(f))
    with pytest.raises(DatasetError, match=r"unknown dataset 'gsm8kk'; did you mean 'gsm8k'"):
        load_dataset("gsm8kk")


def test_verifiable_reward_on_a_dataset_without_any_answer_is_an_error(tmp_path):
    from envs import make_env
    from pure_rl.config import load_config

    f = tmp_path / "free.jsonl"
    f.write_text('{"question": "a?"}\n{"question": "b?"}\n')
    cfg = load_config("configs/tiny.yaml", ["env.task=dataset", f"env.dataset={f}"])
    with pytest.raises(DatasetError, match=r"env\.reward_mode=prm\+vr uses the verifier, but no problem"):
        make_env(cfg)
    make_env(load_config("configs/tiny.yaml", ["env.task=dataset", f"env.dataset={f}", "env.reward_mode=prm"]))


def test_parquet_and_json_files_load_through_the_datasets_library_with_field_mapping_and_a_filter(tmp_path):
    import datasets

    from envs.datasets import FieldMap

    rows = {
        "problem": ["1 + 1?", "2 + 2?", "3 + 3?"],
        "solution_value": ["2", "4", "6"],
        "level": ["Level 1", "Level 3", "Level 5"],
    }
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "math.parquet"))
    (tmp_path / "math.json").write_text(json.dumps([dict(zip(rows, v)) for v in zip(*rows.values())]))
    fields = FieldMap(question="problem", answer="solution_value", filter_field="level",
                      filter_values=("Level 3", "Level 5"))  # fmt: skip
    for name in ("math.parquet", "math.json"):
        ds = load_dataset(str(tmp_path / name), fields)
        assert [(p.question, p.answer) for p in ds.problems] == [("2 + 2?", "4"), ("3 + 3?", "6")], name
    with pytest.raises(DatasetError, match=r"math\.parquet row 0: field 'question' must be a non-empty string"):
        load_dataset(str(tmp_path / "math.parquet"))
    with pytest.raises(DatasetError, match=r"has no rows after keeping level in \['Level 9'\]"):
        load_dataset(str(tmp_path / "math.json"), FieldMap("problem", filter_field="level", filter_values=("Level 9",)))


def test_the_dataset_task_reads_field_keys_from_the_config(tmp_path):
    from envs import make_source
    from pure_rl.config import load_config

    f = tmp_path / "rows.jsonl"
    f.write_text('{"q": "a?", "a": 1, "lvl": 3}\n{"q": "b?", "a": 2, "lvl": 1}\n')
    cfg = load_config(
        "configs/tiny.yaml",
        ["env.task=dataset", f"env.dataset={f}", "env.question_field=q", "env.answer_field=a",
         "env.filter_field=lvl", "env.filter_values=['3']"],
    )  # fmt: skip
    source = make_source(cfg)
    assert [(p.question, p.answer) for p in source.problems] == [("a?", "1")]


def test_a_hub_name_without_a_hub_is_a_clear_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DatasetError, match=r"could not load someone/math-prompts with the datasets library.*download"):
        load_dataset("someone/math-prompts")


def test_two_rows_with_one_id_are_refused_naming_both(tmp_path):
    from envs.datasets import FieldMap

    f = tmp_path / "dup.jsonl"
    f.write_text('{"id": "a", "question": "q1", "answer": "1"}\n{"id": "b", "question": "q2", "answer": "2"}\n'
                 '{"id": "a", "question": "q3", "answer": "3"}\n')  # fmt: skip
    with pytest.raises(DatasetError, match=r"dup\.jsonl:3: id .*a' was already given to .*dup\.jsonl:1"):
        JsonlDataset(f, fields=FieldMap(id="id"))
    assert len(JsonlDataset(f)) == 3  # without an id field the rows are numbered


def test_an_answer_that_is_a_json_object_or_list_is_refused_naming_the_row(tmp_path):
    f = tmp_path / "objects.jsonl"
    f.write_text('{"question": "q1", "answer": "1"}\n{"question": "q2", "answer": {"value": 5}}\n')
    with pytest.raises(DatasetError, match=r"objects\.jsonl:2: field 'answer' holds a JSON dict"):
        JsonlDataset(f)
    f.write_text('{"question": "q1", "answer": [1, 2]}\n')
    with pytest.raises(DatasetError, match=r"objects\.jsonl:1: field 'answer' holds a JSON list .*olympiadbench"):
        JsonlDataset(f)
