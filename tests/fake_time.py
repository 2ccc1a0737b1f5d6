"""`FakeTime`: a clock for the retry and circuit-breaker tests that never waits."""

from __future__ import annotations

__all__ = ["FakeTime"]


class FakeTime:
    """A clock that only moves when something sleeps on it (or a test moves it); `sleep`
    for asyncio, `block` for a thread, both recorded in `sleeps`."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def block(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.block(seconds)
