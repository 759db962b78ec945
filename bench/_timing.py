"""Small timing helpers shared by the benchmarks: medians over repeats, in one run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(action: Callable[[], object], *, repeats: int, warmup: int = 1) -> float:
    """The median wall time of `action` over `repeats` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)
