"""Best-of-N at test time: sample N responses per held-out problem, pick one by the PRM's aggregated step scores.

``python -m pure_rl.evaluate --best-of N [--aggregate min last prod mean]``. From one set of N samples per problem
it reports, for n = 1, 2, 4 ... N, the accuracy of the response each aggregation picks, beside majority vote
(the most frequent boxed answer) and pass@n (any sample correct). For n < N the N samples are cut into N/n
disjoint groups and the accuracies averaged over them (more precise than the first n alone, same samples).

An aggregation maps one response's step scores (in the PRM's ``[-1, 1]``) to one number; the response with the
highest wins (ties: the first). ``min`` is the test-time counterpart of min-form credit: a response is as good
as its worst step.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = [
    "AGGREGATIONS",
    "best_of_n",
    "best_of_n_table",
    "plot_best_of_n",
    "sample_scored",
    "within_problem_accuracy",
]


def _prob(s: float) -> float:
    # A difference-mode score p(1) - p(0) is 2 p(1) - 1: back to a probability for products.
    return (s + 1.0) / 2.0


AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "min": lambda s: min(s),
    "last": lambda s: s[-1],
    "prod": lambda s: math.prod(_prob(x) for x in s),
    "mean": lambda s: sum(s) / len(s),
}


def sample_scored(env, policy, mode: str) -> list[dict]:
    """One batch of sampled responses (the env's ``B`` rows, ``group_size`` per problem, from the env's current
    position in its problem order) with, per response, its question and step texts, their scores, its boxed
    answer, whether the verifier accepts it, and its problem."""
    from envs.verifier import last_boxed
    from pure_rl.rollout import collect
    from pure_rl.samples import sample_records

    with torch.no_grad():
        traj = collect(env, policy, mode)
    responses = [list(row)[-1] for row in traj.get(("next", "response")).tolist()]
    groups = traj.get("group_id")[:, 0].tolist()
    out = []
    for record, response, group in zip(sample_records(traj), responses, groups):
        answer = last_boxed(response)
        out.append(
            {
                "problem": int(group),
                "question": record["question"],
                "steps": record["steps"],  # what was scored, so that a selection can be audited
                "scores": record["prm"],
                "answer": None if answer is None else "".join(answer.split()),
                "correct": record["correct"],
            }
        )
    return out


def group_by_problem(samples: list[dict]) -> dict[int, list[dict]]:
    """Samples grouped by problem, each group in sampling order."""
    groups: dict[int, list[dict]] = {}
    for s in samples:
        groups.setdefault(s["problem"], []).append(s)
    return groups


def _majority(samples: list[dict]) -> bool:
    answered = [s for s in samples if s["answer"] is not None]
    if not answered:
        return False
    counts = Counter(s["answer"] for s in answered)
    top = max(counts.values())
    winner = next(s for s in answered if counts[s["answer"]] == top)  # ties: the earliest answer
    return winner["correct"]


def best_of_n(samples: list[dict], aggregations: Sequence[str], n_max: int) -> dict[int, dict[str, float]]:
    """Accuracy per selection method for n = 1, 2, 4 ... ``n_max`` (and ``n_max`` itself), from ``samples``
    grouped by problem (each problem with ``n_max`` samples, in sampling order)."""
    unknown = [a for a in aggregations if a not in AGGREGATIONS]
    if unknown:
        raise ValueError(f"unknown aggregation {unknown[0]!r}; one of {sorted(AGGREGATIONS)}")
    by_problem = group_by_problem(samples)
    short = [p for p, rows in by_problem.items() if len(rows) < n_max]
    if short:
        raise ValueError(f"problem {short[0]} has {len(by_problem[short[0]])} samples, fewer than N={n_max}")
    ns = sorted({*[2**k for k in range(int(math.log2(n_max)) + 1)], n_max})
    table: dict[int, dict[str, float]] = {}
    for n in ns:
        hits: dict[str, list[float]] = {m: [] for m in (*aggregations, "majority", "pass", "random")}
        for rows in by_problem.values():
            for g in range(n_max // n):
                group = rows[g * n : (g + 1) * n]
                for name in aggregations:
                    agg = [AGGREGATIONS[name](s["scores"]) if s["scores"] else -math.inf for s in group]
                    hits[name].append(float(group[agg.index(max(agg))]["correct"]))
                hits["majority"].append(float(_majority(group)))
                hits["pass"].append(float(any(s["correct"] for s in group)))
                hits["random"].append(sum(s["correct"] for s in group) / n)
        table[n] = {m: sum(v) / len(v) for m, v in hits.items()}
    return table


def pair_counts(rows: list[dict], aggregation: str = "min") -> tuple[float, int]:
    """(wins, pairs) over one problem's (correct, wrong) response pairs under ``aggregation``; a tie is half a
    win, a response without scored steps scores lowest."""
    agg = AGGREGATIONS[aggregation]
    scored = [(agg(s["scores"]) if s["scores"] else -math.inf, s["correct"]) for s in rows]
    right = [v for v, ok in scored if ok]
    wrong = [v for v, ok in scored if not ok]
    return float(sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)), len(right) * len(wrong)


def within_problem_accuracy(samples: list[dict], aggregations: Sequence[str]) -> dict[str, float]:
    """Per aggregation, the share of (correct, wrong) pairs of responses *to the same problem* in which the correct
    one scores higher (ties count half): what selection needs, unlike a step AUC pooled across problems, which a
    PRM can earn by knowing which problems are hard. NaN when no problem has both kinds."""
    by_problem = group_by_problem(samples)
    out = {}
    for name in aggregations:
        counts = [pair_counts(rows, name) for rows in by_problem.values()]
        wins, pairs = sum(w for w, _ in counts), sum(n for _, n in counts)
        out[name] = wins / pairs if pairs else float("nan")
    return out


def best_of_n_table(table: dict[int, dict[str, float]]) -> str:
    """A markdown table: one row per n, one column per selection method."""
    methods = list(next(iter(table.values())))
    lines = ["| n | " + " | ".join(f"PRM {m}" if m in AGGREGATIONS else m for m in methods) + " |"]
    lines.append("|" + " --- |" * (len(methods) + 1))
    for n, row in table.items():
        lines.append(f"| {n} | " + " | ".join(f"{row[m]:.3f}" for m in methods) + " |")
    return "\n".join(lines)


def plot_best_of_n(table: dict[int, dict[str, float]], out_png: str | Path, title: str = "") -> Path:
    """Accuracy against n (log scale), one line per selection method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = list(table)
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in next(iter(table.values())):
        style = "--" if m in ("pass", "random") else "-"
        ax.plot(ns, [table[n][m] for n in ns], style, marker="o", label=f"PRM {m}" if m in AGGREGATIONS else m)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (samples per problem)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def write_best_of_n(table, samples, out_dir: str | Path, meta: dict) -> Path:
    """``best_of_n.json`` (the table, the settings and every sample's scores) and ``best_of_n.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "best_of_n.json").write_text(
        json.dumps({**meta, "table": {str(n): row for n, row in table.items()}, "samples": samples}, indent=1)
    )
    plot_best_of_n(table, out_dir / "best_of_n.png", meta.get("title", ""))
    return out_dir
