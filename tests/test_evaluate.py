"""``python -m pure_rl.evaluate``: greedy held-out accuracy, and sampled accuracy / pass@K with --samples."""

from __future__ import annotations

import pytest

from pure_rl.evaluate import main


def test_evaluate_reports_greedy_and_sampled_accuracy(warm_tiny_path):
    args = ["--config", "configs/tiny.yaml", "--problems", "3", f"policy.model={warm_tiny_path}"]
    greedy_only = main(args)
    result = main(["--samples", "4", *args, "policy.temperature=1.0"])
    assert set(greedy_only) == {k for k in result if not k.startswith("eval_sampled_")}
    # The greedy part does not depend on the sampling temperature or on --samples.
    assert {k: result[k] for k in greedy_only} == greedy_only
    acc, pass_at = result["eval_sampled_accuracy"], result["eval_sampled_pass_at_n"]
    # 3 problems x 4 samples: accuracy in twelfths, pass@4 in thirds, and a solved problem is one any sample solved.
    assert (acc * 12) == pytest.approx(round(acc * 12)) and (pass_at * 3) == pytest.approx(round(pass_at * 3))
    assert acc <= pass_at <= min(1.0, 4 * acc)


def test_evaluate_rejects_negative_samples():
    with pytest.raises(SystemExit, match="--samples must be >= 0"):
        main(["--config", "configs/tiny.yaml", "--samples", "-1"])


def test_a_small_held_out_set_is_scored_once_per_problem():
    # 30 AIME problems with train.eval_prompts 500: a batch of 30, not 500 wrapping around the set.
    from envs import make_env
    from pure_rl.config import load_config

    cfg = load_config("configs/tiny.yaml", ["env.eval_dataset=aime24", "train.eval_prompts=500"])
    env = make_env(cfg, split="eval")
    assert env.batch_size[0] == 30
    ids = [env.stream.next(1)[0].id for _ in range(30)]
    assert len(set(ids)) == 30


def test_olympiadbench_answers_are_lists_and_several_values_must_all_be_given():
    from envs.datasets import load_dataset
    from envs.verifier import MathVerifier

    problems = [p for p in map(load_dataset("olympiadbench").problem, range(675))]
    by_answer = {p.answer: p for p in problems}
    assert len(problems) == 675 and all(p.answer for p in problems)
    assert not [p.answer for p in problems if "$" in p.answer or p.answer.startswith("['")]  # intervals stay
    verifier = MathVerifier()
    several = by_answer["69,84"]  # written "69$,$84" in the file
    assert verifier.verify(r"so \boxed{84, 69}", several.answer)
    assert not verifier.verify(r"so \boxed{69}", several.answer)
    assert verifier.verify(r"\boxed{5, 3, 1}", "1,3,5") and not verifier.verify(r"\boxed{1}", "1,3,5")


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_the_papers_benchmark_table_for_a_full_and_a_lora_run(tmp_path, warm_tiny_path, lora, capsys):
    from pure_rl.config import load_config
    from pure_rl.evaluate import PAPER_BENCHMARKS
    from pure_rl.train import train

    extra = ["lora.rank=4"] if lora else []
    cfg = load_config("configs/tiny.yaml", ["train.iterations=1", f"policy.model={warm_tiny_path}", *extra])
    train(cfg, tmp_path / "run")
    result = main(["--run-dir", str(tmp_path / "run"), "--benchmarks", "paper", "--problems", "3"])
    assert tuple(result) == PAPER_BENCHMARKS
    assert all(r["problems"] == 3 and 0 <= r["eval_accuracy"] <= 1 for r in result.values())
    table = capsys.readouterr().out
    assert "| aime24 (3) | amc23 (3) | math500 (3) | minerva (3) | olympiadbench (3) | average |" in table
    with pytest.raises(SystemExit, match="not a dataset preset"):
        main(["--run-dir", str(tmp_path / "run"), "--benchmarks", "math5000"])
