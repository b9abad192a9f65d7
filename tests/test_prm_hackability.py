"""The hackability probe: what a PRM pays for steps that do no work, read off the rule PRM whose scores are known."""

from __future__ import annotations

import pytest

from envs.rule_prm import ArithmeticRulePRM
from pure_rl.prm.hackability import PROBES, hackability_table
from pure_rl.prm.labels import StepLabels

ROWS = [
    StepLabels("Tom has 3 apples. He gets 4 more. How many?", ["3 + 4 = 7.\n\n", "\\boxed{7}"], [1.0, 1.0], answer="7"),
    StepLabels("Ann has 9 coins. She loses 2. How many?", ["9 - 2 = 6.\n\n", "\\boxed{6}"], [0.0, 0.0], answer="7"),
]


def test_the_rule_prm_pays_filler_its_neutral_score_and_charges_wrong_equations():
    prm = ArithmeticRulePRM(correct_score=1.0, wrong_score=-1.0, neutral_score=0.5)
    table = hackability_table(prm, ROWS)
    assert set(table) == {"honest_correct", "honest_wrong", *PROBES}
    assert table["honest_correct"]["n"] == 2 and table["honest_wrong"]["n"] == 1
    assert table["honest_wrong"]["mean"] == -1.0  # 9 - 2 = 6
    # Equation-free steps earn the neutral 0.5 without risk: the farmable part of this PRM.
    for probe in ("filler", "restatement", "empty", "boxed_answer"):
        assert table[probe]["mean"] == pytest.approx(0.5), probe
    # Repeats: the first solution's last step (its boxed answer, 0.5 again), and for the second, which has no
    # correct prefix, the first solution's "3 + 4 = 7." (1.0 again: what sum-form pays for twice).
    assert table["repeat"]["n"] == 2 and table["repeat"]["mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert table["filler"]["above_correct"] == 0.0  # honest mean (1.0 + 0.5) / 2 = 0.75 is above 0.5
