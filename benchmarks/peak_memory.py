"""Peak host memory of a call, for the benchmarks that compare memory side by side (no tracer sees torch's
allocations, so the process's resident memory is sampled while the call runs)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident memory."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_during(fn: Callable[[], object], measure: Callable[[], int] = resident_bytes, every: float = 0.001):
    """``(seconds, peak extra bytes)`` of ``fn()``: ``measure()`` sampled every ``every`` seconds while it runs,
    above its value just before."""
    base, peak, done = measure(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], measure() - base)
            time.sleep(every)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    return seconds, max(peak[0], measure() - base)
