"""Commits in log order for a consumer that finishes records out of order.

The summarizer works on many sessions at once, so the records of one partition finish in
any order; Kafka's committed offset, though, says "everything before this is done". The
`CommitTracker` acks a partition's records strictly in offset order, each once it and every
record before it have finished, and forgets a partition when it is revoked.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Collection

__all__ = ["Ack", "CommitTracker", "Pending"]

Ack = Callable[[], Awaitable[None]]
"""Commits one record; the consumer's own acknowledgement."""


class Pending:
    """One consumed record, acked once it and every record before it are finished."""

    __slots__ = ("ack", "done", "offset", "partition")

    def __init__(self, partition: int, offset: int, ack: Ack) -> None:
        self.partition = partition
        self.offset = offset
        self.ack = ack
        self.done = False


class CommitTracker:
    """Acks a partition's records in offset order, each once it is finished.

    A record finished out of order waits for every record before it: a consumer that
    commits the highest finished offset would skip a record still being worked on, and a
    crash would then lose that work.
    """

    def __init__(self) -> None:
        self._partitions: dict[int, deque[Pending]] = {}
        self._lock = asyncio.Lock()
        self._moved = asyncio.Event()
        self.size = 0

    def add(self, partition: int, offset: int, ack: Ack) -> Pending:
        """Track a consumed record; finish it with `finish`."""
        item = Pending(partition, offset, ack)
        self._partitions.setdefault(partition, deque()).append(item)
        self.size += 1
        return item

    async def finish(self, item: Pending) -> None:
        """Mark `item` finished and ack every finished record at the head of its partition."""
        item.done = True
        # Acks go out in order even when two tasks finish at once.
        async with self._lock:
            # Looked up again after every ack: a revoke while an ack is awaited hands the
            # partition's remaining records to another consumer.
            while (queue := self._partitions.get(item.partition)) and queue[0].done:
                head = queue.popleft()
                self.size -= 1
                await head.ack()
        self._moved.set()

    async def wait_below(self, limit: int) -> None:
        """Return once fewer than `limit` records are tracked."""
        while self.size >= limit:
            self._moved.clear()
            await self._moved.wait()

    def revoke(self, partitions: Collection[int]) -> None:
        """Forget `partitions`: their records belong to another consumer now."""
        for partition in partitions:
            self.size -= len(self._partitions.pop(partition, ()))
        self._moved.set()
