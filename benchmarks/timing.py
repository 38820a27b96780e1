"""The one timer the benchmarks share: the median wall time of repeated calls."""
from __future__ import annotations

import statistics
import time


def median_s(fn, repeats: int = 3) -> float:
    """Median seconds of `repeats` calls of fn() (the median: one slow call on a shared machine
    does not move it)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
