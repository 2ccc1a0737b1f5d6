"""Generations of the read-model in Redis: which one is live, flipping, comparing, deleting.

A rebuild never writes into the generation readers use. It fills a new one
(``chatlog:g2:...``) and then flips the pointer key ``chatlog:generation`` from ``g1`` to
``g2`` with a compare-and-set, so two rebuilds cannot both win and readers switch in one
step. Readers and the projector re-read the pointer about once a second. The old
generation is then deleted with UNLINK (freed by a Redis background thread) in batches
found by SCAN, so no single command holds Redis up however large it is.

A rebuild in progress is recorded in ``chatlog:rebuild`` (which generation, since when),
so an interrupted one can be resumed: its progress marks say where each partition was.

Each generation is created with an epoch (``chatlog:g2:epoch``, see
`chatlog.projections.epochs`): `create` writes it before anything else is, and a
generation the pointer names without it has lost its data.

Its epoch also records the key layout it was built with (`layout`): a rebuild always
builds this code's layout, which is how `chatlog replay` migrates an older one.

`compare` checks two generations key by key: every session's meta hash and message
list, and every user's session index. The progress marks are left out: they say how far
each generation has read, which is not part of what it shows. Two generations of
different key layouts differ in that alone: their indexes are not compared.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from chatlog.projections.encoding import META_DEFAULTS
from chatlog.projections.epochs import layout_of, lost_epoch, new_epoch
from chatlog.projections.keys import LAYOUT, LEGACY_LAYOUT, KeySpace
from chatlog.projections.redis_cluster import is_cluster, write_stamps
from chatlog.projections.redis_store import redis_errors, text, text_map
from chatlog.schemas.position import Position

__all__ = [
    "Comparison",
    "Difference",
    "GenerationStore",
    "next_generation",
]

# KEYS: the pointer. ARGV: the expected live generation ("" for none), the new one.
_FLIP = """
local live = redis.call('GET', KEYS[1]) or ''
if live ~= ARGV[1] then return live end
redis.call('SET', KEYS[1], ARGV[2])
return ARGV[2]
"""

# KEYS: the pointer, the generation's epoch. ARGV: the generation, a new epoch. Names the
# first generation of an empty deployment; the live one if someone was first.
_INITIALISE = """
local live = redis.call('GET', KEYS[1])
if live then return live end
redis.call('SET', KEYS[2], ARGV[2], 'NX')
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""

_COMPARE_BATCH = 200  # sessions or users compared per pipelined round trip
_GENERATION_NUMBER = re.compile(r"g(\d+)")
_SESSION_META = re.compile(r":s:\{(?P<session>[^}]*)\}:meta$")
_USER_INDEX = re.compile(r":u:\{u:(?P<owner>[^}]*)\}:sessions$")


def next_generation(live: str) -> str:
    """The generation after `live` ("g1" -> "g2")."""
    match = _GENERATION_NUMBER.fullmatch(live)
    return f"g{int(match.group(1)) + 1}" if match else "g2"


@dataclass(frozen=True, slots=True)
class Difference:
    """One key that differs between two generations."""

    kind: str  # "session", "user index" or "layout"
    name: str  # the session id, the index's owner ("tenant:user"), or the generation
    detail: str


@dataclass(slots=True)
class Comparison:
    """The result of comparing two generations."""

    sessions: int = 0
    users: int = 0
    differences: list[Difference] = field(default_factory=list)


