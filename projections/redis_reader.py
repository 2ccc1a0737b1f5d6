"""Reading the read-model: a session's context and a user's sessions, sync and asyncio.

One context read is one round trip (`chatlog.projections.redis_loading`: the session's
meta hash and message list in one MULTI, with the generation's epoch and the reader's
key entries). Two rules hold for every read:

* Ownership: every read names the user and the tenant. A session of another user, or
  of the same user id in another tenant, is not found, exactly as a missing one
  (`chatlog.projections.access.readable`): none of its content, and not even its
  existence, leaves Redis through this reader. An erased session is not found either.
* Read-your-writes: `context(..., after=position)` waits, bounded by `timeout`, until the
  projection has applied the event at `position` (the one `append` returned), so a prompt
  built right after a user's message always contains it.

The live generation is looked up through the pointer key and cached for
`generation_refresh_s`; a rebuild keeps the old generation for longer than that.

Lost data is never served: a generation without its epoch, or no pointer at all,
raises `ReadModelLost` rather than a partial view or a "not found". A session list
reads the user's index of their tenant, which a generation built with an older key
layout does not have: it raises `LayoutMismatch` (run `chatlog replay`) rather than
list nothing.

Views are stored sealed (`chatlog.projections.view`): the same MULTI fetches the reader's
key-directory entries (of the tenant and user who read), and `ViewOpener` opens the view
with them, so a user erased a moment ago reads as `Erased`, whatever is cached.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import redis
import redis.asyncio

from chatlog.projections.access import no_session, readable
from chatlog.projections.context import Context, SummaryRole, TokenCounter, approx_tokens
from chatlog.projections.encoding import decode_message
from chatlog.projections.keys import ERASED_FIELD, KeySpace
from chatlog.projections.opening import ViewOpener
from chatlog.projections.redis_keys import entries_of
from chatlog.projections.redis_loading import (
    Loaded,
    aload_guarded,
    arun_guarded,
    check_guard,
    check_layout,
    load_guarded,
    run_guarded,
)
from chatlog.projections.redis_store import redis_errors, text, text_map
from chatlog.projections.store import SessionEntry, session_entries
from chatlog.projections.view import SessionView
from chatlog.schemas.errors import (
    ConfigError,
    Erased,
    InvalidInput,
    ReadTimeout,
)
from chatlog.schemas.ids import validate_id
from chatlog.schemas.keyring import KeyEntries
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope

__all__ = [
    "DEFAULT_GENERATION",
    "AsyncRedisReader",
    "RedisReader",
    "opener_of",
]

DEFAULT_GENERATION = "g1"
_FIRST_POLL_S = 0.0005
_MAX_POLL_S = 0.005  # a poll is one HGET: cheap enough to poll often
_MAX_PROGRESS_POLL_S = 0.05  # processors wait on the projector, not a user


class RedisReader:
    """Reads contexts and session lists from Redis (blocking client)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "chatlog",
        ttl_s: float | None = None,
        generation_refresh_s: float = 1.0,
        count_tokens: TokenCounter = approx_tokens,
        summary_role: SummaryRole = SummaryRole.DATA,
        opener: ViewOpener | None = None,
    ) -> None:
        self.client = client
        self.count_tokens = count_tokens
        self.summary_role = summary_role
        # Opens sealed views; a reader without one refuses them (`ConfigError`).
        self.opener = opener
        self.ttl_ms = int(ttl_s * 1000) if ttl_s else 0
        self._keys = KeySpace(prefix)
        self._refresh_s = generation_refresh_s
        self._checked_at = float("-inf")

    def keys(self, *, refresh: bool = False) -> KeySpace:
        """The key space of the live generation (cached briefly)."""
        now = time.monotonic()
        if refresh or now - self._checked_at >= self._refresh_s:
            live = self.client.get(self._keys.pointer)
            self._keys = self._keys.with_generation(text(live) if live else DEFAULT_GENERATION)
            self._checked_at = now
        return self._keys

    def context(
        self,
        session_id: str,
        *,
        user_id: str,
        tenant: str = "default",
        after: Position | None = None,
        timeout: float = 5.0,
        reveal: bool = False,
    ) -> Context:
        """The session of `user_id` of `tenant`: its context, once the projection has
        applied `after` (if given); with `reveal`, tokenized personal data
        (``CHATLOG_PII_MODE=tokenize``) restored in place of its placeholders (the read
        is the owner's: another's session is not found whatever `reveal` says)."""
        reader = _reader(session_id, tenant, user_id)
        deadline = time.monotonic() + timeout
        delay = _FIRST_POLL_S
        while True:
            remaining = deadline - time.monotonic()
            with redis_errors():
                # While waiting, poll the applied offset only; read the view once it is there.
                if after is None or remaining <= 0 or self._reached(session_id, after, reader):
                    view, window, entries, raw = self._load(session_id, reader)
                    ready = _answer(
                        view, entries, session_id=session_id, reader=reader, after=after
                    )
                    if ready is not None:
                        return Context.from_view(
                            self._open_stored(ready, raw, {reader: entries}, reveal=reveal),
                            window_size=window,
                            count_tokens=self.count_tokens,
                            summary_role=self.summary_role,
                        )
                    if remaining <= 0:
                        raise _not_reached(session_id, after, view, timeout)
            time.sleep(min(delay, max(remaining, 0.0)))
            delay = min(delay * 2, _MAX_POLL_S)

    def sessions(
        self, user_id: str, *, tenant: str = "default", limit: int = 50
    ) -> list[SessionEntry]:
        """The sessions of `user_id` of `tenant`, most recently active first (expired
        ones left out); `LayoutMismatch` from a generation of an older key layout."""
        owner = _scope(tenant, user_id)
        with redis_errors():
            return self._sessions(owner, limit)

    def _sessions(self, owner: KeyScope, limit: int) -> list[SessionEntry]:
        for refresh in (False, True):
            keys = self.keys(refresh=refresh)
            index = keys.user_sessions(owner.tenant, owner.user_id)
            replies = run_guarded(
                self.client,
                keys,
                index,
                functools.partial(
                    _queue_sessions, keys=keys, index=index, limit=limit, ttl_ms=self.ttl_ms
                ),
            )
            if check_guard(replies[:2], keys, final=refresh):
                break
        check_layout(replies[:2], keys)
        session_ids = [text(s) for s in replies[-1]]
        pipe = self.client.pipeline(transaction=False)
        for session_id in session_ids:
            pipe.hgetall(keys.meta(session_id))
        pipe.hgetall(keys.user_keys(owner.tenant, owner.user_id))
        *raw, raw_entries = pipe.execute()
        known = {owner: entries_of(owner, raw_entries)}
        if known[owner].erased_at is not None:
            return []  # erased: nothing of theirs is listed, whatever Redis still holds
        entries, gone = session_entries(
            session_ids,
            [text_map(meta) for meta in raw],
            tenant=owner.tenant,
            user_id=owner.user_id,
            open_view=lambda view: self._open(view, known),
        )
        if gone:
            self.client.zrem(index, *gone)
        return entries

    def _reached(self, session_id: str, after: Position, reader: KeyScope) -> bool:
        """Whether to read the view now: it has applied `after`, or the reader is erased
        (its view is gone for good: the read answers `Erased` instead of waiting)."""
        pipe = self.client.pipeline(transaction=False)
        _queue_reached(pipe, self.keys(), session_id, reader)
        return _reached(pipe.execute(), after)

    def _load(self, session_id: str, owner: KeyScope) -> Loaded:
        loaded = load_guarded(self.client, self.keys(), session_id, final=False, owner=owner)
        if loaded is None:  # a replay flipped the pointer since it was cached
            loaded = load_guarded(
                self.client, self.keys(refresh=True), session_id, final=True, owner=owner
            )
            assert loaded is not None  # final: lost raises
        return loaded

    def _open(self, view: SessionView, known: dict[KeyScope, KeyEntries]) -> SessionView:
        """`view` opened with its owner's entries (fetched unless `known` has them);
        `Erased` if its owner was erased, sealed or not."""
        if self.opener is None and not view.sealed:
            return view
        return opener_of(self.opener).open(view, self._entries(view, known))

    def _open_stored(
        self,
        view: SessionView,
        raw: Sequence[Any],
        known: dict[KeyScope, KeyEntries],
        *,
        reveal: bool = False,
    ) -> SessionView:
        """`view` (decoded without messages) with its stored messages `raw`, opened."""
        if self.opener is None:
            return _unopened(view, raw)
        return self.opener.open_stored(view, raw, self._entries(view, known), reveal=reveal)

    def _entries(self, view: SessionView, known: dict[KeyScope, KeyEntries]) -> KeyEntries:
        scope = KeyScope(view.tenant, view.user_id)
        if scope not in known:
            with redis_errors():
                raw = self.client.hgetall(self.keys().user_keys(scope.tenant, scope.user_id))
            known[scope] = entries_of(scope, raw)
        return known[scope]


