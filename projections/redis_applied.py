"""`RedisAppliedFeed`: the projector's "applied" notices, fanned out within one process.

What is the feed? The live projector publishes a notice on a session's shard channel
(`KeySpace.applied`) each time it writes that session (`RedisViewStore.notify`). A
process that streams live updates to many clients (the HTTP gateway) holds one pub/sub
connection, subscribed to the channels of the sessions its clients watch, and wakes
each client's `Watch` when a notice arrives: one Redis connection per process, not one
per client. A channel is subscribed while at least one `Watch` is on it.

Why sharded pub/sub (SSUBSCRIBE, Redis 7)? On Redis Cluster a shard channel lives on the
shard of its hash slot, which is the session's (the channel carries the session's hash
tag), so a notice travels within that shard only, where a classic PUBLISH is broadcast
to every node of the cluster. On one node the two behave alike. On a cluster the feed's
connection is redis-py's cluster pub/sub: one connection per shard it listens to.

A notice is a hint, never the data: the listener reads through the normal read path
(ownership and erasure checked there). Pub/sub delivers at most once, so a notice can be
lost (the connection dropped, Redis restarted, a subscription not yet confirmed): a
listener also checks every few seconds whether the session moved, and a lost notice
delays an update, never drops it. When the connection fails, every watch is woken, so
that its listener checks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio

from chatlog.projections.redis_cluster import is_cluster
from chatlog.projections.redis_store import parse_applied_notice, text
from chatlog.schemas.position import Position

__all__ = ["RedisAppliedFeed", "Watch"]

log = logging.getLogger("chatlog.applied")

_CONFIRM_TIMEOUT_S = 2.0  # a subscription Redis has not confirmed by then: rely on rechecks
_READ_IDLE_S = 5.0  # how long one read of the connection waits for a message
_RETRY_S = 1.0
# On a cluster one read polls each shard's connection in turn, sharing its wait between
# them: a short wait, so a notice on one shard never waits out the others' idle time.
_CLUSTER_READ_S = 0.05  # after the connection failed, before reading (and reconnecting) again


class Watch:
    """One listener's view of a channel: woken by each notice, or when the feed closes."""

    def __init__(self) -> None:
        self._woken = asyncio.Event()
        # The newest position a notice named since the last `wait` (None: none named one).
        self.notified: Position | None = None
        self.closed = False

    def wake(self, position: Position | None = None) -> None:
        """Wake the listener (a notice naming `position`, or just "look again")."""
        if position is not None and (self.notified is None or position > self.notified):
            self.notified = position
        self._woken.set()

    def close(self) -> None:
        """The feed closed: wake the listener for good."""
        self.closed = True
        self._woken.set()

    async def wait(self, timeout: float) -> bool:
        """True once woken (the wake is then used up), False after `timeout` seconds."""
        try:
            await asyncio.wait_for(self._woken.wait(), timeout)
        except TimeoutError:
            return False
        if not self.closed:
            self._woken.clear()
        return True

    def take_notified(self) -> Position | None:
        """The newest position notified since the last call, and forget it."""
        position, self.notified = self.notified, None
        return position


class RedisAppliedFeed:
    """One sharded pub/sub connection, fanning notices out to the watches of a process."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._pubsub: Any = None  # redis.asyncio.client.PubSub, made on the first watch
        self._watches: dict[str, set[Watch]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()  # SSUBSCRIBE and SUNSUBSCRIBE, one at a time
        self.closed = False
        # A cluster's pub/sub holds one connection per shard that has a subscribed
        # channel (redis-py's ClusterPubSub, which follows a channel to its slot's node).
        self.cluster = is_cluster(client)

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[Watch]:
        """A `Watch` on `channel` for the block, subscribed (as far as Redis confirms
        within a moment) when the block starts: a notice sent after that wakes it."""
        watch = Watch()
        if self.closed:
            watch.close()
            yield watch
            return
        watches = self._watches.setdefault(channel, set())
        watches.add(watch)
        try:
            if len(watches) == 1:
                await self._subscribe(channel)
            confirmed = self._confirmed.get(channel)
            if confirmed is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(confirmed), _CONFIRM_TIMEOUT_S)
            yield watch
        finally:
            watches.discard(watch)
            if not watches and self._watches.get(channel) is watches:
                del self._watches[channel]
                # Shielded: a watch usually ends because its listener was cancelled (the
                # client went away), and a cancelled SUNSUBSCRIBE would leave the channel
                # subscribed, its notices read for nobody.
                await asyncio.shield(self._unsubscribe(channel))

    async def aclose(self) -> None:
        """Wake every watch for good, stop reading and release the connection."""
        self.closed = True
        for watches in self._watches.values():
            for watch in watches:
                watch.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.aclose()

    async def _subscribe(self, channel: str) -> None:
        self._confirmed[channel] = asyncio.get_running_loop().create_future()
        try:
            async with self._sending:
                if self._pubsub is None:
                    self._pubsub = self.client.pubsub()
                await self._pubsub.ssubscribe(channel)
        except (redis.RedisError, OSError) as exc:
            # Not fatal: the listener's rechecks find what the notices would have said,
            # and a reconnection subscribes again to every channel the feed still has.
            log.warning("could not subscribe to %s (%s); relying on rechecks", channel, exc)
            self._confirmed.pop(channel, None)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="chatlog-applied-feed")

    async def _unsubscribe(self, channel: str) -> None:
        self._confirmed.pop(channel, None)
        if self._pubsub is None or self.closed:
            return
        try:
            async with self._sending:
                await self._pubsub.sunsubscribe(channel)
        except (redis.RedisError, OSError) as exc:
            log.info("could not unsubscribe from %s (%s)", channel, exc)

    async def _read(self) -> None:
        while not self.closed:
            try:
                if self.cluster:
                    message = await self._pubsub.get_sharded_message(timeout=_CLUSTER_READ_S)
                else:
                    message = await self._pubsub.get_message(timeout=_READ_IDLE_S)
            except (redis.RedisError, OSError) as exc:
                log.warning("the notice connection failed (%s); reconnecting", exc)
                self._wake_all()  # notices may have been lost meanwhile: look now
                await asyncio.sleep(_RETRY_S)
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel = text(message["type"]), text(message["channel"])
        if kind == "smessage":
            position = parse_applied_notice(message["data"])
            for watch in self._watches.get(channel, ()):
                watch.wake(position)
        elif kind == "ssubscribe":
            confirmed = self._confirmed.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)

    def _wake_all(self) -> None:
        for watches in self._watches.values():
            for watch in watches:
                watch.wake()
