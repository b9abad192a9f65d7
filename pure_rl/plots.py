"""The run's PNG plot: the main curves of docs/spec.md section 8 against iteration, from TorchRL's CSV logs.

TorchRL's ``CSVLogger`` writes one ``step,value`` file per scalar under ``<run>/<exp>/scalars/``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["PLOTTED", "plot_run", "read_metrics", "smooth", "truncate_metrics"]

PLOTTED = [
    ("accuracy", "verifier accuracy"),
    ("eval_accuracy", "held-out greedy accuracy"),
    ("eval_sampled_accuracy", "held-out sampled accuracy"),
    ("prm_reward_mean", "PRM reward (mean step)"),
    ("prm_reward_min", "PRM reward (min step)"),
    ("steps_per_response", "steps per response"),
    ("response_tokens", "response tokens"),
    ("kl", "KL to reference"),
    ("loss", "loss"),
]


def read_metrics(scalars_dir: str | Path) -> list[dict[str, float]]:
    """One dict per iteration (``iteration`` plus every metric logged at it), from a scalars folder."""
    by_step: dict[int, dict[str, float]] = {}
    for path in sorted(Path(scalars_dir).glob("*.csv")):
        with path.open() as f:
            for row in csv.reader(f):
                if len(row) == 2:
                    step = int(float(row[0]))
                    by_step.setdefault(step, {"iteration": float(step)})[path.stem] = float(row[1])
    return [by_step[k] for k in sorted(by_step)]


def truncate_metrics(scalars_dir: str | Path, last_step: int) -> None:
    """Drop rows logged after ``last_step`` (a resumed run logs those iterations again)."""
    for path in Path(scalars_dir).glob("*.csv"):
        with path.open() as f:
            rows = [r for r in csv.reader(f) if len(r) == 2 and int(float(r[0])) <= last_step]
        with path.open("w", newline="") as f:
            csv.writer(f).writerows(rows)


def smooth(values, window: int) -> np.ndarray:
    """Trailing moving average (NaN-aware): point i averages iterations max(0, i - window + 1) .. i."""
    values = np.asarray(values, dtype=float)
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        chunk = chunk[np.isfinite(chunk)]
        if len(chunk):
            out[i] = chunk.mean()
    return out


def plot_run(scalars_dir: str | Path, out_png: str | Path, title: str = "", window: int = 5) -> Path:
    """Write a grid of the main curves; metrics absent from the run are skipped.

    Curves with more than ``2 * window`` points also get a trailing ``window``-iteration mean: one iteration's
    batch is small, so its accuracy alone moves by tens of points.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(scalars_dir)
    panels = [(k, label) for k, label in PLOTTED if any(k in r for r in rows)]
    cols = 4
    n_rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(4 * cols, 3 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, (key, label) in zip(axes.flat, panels):
        points = [(r["iteration"], r[key]) for r in rows if key in r]
        ax.set_visible(True)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        smoothed = window > 1 and len(points) > 2 * window
        ax.plot(xs, ys, marker="o" if len(points) < 30 else None, alpha=0.4 if smoothed else 1.0, label="iteration")
        if smoothed:
            ax.plot(xs, smooth(ys, window), color="C0", linewidth=2, label=f"mean of last {window}")
            ax.legend(fontsize="small")
        ax.set_title(label)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
