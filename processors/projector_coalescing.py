"""Live batches: how long the projector holds a small batch for the records on their way.

Why hold a batch at all? Each batch costs the projector the same fixed work whatever it
holds: a poll, then round trips to Redis (the owners' keys, the views of sessions not
cached, the writes, the progress mark). Draining a backlog, that work is shared by
thousands of records. Live, the projector takes only what has arrived, so at a few
thousand events a second its batches hold one to a few records, and it spends two to
three times the CPU per event it spends draining (measured: about 160 µs against 55 µs).
On a small machine that CPU is taken from the broker, Redis and the writers, and every
event waits longer.

The rule: the projector keeps an estimate of the rate records arrive at (records a
second, forgetting the past over about `TAU_S`). When a poll brings fewer than `target`
records and that rate says at least one more is due within `max_hold_s`, it waits for
more: until `target` are in hand, or as long as `target` would take to arrive at that
rate, and never longer than `max_hold_s`. So a lone event, or a trickle slower than one
record per `max_hold_s`, is projected at once; a busy stream is projected in batches of
about `target`, each event held at most `max_hold_s` longer than before; a backlog
(batches of `target` or more) is never held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["TAU_S", "Coalescing"]

TAU_S = 0.25
"""How long the rate estimate remembers: a quarter of a second follows a change of load
within a few batches, yet one quiet gap between bursts does not reset it."""


@dataclass(slots=True)
class Coalescing:
    """How long to hold a live batch for more records (see the module docstring)."""

    max_hold_s: float = 0.002
    # Enough records that the fixed work of a batch is a small share of its cost: about
    # a tenth at 16 (measured: about 0.5 ms of fixed work, 0.17 ms a record live).
    target: int = 16
    # Records a second, as of `_at` (monotonic seconds; None: nothing seen yet).
    _rate: float = field(default=0.0, repr=False)
    _at: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.max_hold_s < 0 or not math.isfinite(self.max_hold_s):
            raise ValueError(f"max_hold_s must be a finite number >= 0, not {self.max_hold_s}")
        if self.target < 1:
            raise ValueError(f"target must be at least 1, not {self.target}")

    def rate(self, now: float) -> float:
        """The estimated arrival rate at `now` (records a second)."""
        if self._at is None:
            return 0.0
        return self._rate * math.exp(-max(0.0, now - self._at) / TAU_S)

    def taken(self, records: int, now: float) -> None:
        """`records` were taken at `now`: they count towards the rate."""
        self._rate = self.rate(now) + records / TAU_S
        self._at = now

    def hold(self, in_hand: int, now: float) -> float:
        """How long to wait for more records with `in_hand` taken at `now`; 0: none."""
        missing = self.target - in_hand
        if missing <= 0 or self.max_hold_s <= 0:
            return 0.0
        rate = self.rate(now)
        if rate * self.max_hold_s < 1:
            return 0.0  # not even one more is due in time: project what is here now
        return min(self.max_hold_s, missing / rate)
