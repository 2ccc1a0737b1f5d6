"""LangGraph threads' checkpoints in Redis: written by the projector, read by the saver.

Two hashes per thread (the session), in its hash tag and its generation, so a replay
rebuilds them with the views and a rebuild's flip switches them with the views:

* ``...:s:{<session>}:ckpt``: per namespace, ``l<0><ns>`` the newest checkpoint's id,
  ``c<0><ns>`` that checkpoint's event as logged (sealed), and ``w<0><ns><0><offset>``
  each event of pending writes against it. A newer checkpoint of the namespace drops the
  older one's writes (the log keeps them).
* ``...:s:{<session>}:ckpti``: ``p<0><ns><0><id>`` the offset of every checkpoint, and
  ``first`` the thread's first checkpoint's offset, where a read of its history starts.

"Newest" is the greatest checkpoint id (LangGraph's ids are time-ordered uuid6), as
LangGraph's own savers answer. Each event is applied by one Lua call, so a reader never
sees a checkpoint without its id; applying one again writes the same fields. The store
writes them (`RedisViewStore.apply_checkpoints`); this module reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis

from chatlog.projections.checkpoints import CheckpointKind
from chatlog.projections.keys import KeySpace
from chatlog.projections.redis_store import CHECKPOINT_FIELD_SEP as _SEP
from chatlog.projections.redis_store import redis_errors, text
from chatlog.schemas.errors import ConfigError

__all__ = ["LatestCheckpoint", "RedisCheckpoints"]


@dataclass(frozen=True, slots=True)
class LatestCheckpoint:
    """A namespace's newest checkpoint as stored: its event and its writes' events
    (in log order), all as logged."""

    saved: bytes
    writes: tuple[bytes, ...]


class RedisCheckpoints:
    """Reads threads' checkpoints from the live generation (blocking client)."""

    def __init__(self, client: redis.Redis, keys: Callable[[], KeySpace]) -> None:
        self.client = client
        # The reader's `keys()`: the live generation, looked up through its pointer.
        self._keys = keys

    def latest(self, session_id: str, checkpoint_ns: str) -> LatestCheckpoint | None:
        """The namespace's newest checkpoint, None if the thread has none there."""
        with redis_errors():
            stored = self.client.hgetall(self._keys().checkpoints(session_id))
        # Events are binary: a client that decodes replies cannot read them (chatlog's
        # clients never do).
        fields: dict[str, bytes] = {text(name): _binary(value) for name, value in stored.items()}
        saved = fields.get(f"{CheckpointKind.SAVED.value}{_SEP}{checkpoint_ns}")
        if saved is None:
            return None
        prefix = f"{CheckpointKind.WRITES.value}{_SEP}{checkpoint_ns}{_SEP}"
        writes = sorted(
            (int(name[len(prefix) :]), value)
            for name, value in fields.items()
            if name.startswith(prefix)
        )
        return LatestCheckpoint(saved, tuple(value for _, value in writes))

    def latest_id(self, session_id: str, checkpoint_ns: str) -> str | None:
        """The id of the namespace's newest checkpoint."""
        with redis_errors():
            found = self.client.hget(
                self._keys().checkpoints(session_id), f"l{_SEP}{checkpoint_ns}"
            )
        return None if found is None else text(found)

    def offset_of(self, session_id: str, checkpoint_ns: str, checkpoint_id: str) -> int | None:
        """Where the checkpoint is in the log (its offset), None if the thread has none."""
        with redis_errors():
            found = self.client.hget(
                self._keys().checkpoint_index(session_id),
                f"p{_SEP}{checkpoint_ns}{_SEP}{checkpoint_id}",
            )
        return None if found is None else int(found)

    def first_offset(self, session_id: str) -> int | None:
        """The offset of the thread's first checkpoint, None if it has none."""
        with redis_errors():
            found = self.client.hget(self._keys().checkpoint_index(session_id), "first")
        return None if found is None else int(found)


def _binary(value: bytes | str) -> bytes:
    if isinstance(value, str):
        raise ConfigError(
            "the Redis client decodes replies (decode_responses=True), but checkpoints are "
            "binary: build it with chatlog.wiring.redis_client(settings)",
            setting="redis_client",
        )
    return value
