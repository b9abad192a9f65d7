"""Seconds a trained PRM takes to score one RL iteration's batch, for several PRM folders side by side.

What a study run pays for its PRM each iteration is one scoring pass over the batch's responses (the
``response`` rollout mode scores each response once). This loads each PRM folder as RL does
(``envs.prm.HFTokenClassificationPRM``), scores the first ``--solutions`` labelled solutions of a step-label file
(after one warm-up pass), and prints the median of ``--repeats`` passes with ``--threads`` threads and each
folder's time as a ratio to the first one. docs/results.md used it to compare the full SmolLM2 PRM with its
first 10 layers (``prm.backbone_layers: 10``).

Run: ``python benchmarks/prm_scoring_time.py runs/prm-study/model_hard960 runs/prm-study/model_hard960_10layers
--labels runs/prm-study/heldout_common.jsonl [--solutions 32] [--threads 1] [--repeats 3] [--layout pure_text]``.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("prms", nargs="+", help="trained PRM folders; the first is the reference of the ratios")
    p.add_argument("--labels", required=True, help="a step-label jsonl file whose first solutions are scored")
    p.add_argument("--solutions", type=int, default=32, help="solutions per pass (the small study's batch: 32)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a study run at 2 jobs has 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layout", default="pure_text", choices=("pure_text", "qwen"))
    args = p.parse_args()

    import torch

    from envs.prm import HFTokenClassificationPRM
    from pure_rl.prm.labels import read_step_labels

    torch.set_num_threads(args.threads)
    rows = read_step_labels(args.labels)[: args.solutions]
    questions, steps = [r.question for r in rows], [r.steps for r in rows]
    n_steps = sum(len(s) for s in steps)
    print(f"{len(rows)} solutions, {n_steps} steps, {args.threads} thread(s), median of {args.repeats} passes")
    first = None
    for folder in args.prms:
        prm = HFTokenClassificationPRM(folder, layout=args.layout)
        prm(questions[:8], steps[:8])  # warm-up pass: allocator and kernel selection
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            prm(questions, steps)
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        first = first or median
        layers = prm.model.config.num_hidden_layers
        print(f"{folder}: {layers} layers, {median:.2f} s per pass ({median / first:.2f}x the first)")


if __name__ == "__main__":
    main()
