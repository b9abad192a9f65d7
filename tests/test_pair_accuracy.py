"""The pair-accuracy readings of a best-of-N file (pure_rl.experiments.pair_accuracy)."""

from __future__ import annotations

import random

import pytest

from pure_rl.best_of_n import within_problem_accuracy
from pure_rl.experiments.pair_accuracy import pair_accuracy_report


def sample(problem: int, correct: bool, score: float) -> dict:
    return {"problem": problem, "scores": [0.5, score], "correct": correct}


def test_all_pairs_equal_the_best_of_n_report_and_full_subsets_change_nothing():
    rng = random.Random(1)
    samples = [sample(p, rng.random() < 0.4, rng.uniform(-1, 1)) for p in range(20) for _ in range(16)]
    report = pair_accuracy_report(samples, subset=16, draws=5)
    # The reference, written the obvious way: every (correct, wrong) pair of one problem, ties half.
    wins = pairs = 0.0
    for a in samples:
        for b in samples:
            if a["problem"] == b["problem"] and a["correct"] and not b["correct"]:
                wins += (min(a["scores"]) > min(b["scores"])) + 0.5 * (min(a["scores"]) == min(b["scores"]))
                pairs += 1
    assert report["all_pairs"]["accuracy"] == pytest.approx(wins / pairs)
    assert within_problem_accuracy(samples, ["min"])["min"] == pytest.approx(wins / pairs)
    # Subsets as large as the problem are the problem itself, in another order.
    assert report["subsets_of_16"]["accuracy"] == pytest.approx(report["all_pairs"]["accuracy"])


def test_problems_are_binned_by_their_share_of_correct_samples():
    # A hard problem (1 of 4 right) ranked right, an easy one (3 of 4 right) ranked wrong.
    hard = [sample(0, True, 0.9), *(sample(0, False, 0.1) for _ in range(3))]
    easy = [sample(1, False, 0.9), *(sample(1, True, 0.1) for _ in range(3))]
    bins = pair_accuracy_report(hard + easy, subset=4, draws=3)["by_problem_accuracy"]
    assert bins["1-25%"] == {"accuracy": 1.0, "pairs": 3, "problems": 1}
    assert bins["51-75%"] == {"accuracy": 0.0, "pairs": 3, "problems": 1}


def test_small_subsets_pool_only_problems_that_keep_both_kinds():
    # One right answer among 16: a 4-sample subset holds it a quarter of the time.
    samples = [sample(0, True, 0.9), *(sample(0, False, 0.1) for _ in range(15))]
    report = pair_accuracy_report(samples, subset=4, draws=400, seed=3)
    assert report["subsets_of_4"]["accuracy"] == 1.0
    assert report["subsets_of_4"]["problems_with_both_per_draw"] == pytest.approx(0.25, abs=0.06)
