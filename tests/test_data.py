"""Tasks and datasets: the arithmetic generator, jsonl presets, malformed rows, the problem stream."""

from __future__ import annotations

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
    cfg = load_config("configs/tiny.yaml", ["env.task=jsonl", f"env.dataset={f}"])
    with pytest.raises(DatasetError, match=r"env\.reward_mode=prm\+vr uses the verifier, but no problem"):
        make_env(cfg)
    make_env(load_config("configs/tiny.yaml", ["env.task=jsonl", f"env.dataset={f}", "env.reward_mode=prm"]))
