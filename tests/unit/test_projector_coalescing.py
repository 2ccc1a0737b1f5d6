"""Live batches held for the records on their way: when, and for how long at most."""

from __future__ import annotations

import time

import pytest

from chatlog.processors.kafka_consumer import poll_batch
from chatlog.processors.projector_coalescing import TAU_S, Coalescing


def steady(coalescing: Coalescing, rate: float, *, seconds: float = 2.0, every_s: float = 0.001):
    """Feed `coalescing` `rate` records a second, taken every `every_s`; returns the time."""
    now = 0.0
    while now < seconds:
        now += every_s
        coalescing.taken(round(rate * every_s), now)
    return now


def test_the_rate_estimate_follows_a_steady_stream_and_forgets_it():
    coalescing = Coalescing()
    now = steady(coalescing, 4_000)
    assert coalescing.rate(now) == pytest.approx(4_000, rel=0.05)
    assert coalescing.rate(now + 5 * TAU_S) < 4_000 * 0.01


def test_a_lone_event_is_never_held():
    coalescing = Coalescing(max_hold_s=0.002)
    assert coalescing.hold(1, 0.0) == 0  # nothing seen yet
    now = steady(coalescing, 200)  # one record every 5 ms: none due within 2 ms
    assert coalescing.hold(1, now) == 0


def test_a_busy_stream_is_held_until_the_target_is_due_and_never_past_the_bound():
    coalescing = Coalescing(max_hold_s=0.002, target=16)
    now = steady(coalescing, 4_000)
    # 12 more at 4,000/s take 3 ms: held for the bound.
    assert coalescing.hold(4, now) == pytest.approx(0.002)
    coalescing = Coalescing(max_hold_s=0.010, target=16)
    now = steady(coalescing, 4_000)
    assert coalescing.hold(4, now) == pytest.approx(12 / 4_000, rel=0.05)


def test_a_full_batch_or_a_zero_bound_is_not_held():
    coalescing = Coalescing(max_hold_s=0.002, target=16)
    now = steady(coalescing, 10_000)
    assert coalescing.hold(16, now) == 0
    assert coalescing.hold(500, now) == 0
    off = Coalescing(max_hold_s=0.0)
    assert off.hold(1, steady(off, 10_000)) == 0


@pytest.mark.parametrize(
    "kwargs", [{"max_hold_s": -0.001}, {"max_hold_s": float("nan")}, {"target": 0}]
)
def test_nonsense_bounds_are_refused(kwargs):
    with pytest.raises(ValueError, match="must be"):
        Coalescing(**kwargs)


class FakeConsumer:
    """Hands out `ready` at once and `coming` only to a consume that waits."""

    def __init__(self, ready: list[str], coming: list[str]) -> None:
        self.ready, self.coming = list(ready), list(coming)
        self.waits: list[tuple[int, float]] = []

    def poll(self, timeout: float) -> str | None:
        return self.ready.pop(0) if self.ready else None

    def consume(self, num_messages: int, timeout: float) -> list[str]:
        if timeout > 0:
            self.waits.append((num_messages, timeout))
            self.ready += self.coming
            self.coming = []
        taken, self.ready = self.ready[:num_messages], self.ready[num_messages:]
        return taken


def test_poll_batch_waits_for_the_rest_of_a_busy_streams_batch():
    coalescing = Coalescing(max_hold_s=0.002, target=16)
    coalescing.taken(round(4_000 * TAU_S), time.monotonic())  # about 4,000 a second
    consumer = FakeConsumer(["a", "b"], [f"c{i}" for i in range(20)])
    batch = poll_batch(consumer, 5000, 0.05, coalescing=coalescing)  # type: ignore[arg-type]
    assert consumer.waits
    assert consumer.waits[0][0] == 14
    assert batch[:2] == ["a", "b"]
    assert len(batch) == 16


def test_poll_batch_without_coalescing_takes_only_what_is_there():
    consumer = FakeConsumer(["a", "b"], ["c"])
    assert poll_batch(consumer, 5000, 0.05) == ["a", "b"]  # type: ignore[arg-type]
    assert consumer.waits == []