class AsyncRedisReader:
    """Reads contexts and session lists from Redis (asyncio client)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "chatlog",
        ttl_s: float | None = None,
        generation_refresh_s: float = 1.0,
        count_tokens: TokenCounter = approx_tokens,
        summary_role: SummaryRole = SummaryRole.DATA,
        opener: ViewOpener | None = None,
    ) -> None:
        self.client = client
        self.count_tokens = count_tokens
        self.summary_role = summary_role
        # Opens sealed views; a reader without one refuses them (`ConfigError`).
        self.opener = opener
        self.ttl_ms = int(ttl_s * 1000) if ttl_s else 0
        self._keys = KeySpace(prefix)
        self._refresh_s = generation_refresh_s
        self._checked_at = float("-inf")

    async def keys(self, *, refresh: bool = False) -> KeySpace:
        """The key space of the live generation (cached briefly)."""
        now = time.monotonic()
        if refresh or now - self._checked_at >= self._refresh_s:
            live = await self.client.get(self._keys.pointer)
            self._keys = self._keys.with_generation(text(live) if live else DEFAULT_GENERATION)
            self._checked_at = now
        return self._keys

    async def context(
        self,
        session_id: str,
        *,
        user_id: str,
        tenant: str = "default",
        after: Position | None = None,
        timeout: float = 5.0,
        reveal: bool = False,
    ) -> Context:
        """The session of `user_id` of `tenant`: its context, once the projection has
        applied `after` (if given); with `reveal`, tokenized personal data
        (``CHATLOG_PII_MODE=tokenize``) restored in place of its placeholders (the read
        is the owner's: another's session is not found whatever `reveal` says)."""
        reader = _reader(session_id, tenant, user_id)
        deadline = time.monotonic() + timeout
        delay = _FIRST_POLL_S
        while True:
            remaining = deadline - time.monotonic()
            with redis_errors():
                # While waiting, poll the applied offset only; read the view once it is there.
                if (
                    after is None
                    or remaining <= 0
                    or await self._reached(session_id, after, reader)
                ):
                    view, window, entries, raw = await self._load(session_id, reader)
                    ready = _answer(
                        view, entries, session_id=session_id, reader=reader, after=after
                    )
                    if ready is not None:
                        return Context.from_view(
                            await self._open_stored(ready, raw, {reader: entries}, reveal=reveal),
                            window_size=window,
                            count_tokens=self.count_tokens,
                            summary_role=self.summary_role,
                        )
                    if remaining <= 0:
                        raise _not_reached(session_id, after, view, timeout)
            await asyncio.sleep(min(delay, max(remaining, 0.0)))
            delay = min(delay * 2, _MAX_POLL_S)

    async def sessions(
        self, user_id: str, *, tenant: str = "default", limit: int = 50
    ) -> list[SessionEntry]:
        """`RedisReader.sessions`, awaited."""
        owner = _scope(tenant, user_id)
        with redis_errors():
            return await self._sessions(owner, limit)

    async def progress(self) -> dict[int, int]:
        """The live generation's progress marks: partition -> last offset projected."""
        with redis_errors():
            marks = text_map(await self.client.hgetall((await self.keys()).progress))
        return {int(partition): int(offset) for partition, offset in marks.items()}

    async def projected_view(
        self, session_id: str, position: Position, *, timeout: float = 5.0
    ) -> SessionView | None:
        """The session's view (None if it has none), once its whole partition is projected
        up to `position`; for processors, so no ownership check and erased views included.

        The wait is on the partition's progress mark rather than on the view, because an
        event the projector refused (a foreign writer) moves no view but does move the mark.
        """
        validate_id(session_id, field="session_id")
        await self.wait_projected(position, timeout=timeout)
        with redis_errors():
            view = (await self._load(session_id))[0]
        return None if view is None else await self.open(view)

    async def wait_projected(self, position: Position, *, timeout: float = 5.0) -> None:
        """Return once the projector has applied every record of the partition up to
        `position`; `ReadTimeout` after `timeout` seconds."""

        async def mark() -> int | None:
            keys = await self.keys()
            value = await self.client.hget(keys.progress, str(position.partition))
            return None if value is None else int(value)

        await self._poll(
            mark, position, timeout, f"the projection of partition {position.partition}"
        )

    async def wait_applied(self, session_id: str, after: Position, *, timeout: float = 5.0) -> None:
        """Return once the session's view has applied `after`; `ReadTimeout` after `timeout`."""
        await self._poll(
            functools.partial(self.applied_offset, session_id),
            after,
            timeout,
            f"the projection of session {session_id}",
            max_poll_s=_MAX_POLL_S,  # a reader waits for its own write: poll often
        )

    async def _poll(
        self,
        offset: Callable[[], Awaitable[int | None]],
        target: Position,
        timeout: float,
        what: str,
        *,
        max_poll_s: float = _MAX_PROGRESS_POLL_S,
    ) -> None:
        """Poll `offset` (cheap: one HGET) with a growing pause until it reaches `target`."""
        deadline = time.monotonic() + timeout
        delay = _FIRST_POLL_S
        while True:
            with redis_errors():
                reached = await offset()
            if reached is not None and reached >= target.offset:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                at = "nothing yet" if reached is None else f"{target.partition}:{reached}"
                raise ReadTimeout(
                    f"{what} did not reach {target} within {timeout:g} s (it is at {at}); "
                    f"is the projector running (`chatlog run projector`)?",
                    partition=target.partition,
                )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, max_poll_s)

    async def _sessions(self, owner: KeyScope, limit: int) -> list[SessionEntry]:
        for refresh in (False, True):
            keys = await self.keys(refresh=refresh)
            index = keys.user_sessions(owner.tenant, owner.user_id)
            replies = await arun_guarded(
                self.client,
                keys,
                index,
                functools.partial(
                    _queue_sessions, keys=keys, index=index, limit=limit, ttl_ms=self.ttl_ms
                ),
            )
            if check_guard(replies[:2], keys, final=refresh):
                break
        check_layout(replies[:2], keys)
        session_ids = [text(s) for s in replies[-1]]
        pipe = self.client.pipeline(transaction=False)
        for session_id in session_ids:
            pipe.hgetall(keys.meta(session_id))
        pipe.hgetall(keys.user_keys(owner.tenant, owner.user_id))
        *raw, raw_entries = await pipe.execute()
        known = {owner: entries_of(owner, raw_entries)}
        if known[owner].erased_at is not None:
            return []  # erased: nothing of theirs is listed, whatever Redis still holds
        entries, gone = session_entries(
            session_ids,
            [text_map(meta) for meta in raw],
            tenant=owner.tenant,
            user_id=owner.user_id,
            # Only the owner's sessions are opened, and `known` has the owner's entries.
            open_view=lambda view: opener_of(self.opener).open(view, known[owner]),
        )
        if gone:
            await self.client.zrem(index, *gone)
        return entries

    async def _reached(self, session_id: str, after: Position, reader: KeyScope) -> bool:
        """`RedisReader._reached`, awaited."""
        pipe = self.client.pipeline(transaction=False)
        _queue_reached(pipe, await self.keys(), session_id, reader)
        return _reached(await pipe.execute(), after)

    async def applied_offset(self, session_id: str) -> int | None:
        """The offset the session's view has applied (None: no view); one HGET.

        A probe for "has anything changed", with no read rule: it says an offset, never
        content, so its caller reads through `context` before showing anything."""
        with redis_errors():
            value = await self.client.hget((await self.keys()).meta(session_id), "last_offset")
        return None if value is None else int(value)

    async def open(self, view: SessionView) -> SessionView:
        """A stored view (`aload_session`) opened with its owner's keys; `Erased` if the
        owner was erased. Apply the read rule first: this opens whoever owns it."""
        return await self._open(view, {})

    async def _load(self, session_id: str, owner: KeyScope | None = None) -> Loaded:
        keys = await self.keys()
        loaded = await aload_guarded(self.client, keys, session_id, final=False, owner=owner)
        if loaded is None:  # a replay flipped the pointer since it was cached
            keys = await self.keys(refresh=True)
            loaded = await aload_guarded(self.client, keys, session_id, final=True, owner=owner)
            assert loaded is not None  # final: lost raises
        return loaded

    async def _open(self, view: SessionView, known: dict[KeyScope, KeyEntries]) -> SessionView:
        """`RedisReader._open`, awaited."""
        if self.opener is None and not view.sealed:
            return view
        return opener_of(self.opener).open(view, await self._entries(view, known))

    async def _open_stored(
        self,
        view: SessionView,
        raw: Sequence[Any],
        known: dict[KeyScope, KeyEntries],
        *,
        reveal: bool = False,
    ) -> SessionView:
        """`RedisReader._open_stored`, awaited."""
        if self.opener is None:
            return _unopened(view, raw)
        entries = await self._entries(view, known)
        return self.opener.open_stored(view, raw, entries, reveal=reveal)

    async def _entries(self, view: SessionView, known: dict[KeyScope, KeyEntries]) -> KeyEntries:
        scope = KeyScope(view.tenant, view.user_id)
        if scope not in known:
            with redis_errors():
                keys = await self.keys()
                raw = await self.client.hgetall(keys.user_keys(scope.tenant, scope.user_id))
            known[scope] = entries_of(scope, raw)
        return known[scope]


def _queue_sessions(pipe: Any, *, keys: KeySpace, index: str, limit: int, ttl_ms: int) -> None:
    # After the guard (`run_guarded`: its two replies lead), expired sessions out of the
    # index, then the newest `limit`: one MULTI, so the list is of the generation the
    # guard vouched for.
    if ttl_ms:
        pipe.zremrangebyscore(index, "-inf", _now_ms() - ttl_ms)
    pipe.zrevrange(index, 0, limit - 1)


def _queue_reached(pipe: Any, keys: KeySpace, session_id: str, owner: KeyScope) -> None:
    # One round trip per poll: the offset the view applied, and the reader's erased mark.
    pipe.hget(keys.meta(session_id), "last_offset")
    pipe.hexists(keys.user_keys(owner.tenant, owner.user_id), ERASED_FIELD)


def _reached(replies: Sequence[Any], after: Position) -> bool:
    applied, erased = replies
    return bool(erased) or (applied is not None and int(applied) >= after.offset)


def _reader(session_id: str, tenant: str, user_id: str) -> KeyScope:
    validate_id(session_id, field="session_id")
    return _scope(tenant, user_id)


def _scope(tenant: str, user_id: str) -> KeyScope:
    """Who reads: `user_id` of `tenant`, both valid ids."""
    return KeyScope(validate_id(tenant, field="tenant"), validate_id(user_id, field="user_id"))


