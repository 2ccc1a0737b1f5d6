"""What a projector has done since it started, logged as it runs and when it stops, and
read by its metrics (`chatlog.prom_metrics`) and its health checks: the one place where
the projector counts; how far behind the topic it is (`records_behind`); and when a
group member's lag makes it not ready (`lag_problem`, the embedder's too)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from chatlog.processors.dead_letters import dead_letter_reason
from chatlog.processors.measures import Histogram
from chatlog.processors.projection import BatchResult

__all__ = ["LIVENESS_BOUND_S", "ProjectorStats", "lag_problem", "records_behind"]

LIVENESS_BOUND_S = 60.0
"""A projector whose loop has not turned for this long is not alive (a hang, a deadlock):
each turn takes at most a batch, and a wait for Redis turns every 0.1 s."""


@dataclass(slots=True)
class ProjectorStats:
    """Running totals since start, and the projector's present state (lag, beat)."""

    batches: int = 0
    records: int = 0  # consumed and finished: their offsets are stored
    events: int = 0
    applied: int = 0  # session views written
    events_applied: int = 0  # events those views took in
    unchanged: int = 0
    duplicates: int = 0
    conflicts: int = 0
    dead_letters: int = 0
    erased: int = 0  # an erased user's events: under a destroyed key, or refused by the store
    # Redis or the dead-letter topic failing: how many times it started to, and how many
    # attempts failed in all (of which `redis_errors` were Redis's).
    outages: int = 0
    retries: int = 0
    redis_errors: int = 0
    data_losses: int = 0  # lost read-model data found (then a stop or a rebuild)
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    batch_seconds: Histogram = field(default_factory=Histogram)
    visible_seconds: Histogram = field(default_factory=Histogram)
    # Events behind the partition's end, per assigned partition, as of `lag_at`.
    lag: dict[int, int] = field(default_factory=dict)
    lag_at: float = 0.0
    beat_at: float = field(default_factory=time.monotonic)

    def __repr__(self) -> str:
        # The log line: the totals, not the histograms and the state.
        shown = (
            "batches", "records", "events", "applied", "events_applied", "unchanged",
            "duplicates", "conflicts", "dead_letters", "erased", "outages", "retries",
            "redis_errors", "data_losses",
        )  # fmt: skip
        return f"ProjectorStats({', '.join(f'{n}={getattr(self, n)}' for n in shown)})"

    def add(self, result: BatchResult, *, records: int, seconds: float, now_ms: int) -> None:
        """Count one finished batch of `records` records that took `seconds`; `now_ms`
        (epoch ms) is when its views became visible."""
        self.batches += 1
        self.records += records
        self.events += result.events
        self.applied += result.applied
        self.events_applied += result.events_applied
        self.unchanged += result.unchanged
        self.duplicates += result.duplicates
        self.conflicts += result.conflicts
        self.dead_letters += len(result.dead_letters)
        self.dead_letter_reasons.update(dead_letter_reason(d.error) for d in result.dead_letters)
        self.erased += result.erased
        self.batch_seconds.observe(seconds)
        for at_ms in result.applied_at_ms:
            # A producer's clock ahead of ours would give a negative latency.
            self.visible_seconds.observe(max(0, now_ms - at_ms) / 1000)

    def beat(self) -> None:
        """The loop turned (liveness)."""
        self.beat_at = time.monotonic()

    def alive(self, now: float) -> bool:
        """Whether the loop turned within `LIVENESS_BOUND_S` of `now` (monotonic)."""
        return now - self.beat_at < LIVENESS_BOUND_S


def records_behind(ends: Mapping[int, tuple[int, int]], marks: Mapping[int, int]) -> int:
    """How many records of the topic the projector has not projected yet, in all.

    `ends` are each partition's (low, high) watermarks, `marks` the projector's progress
    marks (the last offset projected; a partition without one has nothing projected).
    Records before the low watermark are gone from the topic: they count for nothing.
    """
    return sum(
        max(0, high - max(low, marks.get(partition, -1) + 1))
        for partition, (low, high) in ends.items()
    )


def lag_problem(
    assigned: Set[int], lag: Mapping[int, int], max_lag: int, *, unit: str = "events"
) -> str | None:
    """Why a group member holding `assigned` with `lag` (partition -> records behind) is
    not ready (None: it is): no partitions, a lag not known yet, or more than `max_lag`
    behind on a partition."""
    if not assigned:
        return "no partitions assigned"
    unknown = sorted(set(assigned) - set(lag))
    if unknown:
        return f"lag not known yet on partitions {unknown}"
    behind = {p: n for p, n in lag.items() if p in assigned and n > max_lag}
    if behind:
        return f"behind by more than {max_lag} {unit} (CHATLOG_READY_MAX_LAG): {behind}"
    return None
