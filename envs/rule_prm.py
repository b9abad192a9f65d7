"""``ArithmeticRulePRM``: a process reward model for arithmetic word problems that checks every equation.

A step scores ``correct_score`` if every equation it writes holds, ``wrong_score`` if any fails, and
``neutral_score`` if it writes none. Equations are checked with exact rational arithmetic
(``fractions.Fraction``), so ``0.1 + 0.2 = 0.3`` holds and ``7 / 2 = 3`` does not. Chains are read the way
people write running calculations: in ``3 * 4 = 12 + 1 = 13`` each ``=`` holds either strictly or as a
continuation (the next side starts with the value so far, ``12``, and goes on computing).

The neutral score makes this PRM hackable on purpose: a filler step ("Let me think.") earns
``neutral_score`` without risk. Under sum-form credit a policy can farm reward by writing many such steps;
under min-form it cannot (a filler step can only lower the minimum). That is what lets the sum-vs-min
reward-hacking study run on a CPU without a learned PRM.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Sequence
from fractions import Fraction

from envs.prm import ProcessRewardModel
from envs.verifier import last_boxed

__all__ = ["ArithmeticRulePRM", "check_equations", "derived_values"]

_MAX_EXPR_CHARS = 200
_LATEX = [
    (r"\times", "*"),
    (r"\cdot", "*"),
    (r"\div", "/"),
    ("×", "*"),
    ("÷", "/"),
    ("−", "-"),
    (r"\left", ""),
    (r"\right", ""),
    ("$", " "),
    (r"\(", " "),
    (r"\)", " "),
    (r"\[", " "),
    (r"\]", " "),
]
# "3 x 4": an x between two numbers is multiplication.
_TIMES_X = re.compile(r"(?<=\d)\s*[xX]\s*(?=\d)")
# Thousands separators: 1,000 -> 1000.
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Maximal runs of arithmetic characters are the candidate equations.
_RUN = re.compile(r"[0-9.+\-*/()=\s]+")
# A run glued to one of these is a fragment of something else ("x2 = 4", "= 19%", "\\frac{1}{2} = 0.5").
_GLUE = re.compile(r"[\w\\^{}%']")
_LEADING_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*[-+*/]")
_MAX_EXPONENT = 12


def _evaluate(expr: str) -> Fraction | None:
    """Exact value of an arithmetic expression (numbers, + - * /, parentheses), or None if it is not one."""
    expr = expr.strip().rstrip(".").strip()
    if not expr or len(expr) > _MAX_EXPR_CHARS or not re.search(r"\d", expr):
        return None
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return Fraction(ast.get_source_segment(expr, node) or str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            base, exponent = ev(node.left), ev(node.right)
            # Bounded so that "9^9^9" cannot take the machine down.
            if exponent.denominator != 1 or abs(exponent) > _MAX_EXPONENT or abs(base) > 10**6:
                raise ValueError("power out of range")
            return base**exponent.numerator
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            return a / b  # ZeroDivisionError propagates: dividing by zero is a wrong equation
        raise ValueError("not arithmetic")

    try:
        return ev(tree)
    except ValueError:
        return None


def check_equations(text: str) -> list[bool]:
    """Truth of every checkable equation in ``text``, in order (a chain ``a = b = c`` gives one per ``=``).

    A side that is not a plain arithmetic expression (``x = 5``, ``12 apples = 12``) is not checkable and is
    skipped; division by zero makes an equation false.
    """
    return [holds for holds, _ in _equations(text)]


def derived_values(text: str) -> set[Fraction]:
    """Values that ``text`` derives by a true equation: the right side of each ``a = b`` that holds."""
    return {value for holds, value in _equations(text) if holds and value is not None}


def _equations(text: str) -> list[tuple[bool, Fraction | None]]:
    """``(holds, value of the right side)`` for every checkable equation in ``text``."""
    for src, dst in _LATEX:
        text = text.replace(src, dst)
    text = _THOUSANDS.sub("", _TIMES_X.sub("*", text)).replace("^", "**")
    results: list[tuple[bool, Fraction | None]] = []
    for run in _RUN.finditer(text):
        segment = run.group()
        if "=" not in segment:
            continue
        parts = segment.split("=")
        if run.start() > 0 and not segment[0].isspace() and _GLUE.match(text, run.start() - 1):
            parts[0] = ""  # the left side is cut out of a longer expression
        if run.end() < len(text) and not segment[-1].isspace() and _GLUE.match(text, run.end()):
            parts[-1] = ""
        for left, right in itertools.pairwise(parts):
            results.extend(_check_pair(left, right))
    return results


def _check_pair(left: str, right: str) -> list[tuple[bool, Fraction | None]]:
    """``[(holds, right value)]`` for one ``left = right``, or ``[]`` when a side is not checkable."""
    try:
        a, b = _evaluate(left), _evaluate(right)
    except ZeroDivisionError:
        return [(False, None)]
    if a is None or b is None:
        return []
    if a == b:
        return [(True, b)]
    # Running calculation: "3 * 4 = 12 + 1 = 13" continues from 12.
    lead = _LEADING_NUMBER.match(right)
    return [(lead is not None and Fraction(lead.group(1)) == a, b)]


class ArithmeticRulePRM(ProcessRewardModel):
    """Rule-based PRM for arithmetic: equations checked exactly; steps without equations get a neutral score.

    Args:
        correct_score: score of a step whose equations all hold.
        wrong_score: score of a step with a false equation.
        neutral_score: score of a step with no checkable equation (filler, restating, the final answer line).
        answer_check: also judge the final answer line: a step with ``\\boxed{X}`` and no equation scores
            ``correct_score`` if a true equation in the solution so far derives X, else ``wrong_score`` (an
            unsupported guess). Off by default: the answer line is then neutral like any step without equations.
    """

    prefix_causal = True  # a step's score reads that step and (answer_check) the equations before it

    def __init__(
        self,
        correct_score: float = 1.0,
        wrong_score: float = -1.0,
        neutral_score: float = 0.5,
        answer_check: bool = False,
    ):
        for name, v in (
            ("correct_score", correct_score),
            ("wrong_score", wrong_score),
            ("neutral_score", neutral_score),
        ):
            if not -1.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [-1, 1], got {v}")
        self.correct_score = correct_score
        self.wrong_score = wrong_score
        self.neutral_score = neutral_score
        self.answer_check = answer_check

    def score_step(self, step: str, derived: set[Fraction] | None = None) -> float:
        """Score of one step's text; ``derived``: values true equations of the earlier steps derived."""
        checks = check_equations(step)
        if checks:
            return self.correct_score if all(checks) else self.wrong_score
        if self.answer_check and (answer := last_boxed(step)) is not None:
            value = _evaluate(answer.replace(",", ""))
            return self.correct_score if value is not None and value in (derived or set()) else self.wrong_score
        return self.neutral_score

    def score_solution(self, steps: Sequence[str]) -> list[float]:
        """Scores of one solution's steps, in order."""
        scores, derived = [], set()
        for step in steps:
            scores.append(self.score_step(step, derived))
            if self.answer_check:
                derived |= derived_values(step)
        return scores

    def score(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        return [self.score_solution(solution) for solution in steps]