def _unopened(view: SessionView, raw: Sequence[Any]) -> SessionView:
    """`view` with its stored messages decoded, for a reader without keys: refused
    (`ConfigError`) if anything in it is sealed."""
    decoded = replace(view, messages=tuple(decode_message(r) for r in raw))
    if decoded.sealed:
        opener_of(None)
    return decoded


def opener_of(opener: ViewOpener | None, *, what: str = "sealed sessions") -> ViewOpener:
    """A reader's `opener`; `ConfigError` with the fix if it has none to open `what`."""
    if opener is None:
        raise ConfigError(
            f"this reader has no keys to open {what}: build it with "
            "chatlog.wiring.reader(settings), or pass opener=ViewOpener(keyring)",
            setting="opener",
        )
    return opener


def _answer(
    view: SessionView | None,
    entries: KeyEntries,
    *,
    session_id: str,
    reader: KeyScope,
    after: Position | None,
) -> SessionView | None:
    """The view if it answers the read, None to wait; raises for reads to refuse.

    `entries` are the reader's: an erased reader's session is `Erased`, even once gone.
    """
    if entries.erased_at is not None and (
        view is None or KeyScope(view.tenant, view.user_id) == reader
    ):
        raise Erased(
            f"session {session_id}: user {reader.user_id} of tenant {reader.tenant} was "
            f"erased at {entries.erased_at.isoformat()}; their sessions are gone for good",
            session_id=session_id,
        )
    view = readable(view, tenant=reader.tenant, user_id=reader.user_id)
    if after is None:
        if view is None:
            raise no_session(session_id, tenant=reader.tenant, user_id=reader.user_id)
        return view
    if view is None:
        return None
    if after.partition != view.partition:
        raise InvalidInput(
            f"position {after} is on partition {after.partition}, but session {session_id} "
            f"lives on partition {view.partition}; pass the position its append returned",
            session_id=session_id,
        )
    return view if view.last_offset >= after.offset else None


def _not_reached(
    session_id: str, after: Position | None, view: SessionView | None, timeout: float
) -> ReadTimeout:
    at = "nothing yet" if view is None else str(view.position)
    return ReadTimeout(
        f"the projection of session {session_id} did not reach {after} within {timeout:g} s "
        f"(it is at {at}); is the projector running (`chatlog run projector`)?",
        session_id=session_id,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
