"""Helpers shared by the benchmarks: medians over repeats, run lists, the hexyl candidate."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from messages import CrateCandidate, RegistryRef, ScoreParts


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


def runs(samples: list[float]) -> str:
    """Every sample, for the report next to its median."""
    return ", ".join(f"{sample:.2f}" for sample in samples)


def hexyl_candidate() -> CrateCandidate:
    """hexyl 0.8.0 from Debian's registry, as the scout would propose it."""
    return CrateCandidate(
        run_id="bench",
        candidate_id="c1-hexyl",
        name="hexyl",
        version="0.8.0",
        registry=RegistryRef(source="local", location="/usr/share/cargo/registry"),
        score=1.0,
        score_parts=ScoreParts(relevance=1.0),
    )
