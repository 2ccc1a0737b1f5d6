"""Latency histograms kept by the processes themselves, with no metrics library.

The stats objects of the projector, the summarizer and the gateway are the one place
where what a process did is counted; the log lines and the Prometheus exposition
(`chatlog.prom_metrics`, which needs the ``metrics`` extra) both read them. A
histogram here is the same cumulative-bucket shape Prometheus exposes, so the
exposition copies it as it is and nothing is recorded twice.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["LATENCY_BOUNDS_S", "Histogram"]

# Seconds: from a batch that took a millisecond to an LLM call that took a minute.
LATENCY_BOUNDS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@dataclass(slots=True)
class Histogram:
    """Observations counted into buckets by upper bound (the last bucket is +Inf)."""

    bounds: Sequence[float] = LATENCY_BOUNDS_S
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(self.bounds):
            raise ValueError(f"histogram bounds must ascend: {self.bounds}")
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Count one observation."""
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), the last bound being +Inf."""
        running, buckets = 0, []
        for bound, count in zip([*self.bounds, float("inf")], self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets
