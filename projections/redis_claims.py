"""Who owns a session id: claimed in Redis by its first writer, checked before an append.

The projector binds a session to the user of its first event and dead-letters anyone
else's, but only after the event is in the log, with its text. A claim answers before
anything is published: `ChatLog.append` (and `start_session`) claim the session for the
writer, and a session claimed by another user, or by the same user id in another
tenant, raises `OwnershipError`, nothing sent (`chatlog.projections.access.refuse_writer`).

    chatlog:owner:{session-42}    "acme\\x1falice"   (expires with the session's view)

What does a claim hold? The owner's tenant and id. Where none exists yet, the live
read-model's owner of the session is taken first (a session written before claims
existed, or whose claim expired while its view lives), else the writer's: `SET NX GET`
makes the first of two racing writers the owner, and the other is refused. The projector
stays the last line: it alone decides from the log, for writers that bypass the client
(a raw `ConversationProducer.publish`) and for a Redis that lost its claims.

A claim lives as long as the session's view (`CHATLOG_SESSION_TTL_S`, refreshed by every
checked append; forever when views never expire). A process remembers for a minute the
sessions it has checked, so a chat's appends cost one Redis round trip a minute, not one
each.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import redis
import redis.asyncio

from chatlog.projections.access import refuse_writer
from chatlog.projections.keys import KeySpace
from chatlog.projections.redis_store import redis_errors
from chatlog.schemas.sealing import KeyScope

__all__ = ["AsyncRedisSessionClaims", "RedisSessionClaims", "drop_claims"]

_SEP = "\x1f"  # no id character: "tenant<US>user" cannot be confused
# The claim if it is the writer's, refreshed; else whatever it holds (or nil).
_MINE_REFRESHED = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return owner
"""
# Deletes the claim only if it is still the erased user's.
_DROP_IF_THEIRS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_SCAN_PAGE = 1000
_REMEMBER_S = 60.0
_REMEMBERED = 100_000


def _value(scope: KeyScope) -> str:
    return f"{scope.tenant}{_SEP}{scope.user_id}"


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


def _claimed(answer: object) -> str | None:
    """What `SET NX GET` answers: the claim that was there (then nothing was set)."""
    return _text(answer) if isinstance(answer, bytes | str) else None


class _Checked:
    """The sessions this process found its writers own, for a while (bounded)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._at: OrderedDict[tuple[KeyScope, str], float] = OrderedDict()

    def fresh(self, scope: KeyScope, session_id: str) -> bool:
        at = self._at.get((scope, session_id))
        return at is not None and self._clock() - at < _REMEMBER_S

    def remember(self, scope: KeyScope, session_id: str) -> None:
        self._at[(scope, session_id)] = self._clock()
        self._at.move_to_end((scope, session_id))
        if len(self._at) > _REMEMBERED:
            self._at.popitem(last=False)


def _refuse(session_id: str, scope: KeyScope, owner: str) -> None:
    """`OwnershipError` unless `owner` (a claim's value: tenant and user) is `scope`."""
    tenant, _, user_id = owner.partition(_SEP)
    refuse_writer(session_id, owner=KeyScope(tenant, user_id), writer=scope)


class _Claims:
    """What the sync and asyncio claims share: the key layout and the answers."""

    def __init__(
        self, *, prefix: str, ttl_s: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.keys = KeySpace(prefix)
        self.ttl_ms = int(ttl_s * 1000) if ttl_s else 0
        self.checked = _Checked(clock)

    def claim_key(self, session_id: str) -> str:
        return f"{self.keys.prefix}:owner:{{{session_id}}}"

    @property
    def px(self) -> int | None:
        """The claim's time to live (ms), None: forever."""
        return self.ttl_ms or None


class RedisSessionClaims(_Claims):
    """Claims sessions for their writers before an append (blocking)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "chatlog",
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(prefix=prefix, ttl_s=ttl_s, clock=clock)
        self.client = client
        self._mine = client.register_script(_MINE_REFRESHED)

    def claim(self, scope: KeyScope, session_id: str) -> None:
        """Claim `session_id` for `scope`, or `OwnershipError` if another user owns it."""
        if self.checked.fresh(scope, session_id):
            return
        key, value = self.claim_key(session_id), _value(scope)
        with redis_errors():
            owner = _text(self._mine(keys=[key], args=[value, self.ttl_ms]))
            if owner is None:
                owner = self._first(session_id) or value
                taken = self.client.set(key, owner, nx=True, get=True, px=self.px)
                owner = _claimed(taken) or owner
        _refuse(session_id, scope, owner)
        self.checked.remember(scope, session_id)

    def _first(self, session_id: str) -> str | None:
        """The live read-model's owner of the session, if it holds the session."""
        generation = _text(self.client.get(self.keys.pointer))
        if generation is None:
            return None
        meta = self.keys.with_generation(generation).meta(session_id)
        tenant, user_id = (_text(v) for v in self.client.hmget(meta, ["tenant", "user_id"]))
        return None if tenant is None or user_id is None else _value(KeyScope(tenant, user_id))


class AsyncRedisSessionClaims(_Claims):
    """`RedisSessionClaims` for asyncio callers."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "chatlog",
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(prefix=prefix, ttl_s=ttl_s, clock=clock)
        self.client = client
        self._mine = client.register_script(_MINE_REFRESHED)

    async def claim(self, scope: KeyScope, session_id: str) -> None:
        """Claim `session_id` for `scope`, or `OwnershipError` if another user owns it."""
        if self.checked.fresh(scope, session_id):
            return
        key, value = self.claim_key(session_id), _value(scope)
        with redis_errors():
            owner = _text(await self._mine(keys=[key], args=[value, self.ttl_ms]))
            if owner is None:
                owner = await self._first(session_id) or value
                taken = await self.client.set(key, owner, nx=True, get=True, px=self.px)
                owner = _claimed(taken) or owner
        _refuse(session_id, scope, owner)
        self.checked.remember(scope, session_id)

    async def _first(self, session_id: str) -> str | None:
        generation = _text(await self.client.get(self.keys.pointer))
        if generation is None:
            return None
        meta = self.keys.with_generation(generation).meta(session_id)
        tenant, user_id = (_text(v) for v in await self.client.hmget(meta, ["tenant", "user_id"]))
        return None if tenant is None or user_id is None else _value(KeyScope(tenant, user_id))


def drop_claims(client: redis.Redis, *, prefix: str, scope: KeyScope) -> int:
    """Delete every claim `scope` holds (an erasure: no id of theirs stays behind); how
    many. A SCAN of the claims, like the erasure's SCAN of the sessions."""
    drop = client.register_script(_DROP_IF_THEIRS)
    value, dropped = _value(scope), 0
    with redis_errors():
        for raw in client.scan_iter(match=f"{prefix}:owner:*", count=_SCAN_PAGE):
            if _text(client.get(raw)) == value:
                dropped += int(drop(keys=[raw], args=[value]))
    return dropped
