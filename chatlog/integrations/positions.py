"""`PositionBook`: the newest position this process knows for each session.

Read-your-writes needs the position of one's own last write. A LangChain
`RunnableWithMessageHistory` builds a new history object for every call, so the position
cannot live only in the object that wrote: the book keeps it per session, for the whole
process, and the next history object of the session reads after it. Positions are kept
per (topic, session_id) key, never move back, and the book forgets the least recently used
sessions past `max_sessions`, so its memory stays bounded. Thread-safe; no I/O.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from chatlog.schemas.position import Position

__all__ = ["PositionBook", "SessionKey", "newest"]

SessionKey = tuple[str, ...]
"""(topic, ..., session_id): positions are only comparable within one session of one
topic; a user of the key may narrow it further (the LangChain history's is per user)."""


class PositionBook:
    """Per session, the newest position noted; bounded, least recently used forgotten."""

    def __init__(self, *, max_sessions: int = 100_000) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self._positions: OrderedDict[SessionKey, Position] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: SessionKey) -> Position | None:
        """The newest position noted for `key`, if the book still has one."""
        with self._lock:
            position = self._positions.get(key)
            if position is not None:
                self._positions.move_to_end(key)
            return position

    def note(self, key: SessionKey, position: Position | None) -> Position | None:
        """Note `position` for `key` unless a newer one is known; returns the newest."""
        with self._lock:
            known = self._positions.get(key)
            latest = newest(known, position)
            if latest is None:
                return None
            self._positions[key] = latest
            self._positions.move_to_end(key)
            while len(self._positions) > self.max_sessions:
                self._positions.popitem(last=False)
            return latest

    def __len__(self) -> int:
        with self._lock:
            return len(self._positions)


def newest(a: Position | None, b: Position | None) -> Position | None:
    """The later of two positions of one session (either may be None)."""
    if a is None:
        return b
    if b is None:
        return a
    # One session lives on one partition, so its positions compare by offset.
    return b if b.offset > a.offset else a
