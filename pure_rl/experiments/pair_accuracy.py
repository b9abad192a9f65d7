"""Why a PRM ranks a problem's solutions better on its labelled held-out split than on best-of-N samples.

``python -m pure_rl.experiments.pair_accuracy BEST_OF_N.json [--subsets 4] [--draws 200] [--seed 0]``

Both measures are the share of (correct, wrong) pairs of responses to one problem in which the correct one's
``min`` step score is higher (ties half), but they count different pairs: the labelled split has 4 solutions
per problem, so only problems the policy solves sometimes and misses sometimes in 4 tries enter, each with at
most 4 pairs; best-of-16 has 16 samples per problem, so hard problems with one lucky right answer enter too, and
a problem weighs up to 64 pairs. This reads a ``best_of_n.json`` (``pure_rl.evaluate --best-of``) and prints the
pair accuracy (1) over all pairs, as the best-of-N report does; (2) by the problem's share of correct samples;
(3) on random ``--subsets``-sample subsets of each problem, pooled as the labelled split pools them. If (3) is
near the labelled split's figure, the difference is which pairs are counted; if it stays near (1), it is the
samples themselves (what the policy writes at evaluation against what it wrote when labelled).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from pure_rl.best_of_n import group_by_problem, pair_counts

__all__ = ["pair_accuracy_report"]


def pair_accuracy_report(samples: list[dict], subset: int = 4, draws: int = 200, seed: int = 0) -> dict:
    """The three readings of the module docstring, from best-of-N ``samples`` (each with ``problem``,
    ``scores`` and ``correct``)."""
    by_problem = group_by_problem(samples)
    wins = pairs = 0.0
    bins: dict[str, list[float]] = {}
    for rows in by_problem.values():
        w, n = pair_counts(rows)
        wins, pairs = wins + w, pairs + n
        if n:
            share = sum(s["correct"] for s in rows) / len(rows)
            name = "1-25%" if share <= 0.25 else "26-50%" if share <= 0.5 else "51-75%" if share <= 0.75 else "76-99%"
            bins.setdefault(name, [0.0, 0.0, 0])
            bins[name][0] += w
            bins[name][1] += n
            bins[name][2] += 1
    rng = random.Random(seed)
    sub_wins = sub_pairs = 0.0
    sub_problems = 0
    for _ in range(draws):
        for rows in by_problem.values():
            w, n = pair_counts(rng.sample(rows, min(subset, len(rows))))
            sub_wins, sub_pairs, sub_problems = sub_wins + w, sub_pairs + n, sub_problems + (n > 0)
    return {
        "all_pairs": {"accuracy": wins / pairs if pairs else float("nan"), "pairs": pairs},
        "by_problem_accuracy": {
            k: {"accuracy": v[0] / v[1], "pairs": v[1], "problems": v[2]} for k, v in sorted(bins.items())
        },
        f"subsets_of_{subset}": {
            "accuracy": sub_wins / sub_pairs if sub_pairs else float("nan"),
            "problems_with_both_per_draw": sub_problems / draws,
            "problems": len(by_problem),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m pure_rl.experiments.pair_accuracy", description=__doc__.split("\n")[0])
    p.add_argument("best_of_n", help="a best_of_n.json written by python -m pure_rl.evaluate --best-of N")
    p.add_argument("--subsets", type=int, default=4, help="samples per problem in each subset (labelled split: 4)")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    samples = json.loads(Path(args.best_of_n).read_text())["samples"]
    report = pair_accuracy_report(samples, args.subsets, args.draws, args.seed)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
