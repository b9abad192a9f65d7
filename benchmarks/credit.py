"""Time PURE's credit functions on a [4096, 64] step batch against a naive per-row Python loop.

Run: ``python benchmarks/credit.py [--rows 4096] [--steps 64] [--repeats 20]``. Prints one line per
function: vectorised time, loop time, and the speed-up ratio. The loop versions are the definitions written
the obvious way; results are checked equal before timing, so a fast wrong function cannot pass.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from pure_rl.objectives.credit import min_form_returns, step_advantages, sum_form_returns


def loop_exact_min(rewards: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    out = torch.zeros_like(rewards)
    for i, n in enumerate(lengths):
        running = float("inf")
        for k in range(n - 1, -1, -1):
            running = min(running, rewards[i, k].item())
            out[i, k] = running
    return out


def loop_softmin(rewards: torch.Tensor, lengths: list[int], t: float) -> torch.Tensor:
    out = torch.zeros_like(rewards)
    for i, n in enumerate(lengths):
        row = rewards[i, :n]
        w = torch.softmax(-row / t, dim=0)
        acc = 0.0
        for k in range(n - 1, -1, -1):
            acc += (w[k] * row[k]).item()
            out[i, k] = acc
    return out


def loop_sum(rewards: torch.Tensor, lengths: list[int], gamma: float) -> torch.Tensor:
    out = torch.zeros_like(rewards)
    for i, n in enumerate(lengths):
        acc = 0.0
        for k in range(n - 1, -1, -1):
            acc = rewards[i, k].item() + gamma * acc
            out[i, k] = acc
    return out


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096, help="trajectories in the batch")
    parser.add_argument("--steps", type=int, default=64, help="max steps per trajectory")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats of the vectorised call (best kept)")
    args = parser.parse_args()

    torch.manual_seed(0)
    rewards = torch.rand(args.rows, args.steps) * 2 - 1
    lengths = torch.randint(1, args.steps + 1, (args.rows,))
    mask = torch.arange(args.steps)[None, :] < lengths[:, None]
    lens = lengths.tolist()
    groups = torch.arange(args.rows) // 4
    tokens = torch.randint(5, 60, (args.rows, args.steps))

    print(
        f"credit benchmark: [{args.rows}, {args.steps}] float32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"{'function':<34}{'vectorised':>12}{'python loop':>14}{'speed-up':>10}")
    cases = [
        ("min_form_returns exact", lambda: min_form_returns(rewards, mask), lambda: loop_exact_min(rewards, lens)),
        (
            "min_form_returns softmin T=0.1",
            lambda: min_form_returns(rewards, mask, 0.1),
            lambda: loop_softmin(rewards, lens, 0.1),
        ),
        ("sum_form_returns gamma=1", lambda: sum_form_returns(rewards, mask), lambda: loop_sum(rewards, lens, 1.0)),
        (
            "sum_form_returns gamma=0.99",
            lambda: sum_form_returns(rewards, mask, 0.99),
            lambda: loop_sum(rewards, lens, 0.99),
        ),
    ]
    for name, vec, loop in cases:
        t0 = time.perf_counter()
        expected = loop()
        t_loop = time.perf_counter() - t0  # one run: the loop takes seconds
        got = vec()
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        t_vec = best_of(vec, args.repeats)
        print(f"{name:<34}{t_vec * 1e3:>10.2f}ms{t_loop * 1e3:>12.0f}ms{t_loop / t_vec:>9.0f}x")

    # Not compared with a loop (nothing to check it against here): the whole pipeline's cost per batch.
    def pipeline():
        step_advantages(
            rewards,
            mask,
            groups,
            tokens,
            form="min_form",
            temperature=0.1,
            baseline="rloo_token",
            correct=(torch.rand(args.rows) > 0.5).float(),
            vr_coef=1.0,
            whiten_advantages=True,
        )

    print(f"{'step_advantages (full PURE)':<34}{best_of(pipeline, args.repeats) * 1e3:>10.2f}ms")


if __name__ == "__main__":
    main()
