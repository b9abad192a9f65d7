"""Held-out PRM metrics: step accuracy, step AUC, ProcessBench's first-error F1, and within-problem pairs.

Inputs are per solution: its step scores (in ``[-1, 1]``, ``p(correct) - p(wrong)``) and its step labels (hard
or soft; ``None`` left out). A soft label counts as correct when ``>= 0.5``, a score when ``> threshold``
(0: ``p(correct) > 0.5``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["first_error_f1", "prm_metrics", "roc_auc", "step_accuracy", "within_problem_pairs"]


def _flat(scores: Sequence[Sequence[float]], labels: Sequence[Sequence[float | None]]):
    pairs = [(s, lab >= 0.5) for row_s, row_l in zip(scores, labels) for s, lab in zip(row_s, row_l) if lab is not None]
    return torch.tensor([p[0] for p in pairs], dtype=torch.float64), torch.tensor([p[1] for p in pairs])


def step_accuracy(scores, labels, threshold: float = 0.0) -> float:
    """Share of labelled steps whose thresholded score agrees with the label."""
    s, y = _flat(scores, labels)
    return float(((s > threshold) == y).double().mean()) if len(s) else float("nan")


def roc_auc(scores, labels) -> float:
    """Probability that a correct step scores above a wrong one (ties count half): the Mann-Whitney form of the
    area under the ROC curve. NaN when one class is absent."""
    s, y = _flat(scores, labels)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    # [P, N] comparisons: fine for held-out sets of a few thousand steps.
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def first_error_f1(scores, labels, threshold: float = 0.0) -> dict[str, float]:
    """ProcessBench's measure: each solution's label is the index of its first wrong step (-1: none), the
    prediction the first step scored at or below ``threshold``; accuracy on the solutions with an error and on
    those without, and their harmonic mean (F1). Unlabelled steps after the labels' first error are not read."""
    hits = {True: [], False: []}
    for row_s, row_l in zip(scores, labels):
        truth = next((k for k, v in enumerate(row_l) if v is not None and v < 0.5), -1)
        pred = next((k for k, v in enumerate(row_s) if v <= threshold), -1)
        hits[truth >= 0].append(pred == truth)
    err = sum(hits[True]) / len(hits[True]) if hits[True] else float("nan")
    ok = sum(hits[False]) / len(hits[False]) if hits[False] else float("nan")
    # NaN when one kind of solution is absent (no F1 without both); 0 when both accuracies are 0.
    f1 = 2 * err * ok / (err + ok) if err + ok > 0 else (0.0 if err == 0 == ok else float("nan"))
    return {"first_error_accuracy_erroneous": err, "first_error_accuracy_correct": ok, "first_error_f1": f1}


def within_problem_pairs(
    scores: Sequence[Sequence[float]], correct: Sequence[bool | None], problems: Sequence[str]
) -> float:
    """Share of (correct, wrong) solution pairs to one problem in which the correct solution's lowest step score
    is the higher (ties count half): what best-of-N by ``min`` needs. Step AUC pools steps over problems, so a
    PRM that has learned only which problems are hard scores well there and not here. NaN without such a pair
    (solutions whose correctness is unknown, ``None``, are left out)."""
    by_problem: dict[str, tuple[list[float], list[float]]] = {}
    for row, ok, problem in zip(scores, correct, problems):
        if ok is None or not row:
            continue
        by_problem.setdefault(problem, ([], []))[0 if ok else 1].append(min(row))
    wins = pairs = 0.0
    for right, wrong in by_problem.values():
        if right and wrong:
            diff = torch.tensor(right, dtype=torch.float64)[:, None] - torch.tensor(wrong, dtype=torch.float64)
            wins += float((diff > 0).double().sum() + 0.5 * (diff == 0).double().sum())
            pairs += diff.numel()
    return wins / pairs if pairs else float("nan")


def prm_metrics(
    scores,
    labels,
    threshold: float = 0.0,
    correct: Sequence[bool | None] | None = None,
    problems: Sequence[str] | None = None,
) -> dict[str, float]:
    """Every held-out metric as one dict (``step_accuracy``, ``step_auc``, ``first_error_*``, counts, and
    ``within_problem_pairs`` when each solution's ``correct``-ness and ``problems`` id are given)."""
    s, y = _flat(scores, labels)
    out = {
        "step_accuracy": step_accuracy(scores, labels, threshold),
        "step_auc": roc_auc(scores, labels),
        **first_error_f1(scores, labels, threshold),
        "labelled_steps": float(len(s)),
        "correct_step_share": float(y.double().mean()) if len(y) else float("nan"),
    }
    if correct is not None and problems is not None:
        out["within_problem_pairs"] = within_problem_pairs(scores, correct, problems)
    return out
