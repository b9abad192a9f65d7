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
