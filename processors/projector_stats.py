"""What a projector has done since it started, logged as it runs and when it stops; and
how far behind the topic it is (`records_behind`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from chatlog.processors.projection import BatchResult

__all__ = ["ProjectorStats", "records_behind"]


@dataclass(slots=True)
class ProjectorStats:
    """Running totals since start."""

    batches: int = 0
    events: int = 0
    applied: int = 0
    unchanged: int = 0
    duplicates: int = 0
    conflicts: int = 0
    dead_letters: int = 0
    erased: int = 0  # an erased user's events: under a destroyed key, or refused by the store
    # Redis or the dead-letter topic failing: how many times it started to, and how many
    # attempts failed in all.
    outages: int = 0
    retries: int = 0

    def add(self, result: BatchResult) -> None:
        """Count one batch."""
        self.batches += 1
        self.events += result.events
        self.applied += result.applied
        self.unchanged += result.unchanged
        self.duplicates += result.duplicates
        self.conflicts += result.conflicts
        self.dead_letters += len(result.dead_letters)
        self.erased += result.erased


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
