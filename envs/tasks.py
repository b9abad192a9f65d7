"""Where questions come from: the ``Problem`` record, the source interface, and the arithmetic generator.

A problem source is indexable and deterministic: ``source.problem(i)`` is the same problem for the same
seed and index, so a data position is one integer (what checkpoints save to resume exactly).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

__all__ = ["ArithmeticTask", "CopyNumberTask", "Problem", "ProblemSource", "ProblemStream"]


@dataclass(frozen=True)
class Problem:
    """One question. ``answer`` is None when no reference is known (then there is no verifiable reward)."""

    question: str
    answer: str | None
    id: str
    solution: str | None = None


class ProblemSource(Protocol):
    """Anything that yields problems by index (``len`` may be infinite for generators: return None)."""

    def problem(self, index: int) -> Problem: ...

    def __len__(self) -> int: ...


class ProblemStream:
    """Draws problems from a source in a seeded order, one epoch after another; its position is one int.

    Finite sources are shuffled per epoch with ``seed``; the arithmetic generator is already seeded by index.
    ``shard=(rank, world)``: one of ``world`` processes drawing one global order together; each draw of ``n`` takes
    ``n`` problems for every rank, rank ``r`` the ``r``-th block, so the ranks together see what one process
    drawing ``n * world`` would (``position`` counts global problems).
    """

    def __init__(self, source: ProblemSource, seed: int = 0, shuffle: bool = True, shard: tuple[int, int] = (0, 1)):
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
        self.source = source
        self.seed = seed
        self.shuffle = shuffle
        self.shard = shard
        self.position = 0
        self._order_epoch = -1
        self._order: list[int] = []

    def _index(self, position: int) -> int:
        n = len(self.source)
        if n == 0:
            # Unbounded generators: each seed reads its own stretch of indices.
            return self.seed * 1_000_000_000 + position
        epoch, offset = divmod(position, n)
        if not self.shuffle:
            return offset
        if epoch != self._order_epoch:
            self._order = list(range(n))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(self._order)
            self._order_epoch = epoch
        return self._order[offset]

    def next(self, n: int) -> list[Problem]:
        """The next ``n`` problems (of this shard)."""
        return [problem for _, problem in self.next_indexed(n)]

    def next_indexed(self, n: int) -> list[tuple[int, Problem]]:
        """The next ``n`` problems of this shard with their global positions (ids that no rank count changes)."""
        rank, world = self.shard
        start = self.position + rank * n
        out = [(start + i, self.source.problem(self._index(start + i))) for i in range(n)]
        self.position += n * world
        return out

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
        self.seed = int(state["seed"])
        self._order_epoch = -1


# --- the arithmetic word-problem generator -----------------------------------------------------------------

_NAMES = ["Tom", "Ann", "Maya", "Leo", "Sara", "Omar", "Lina", "Ben", "Ivy", "Sam"]
_ITEMS = ["apples", "books", "coins", "stamps", "marbles", "pencils", "stickers", "cards"]

# (operand range, number of operations, allowed operations) per difficulty level
_LEVELS = {
    1: ((1, 20), 1, "+-"),
    2: ((1, 50), 2, "+-"),
    3: ((2, 100), 3, "+-*"),
    4: ((2, 200), 3, "+-*/"),
    5: ((2, 999), 4, "+-*/"),
}


class ArithmeticTask:
    """Seeded arithmetic word problems with exact reference answers and a step-by-step reference solution.

    Difficulty 1-5 sets the operand size and number of operations (levels 3+ multiply, 4+ divide). Every
    intermediate result is a non-negative integer (division only where it is exact).

    Args:
        difficulty: 1 (one addition or subtraction under 20) to 5 (four operations on numbers under 1000).
        seed: problems are a pure function of ``(seed, index)``.
    """

    def __init__(self, difficulty: int = 1, seed: int = 0):
        if difficulty not in _LEVELS:
            raise ValueError(f"difficulty must be one of {sorted(_LEVELS)}, got {difficulty}")
        self.difficulty = difficulty
        self.seed = seed

    def __len__(self) -> int:
        return 0  # unbounded: ProblemStream reads index i directly

    def problem(self, index: int) -> Problem:
        rng = random.Random(f"arith-{self.seed}-{self.difficulty}-{index}")
        (lo, hi), n_ops, ops = _LEVELS[self.difficulty]
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        value = rng.randint(lo, hi)
        sentences = [f"{name} has {value} {item}."]
        steps = [f"{name} starts with {value} {item}."]
        for _ in range(n_ops):
            op = rng.choice(ops)
            if op == "-" and value < 2:
                op = "+"
            if op == "/":
                divisors = [d for d in range(2, 10) if value % d == 0]
                if not divisors:
                    op = "+"
            if op == "+":
                n = rng.randint(lo, hi)
                sentences.append(f"Then {name} gets {n} more.")
                new = value + n
                steps.append(f"After getting {n} more: {value} + {n} = {new}.")
            elif op == "-":
                n = rng.randint(1, value)
                sentences.append(f"Then {name} gives away {n}.")
                new = value - n
                steps.append(f"After giving away {n}: {value} - {n} = {new}.")
            elif op == "*":
                n = rng.randint(2, 9)
                sentences.append(f"Then the number of {item} becomes {n} times as large.")
                new = value * n
                steps.append(f"Multiplying by {n}: {value} * {n} = {new}.")
            else:
                n = rng.choice(divisors)
                sentences.append(f"Then {name} splits them into {n} equal groups and keeps one group.")
                new = value // n
                steps.append(f"One of {n} equal groups: {value} / {n} = {new}.")
            value = new
        question = " ".join([*sentences, f"How many {item} does {name} have now?"])
        steps.append(f"The answer is \\boxed{{{value}}}.")
        assert Fraction(value).denominator == 1
        return Problem(
            question=question, answer=str(value), id=f"arith-{self.difficulty}-{index}", solution="\n\n".join(steps)
        )


# --- tasks whose skill a briefly warmed-up model already has, so that RL only has to select it ----------------


class CopyNumberTask:
    """ "Repeat the number N.": the answer is in the question, so RL only has to make the model copy it reliably
    (a learnability check: a loop that cannot raise this accuracy does not learn). Numbers 0 to ``largest``.

    A seeded ``unboxed_share`` of the reference solutions state the answer without ``\\boxed{}``, which the
    verifier does not read: a model warmed up on them copies the number but boxes it only that often, so RL has
    a skill the model has to select (the boxed form), and every group with mixed outcomes shows it which.
    """

    def __init__(self, seed: int = 0, largest: int = 99, unboxed_share: float = 0.0):
        self.seed = seed
        self.largest = largest
        self.unboxed_share = unboxed_share

    def __len__(self) -> int:
        return 0

    def problem(self, index: int) -> Problem:
        rng = random.Random(f"copy-{self.seed}-{index}")
        n = rng.randint(0, self.largest)
        answer = f"{n}." if rng.random() < self.unboxed_share else f"\\boxed{{{n}}}."
        return Problem(
            question=f"Repeat the number {n}.",
            answer=str(n),
            id=f"copy-{index}",
            solution=f"The number is {n}.\n\nThe answer is {answer}",
        )