class GenerationStore:
    """Reads and moves the generation pointer of one key prefix."""

    def __init__(self, client: redis.Redis, *, prefix: str, default: str = "g1") -> None:
        self.client = client
        self.keys = KeySpace(prefix)
        self.default = default
        self._flip = client.register_script(_FLIP)
        self._initialise = client.register_script(_INITIALISE)

    @property
    def rebuild_key(self) -> str:
        """Where a rebuild in progress records itself."""
        return f"{self.keys.prefix}:rebuild"

    def live(self) -> str | None:
        """The live generation; None when Redis has no pointer (new, or its data lost)."""
        with redis_errors():
            value = self.client.get(self.keys.pointer)
        return text(value) if value is not None else None

    def flip(self, expected: str | None, new: str) -> bool:
        """Make `new` live if `expected` still is; False if someone else moved it."""
        with redis_errors():
            now = self._flip(keys=[self.keys.pointer], args=[expected or "", new])
        return text(now) == new

    def epoch(self, generation: str) -> str | None:
        """`generation`'s epoch value (None: it has none: lost, or never created)."""
        with redis_errors():
            value = self.client.get(self.keys.with_generation(generation).epoch)
        return text(value) if value is not None else None

    def create(self, generation: str, *, layout: int = LAYOUT) -> None:
        """Give `generation` its epoch, of key `layout`, before anything is written into
        it (kept if it has one)."""
        keys = self.keys.with_generation(generation)
        with redis_errors():
            self.client.set(keys.epoch, new_epoch(layout), nx=True)
            if is_cluster(self.client):
                # Every slot's stamp, before anything is written into the generation.
                epoch = self.client.get(keys.epoch)
                if epoch is not None:
                    write_stamps(self.client, keys, text(epoch))

    def layout(self, generation: str) -> int | None:
        """The key layout `generation` was built with (None: it has no epoch)."""
        epoch = self.epoch(generation)
        return None if epoch is None else layout_of(epoch)

    def initialise(self, generation: str) -> str:
        """Make `generation` (with a new epoch) live if no generation is; the live one."""
        if is_cluster(self.client):
            # The pointer and the epoch are in two slots: the epoch (and its stamps) first,
            # then the pointer if none is set; of two racing starts, the second finds the
            # first's pointer. A generation named only by a losing start keeps an epoch
            # and stamps, and no data.
            live = self.live()
            if live is not None:
                return live
            self.create(generation)
            with redis_errors():
                won = self.client.set(self.keys.pointer, generation, nx=True)
            return generation if won else (self.live() or generation)
        epoch_key = self.keys.with_generation(generation).epoch
        with redis_errors():
            live = self._initialise(
                keys=[self.keys.pointer, epoch_key], args=[generation, new_epoch()]
            )
        return text(live)

    def mark_lost(self, generation: str, reason: str) -> None:
        """Mark `generation` lost (if its epoch is still there), so that readers refuse
        it and no writer touches it until it is rebuilt."""
        keys = self.keys.with_generation(generation)
        with redis_errors():
            self.client.set(keys.epoch, lost_epoch(reason), xx=True)
            if is_cluster(self.client):
                # Every slot's stamp too, whether or not the epoch itself survived (it
                # lives on one master): readers of every slot refuse the generation.
                write_stamps(self.client, keys, lost_epoch(reason), only_existing=True)

    def rebuild_in_progress(self) -> dict[str, str]:
        """The rebuild recorded as under way (empty if none)."""
        with redis_errors():
            return text_map(self.client.hgetall(self.rebuild_key))

    def start_rebuild(self, generation: str, live: str | None) -> None:
        """Record that `generation` is being built to replace `live`."""
        with redis_errors():
            self.client.hset(
                self.rebuild_key,
                mapping={"generation": generation, "replaces": live or "", "since": time.time()},
            )

    def end_rebuild(self) -> None:
        """Forget the rebuild record."""
        with redis_errors():
            self.client.delete(self.rebuild_key)

    def exists(self, generation: str) -> bool:
        """Whether any key of `generation` exists."""
        return next(self._scan(generation, count=100), None) is not None

    def refuse_live(self, generation: str) -> None:
        """`ValueError` if `generation` is live: what is deleted must not be read."""
        if generation == self.live():
            raise ValueError(f"generation {generation} is live; flip the pointer first")

    def delete(self, generation: str, *, batch: int = 500, pause_s: float = 0.0) -> int:
        """UNLINK every key of `generation`, `batch` at a time; the number of keys removed.

        Refuses to delete the live generation.
        """
        self.refuse_live(generation)
        removed = 0
        keys: list[Any] = []
        for key in self._scan(generation, count=batch):
            keys.append(key)
            if len(keys) >= batch:
                removed += self._unlink(keys)
                keys = []
                if pause_s:
                    time.sleep(pause_s)  # leave Redis to its readers between batches
        if keys:
            removed += self._unlink(keys)
        return removed

    def session_position(self, generation: str, session_id: str) -> Position | None:
        """The position of the last event `generation` applied to a session (None if absent).

        Reads the meta hash alone: this answers for a session whose stored messages
        may be damaged, which `compare` has just reported.
        """
        keys = self.keys.with_generation(generation)
        with redis_errors():
            meta = text_map(self.client.hgetall(keys.meta(session_id)))
        if not meta:
            return None
        return Position(int(meta.get("partition", -1)), int(meta.get("last_offset", -1)))

    def compare(self, left: str, right: str, *, limit: int = 100) -> Comparison:
        """Compare generations `left` and `right` key by key (at most `limit` differences)."""
        result = Comparison()
        sessions: set[str] = set()
        users: set[str] = set()
        for generation in (left, right):
            for key in self._scan(generation, count=1000):
                name = text(key)
                if (match := _SESSION_META.search(name)) is not None:
                    sessions.add(match.group("session"))
                elif (match := _USER_INDEX.search(name)) is not None:
                    users.add(match.group("owner"))
        result.sessions, result.users = len(sessions), len(users)
        layouts = {g: self.layout(g) or LEGACY_LAYOUT for g in (left, right)}
        if layouts[left] != layouts[right]:
            old = left if layouts[left] != LAYOUT else right
            detail = f"built with key layout {layouts[old]}, not {LAYOUT}: run `chatlog replay`"
            result.differences.append(Difference("layout", old, detail))
            users = set()  # each layout names its indexes its own way
        # One pipelined round trip per batch of sessions, then per batch of users.
        for kind, names, check in (
            ("session", sessions, self._compare_sessions),
            ("user index", users, self._compare_indexes),
        ):
            ordered = sorted(names)
            for start in range(0, len(ordered), _COMPARE_BATCH):
                batch = ordered[start : start + _COMPARE_BATCH]
                for name, detail in check(left, right, batch):
                    result.differences.append(Difference(kind, name, detail))
        del result.differences[limit:]
        return result

    def _compare_sessions(
        self, left: str, right: str, session_ids: list[str]
    ) -> Iterator[tuple[str, str]]:
        a, b = self.keys.with_generation(left), self.keys.with_generation(right)
        pipe = self.client.pipeline(transaction=False)
        for session_id in session_ids:
            for keys in (a, b):
                pipe.hgetall(keys.meta(session_id))
                pipe.lrange(keys.messages(session_id), 0, -1)
        with redis_errors():
            replies = pipe.execute()
        for n, session_id in enumerate(session_ids):
            meta_a, msgs_a, meta_b, msgs_b = replies[4 * n : 4 * n + 4]
            meta_a, meta_b = text_map(meta_a), text_map(meta_b)
            if not meta_a or not meta_b:
                missing = left if not meta_a else right
                yield session_id, f"missing in {missing}"
                continue
            # A view stored before a meta field existed lacks it, meaning its default.
            meta_a, meta_b = {**META_DEFAULTS, **meta_a}, {**META_DEFAULTS, **meta_b}
            fields = sorted(
                k for k in meta_a.keys() | meta_b.keys() if meta_a.get(k) != meta_b.get(k)
            )
            if fields:
                shown = ", ".join(
                    f"{f}: {meta_a.get(f)!r:.40} != {meta_b.get(f)!r:.40}" for f in fields[:5]
                )
                yield session_id, f"meta differs ({shown})"
            elif [text(m) for m in msgs_a] != [text(m) for m in msgs_b]:
                yield session_id, f"messages differ ({len(msgs_a)} vs {len(msgs_b)} stored)"

    def _compare_indexes(
        self, left: str, right: str, owners: list[str]
    ) -> Iterator[tuple[str, str]]:
        """Compare the indexes of `owners` (their hash tags: "tenant:user", or "user" in
        layout 1) of two generations of the same layout."""
        a, b = self.keys.with_generation(left), self.keys.with_generation(right)
        layout = self.layout(left) or LEGACY_LAYOUT
        pipe = self.client.pipeline(transaction=False)
        for owner in owners:
            tenant, _, user_id = owner.rpartition(":")  # no tenant in layout 1
            for keys in (a, b):
                index = keys.user_sessions(tenant, user_id, layout=layout)
                pipe.zrange(index, 0, -1, withscores=True)
        with redis_errors():
            replies = pipe.execute()
        for n, user_id in enumerate(owners):
            index_a, index_b = replies[2 * n : 2 * n + 2]
            if _entries(index_a) != _entries(index_b):
                yield (
                    user_id,
                    f"{len(index_a)} vs {len(index_b)} sessions listed, or their activity "
                    "times differ",
                )

    def _scan(self, generation: str, *, count: int) -> Iterator[Any]:
        pattern = self.keys.with_generation(generation).generation_pattern()
        with redis_errors():
            yield from self.client.scan_iter(match=pattern, count=count)

    def _unlink(self, keys: list[Any]) -> int:
        with redis_errors():
            return int(self.client.unlink(*keys))


def _entries(index: list[Any]) -> list[tuple[str, float]]:
    """A ZRANGE WITHSCORES reply as (session id, score) pairs."""
    return [(text(session_id), score) for session_id, score in index]
