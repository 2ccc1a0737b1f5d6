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

How many sessions may a user hold? ``CHATLOG_MAX_SESSIONS_PER_USER``. Each claim of a
user's is counted in a sorted set of theirs (``chatlog:claimed:{c:acme:alice}``), scored
by when the claim expires, so a session leaves the count when its claim does. The same
Lua call that takes a claim for a new session drops the expired entries, counts, and
either takes the claim and counts it or refuses (`TooManySessions`, nothing set, nothing
published): two starts racing for the last place cannot both pass. Only a new session
is capped; a claim of one the read-model holds already (an older session whose claim
expired) is counted but never refused, and an append into a session of one's own never
is. An erasure (`drop_claims`) deletes the user's count with their claims; `release`
takes one deleted session out of it. Counting happens whatever the cap (even none), so
a cap set later finds the counts right.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import redis
import redis.asyncio

from chatlog.projections.access import refuse_writer
from chatlog.projections.keys import KeySpace
from chatlog.projections.redis_cluster import is_cluster
from chatlog.projections.redis_store import redis_errors
from chatlog.schemas.errors import TooManySessions
from chatlog.schemas.sealing import KeyScope

__all__ = ["AsyncRedisSessionClaims", "RedisSessionClaims", "drop_claims"]

_SEP = "\x1f"  # no id character: "tenant<US>user" cannot be confused
# Shared by the scripts: count session ARGV[3] in the user's claimed set KEYS[2] until
# ttl ms from Redis's clock (one clock for every writer process), or for good.
_COUNT = """
local function count(ttl)
  if ttl > 0 then
    local now = redis.call('TIME')
    local expires = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl
    redis.call('ZADD', KEYS[2], expires, ARGV[3])
    redis.call('PEXPIRE', KEYS[2], ttl)
  else
    redis.call('ZADD', KEYS[2], '+inf', ARGV[3])
  end
end
"""
# KEYS: the claim, the writer's claimed set. ARGV: the writer, ttl ms, session id.
# The claim if it is the writer's, refreshed with its count; else whatever it holds (nil).
_MINE_REFRESHED = (
    _COUNT
    + """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  local ttl = tonumber(ARGV[2])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
  count(ttl)
end
return owner
"""
)
# KEYS as above. ARGV: the writer, ttl ms, session id, cap (0: none), the read-model's
# owner of the session ('' if it holds none: a new session). Takes the claim unless one
# appeared meanwhile (then returns it); a new session of the writer's is counted, or
# refused at the cap: then nothing is set and the count is returned, not an owner.
_TAKE = (
    _COUNT
    + """
local owner = redis.call('GET', KEYS[1])
if owner then return owner end
local ttl, cap = tonumber(ARGV[2]), tonumber(ARGV[4])
owner = ARGV[5]
if owner == '' then
  owner = ARGV[1]
  if cap > 0 then
    local now = redis.call('TIME')
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(now[1]) * 1000)
    local held = redis.call('ZCARD', KEYS[2])
    if held >= cap and not redis.call('ZSCORE', KEYS[2], ARGV[3]) then return held end
  end
end
if owner == ARGV[1] then count(ttl) end
if ttl > 0 then
  redis.call('SET', KEYS[1], owner, 'PX', ttl)
else
  redis.call('SET', KEYS[1], owner)
end
return owner
"""
)
# On Redis Cluster the claim ({session}) and the count ({c:tenant:user}) are in two
# slots, so the two scripts above are split in two steps (`_claim_on_cluster`): the
# count's step is the one that decides the cap, atomically in the user's slot.
# KEYS: the claim. ARGV: the writer, ttl ms. The claim, refreshed if it is the writer's.
_MINE_CLUSTER = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] and tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return owner
"""
# KEYS: the claim. ARGV: the owner to set, ttl ms. The claim already there, else sets it.
_SET_CLUSTER = """
local owner = redis.call('GET', KEYS[1])
if owner then return owner end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return ARGV[1]
"""
# KEYS: the writer's claimed set. ARGV: ttl ms, session id, cap (0: none). Counts the
# session (-1), or, at the cap and not counted yet, refuses with the count.
_COUNT_CLUSTER = """
local ttl, cap = tonumber(ARGV[1]), tonumber(ARGV[3])
local now = redis.call('TIME')
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(now[1]) * 1000)
  local held = redis.call('ZCARD', KEYS[1])
  if held >= cap and not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return held end
end
if ttl > 0 then
  local expires = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + ttl
  redis.call('ZADD', KEYS[1], expires, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('ZADD', KEYS[1], '+inf', ARGV[2])
end
return -1
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
        self,
        *,
        prefix: str,
        ttl_s: float | None,
        max_sessions: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = KeySpace(prefix)
        self.ttl_ms = int(ttl_s * 1000) if ttl_s else 0
        self.max_sessions = max_sessions
        self.checked = _Checked(clock)

    def counted(self, scope: KeyScope) -> str:
        """The key of the sessions `scope` has claimed."""
        return self.keys.claimed_sessions(scope.tenant, scope.user_id)

    def mine_call(self, scope: KeyScope, session_id: str) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of `_MINE_REFRESHED`."""
        keys = [self.keys.claim(session_id), self.counted(scope)]
        return keys, [_value(scope), self.ttl_ms, session_id]

    def take_call(
        self, scope: KeyScope, session_id: str, first: str | None
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of `_TAKE`, `first` the read-model's owner of the session."""
        keys, args = self.mine_call(scope, session_id)
        return keys, [*args, self.max_sessions, first or ""]

    def count_call(
        self, scope: KeyScope, session_id: str, cap: int
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of `_COUNT_CLUSTER`."""
        return [self.counted(scope)], [self.ttl_ms, session_id, cap]

    def counted_or_refuse(self, scope: KeyScope, session_id: str, answer: object) -> None:
        """`TooManySessions` unless `_COUNT_CLUSTER` answered -1 (counted)."""
        if int(str(answer)) >= 0:
            self.owner(scope, session_id, int(str(answer)))

    def owner(self, scope: KeyScope, session_id: str, answer: object) -> str:
        """The owner `_TAKE` answered; `TooManySessions` if it answered a count instead."""
        if isinstance(answer, int):
            raise TooManySessions(
                f"user {scope.user_id} has {answer} sessions, the most "
                f"CHATLOG_MAX_SESSIONS_PER_USER={self.max_sessions} allows: session "
                f"{session_id} was not started and nothing was published. A session counts "
                f"until it is idle for CHATLOG_SESSION_TTL_S or its user is erased",
                session_id=session_id,
                held=answer,
                max_sessions=self.max_sessions,
            )
        assert isinstance(answer, bytes | str), "the claim script answers an owner or a count"
        return answer.decode() if isinstance(answer, bytes) else answer


class RedisSessionClaims(_Claims):
    """Claims sessions for their writers before an append (blocking)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "chatlog",
        ttl_s: float | None = None,
        max_sessions: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(prefix=prefix, ttl_s=ttl_s, max_sessions=max_sessions, clock=clock)
        self.client = client
        self._mine = client.register_script(_MINE_REFRESHED)
        self._take = client.register_script(_TAKE)
        self.cluster = is_cluster(client)
        self._mine_c = client.register_script(_MINE_CLUSTER)
        self._set_c = client.register_script(_SET_CLUSTER)
        self._count_c = client.register_script(_COUNT_CLUSTER)

    def claim(self, scope: KeyScope, session_id: str) -> None:
        """Claim `session_id` for `scope`: `OwnershipError` if another user owns it,
        `TooManySessions` if it is new and `scope` holds the most sessions allowed."""
        if self.checked.fresh(scope, session_id):
            return
        keys, args = self.mine_call(scope, session_id)
        with redis_errors():
            if self.cluster:
                owner = self._claim_on_cluster(scope, session_id)
            else:
                held = _text(self._mine(keys=keys, args=args))
                if held is None:
                    keys, args = self.take_call(scope, session_id, self._first(session_id))
                    held = self.owner(scope, session_id, self._take(keys=keys, args=args))
                owner = held
        _refuse(session_id, scope, owner)
        self.checked.remember(scope, session_id)

    def _claim_on_cluster(self, scope: KeyScope, session_id: str) -> str:
        """`claim`'s scripts split by slot (see `_MINE_CLUSTER`): the claim is read (and
        refreshed), a new one is counted first, in the user's slot, where the cap is
        decided, and then set; a count whose claim someone else took is given back."""
        writer, claim = _value(scope), self.keys.claim(session_id)
        held = _text(self._mine_c(keys=[claim], args=[writer, self.ttl_ms]))
        if held is not None:
            if held == writer:
                self._count_c(*self.count_call(scope, session_id, 0))
            return held
        first = self._first(session_id)
        wanted = first or writer
        if wanted == writer:
            cap = self.max_sessions if first is None else 0
            self.counted_or_refuse(
                scope, session_id, self._count_c(*self.count_call(scope, session_id, cap))
            )
        owner = _text(self._set_c(keys=[claim], args=[wanted, self.ttl_ms])) or wanted
        if wanted == writer and owner != writer:
            self.release(scope, session_id)
        return owner

    def release(self, scope: KeyScope, session_id: str) -> None:
        """Take a deleted session of `scope` out of their count (its claim stays: the id
        is not given to anyone else)."""
        with redis_errors():
            self.client.zrem(self.counted(scope), session_id)

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
        max_sessions: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(prefix=prefix, ttl_s=ttl_s, max_sessions=max_sessions, clock=clock)
        self.client = client
        self._mine = client.register_script(_MINE_REFRESHED)
        self._take = client.register_script(_TAKE)
        self.cluster = is_cluster(client)
        self._mine_c = client.register_script(_MINE_CLUSTER)
        self._set_c = client.register_script(_SET_CLUSTER)
        self._count_c = client.register_script(_COUNT_CLUSTER)

    async def claim(self, scope: KeyScope, session_id: str) -> None:
        """`RedisSessionClaims.claim`."""
        if self.checked.fresh(scope, session_id):
            return
        keys, args = self.mine_call(scope, session_id)
        with redis_errors():
            if self.cluster:
                owner = await self._claim_on_cluster(scope, session_id)
            else:
                held = _text(await self._mine(keys=keys, args=args))
                if held is None:
                    first = await self._first(session_id)
                    keys, args = self.take_call(scope, session_id, first)
                    held = self.owner(scope, session_id, await self._take(keys=keys, args=args))
                owner = held
        _refuse(session_id, scope, owner)
        self.checked.remember(scope, session_id)

    async def _claim_on_cluster(self, scope: KeyScope, session_id: str) -> str:
        """`RedisSessionClaims._claim_on_cluster`, awaited."""
        writer, claim = _value(scope), self.keys.claim(session_id)
        held = _text(await self._mine_c(keys=[claim], args=[writer, self.ttl_ms]))
        if held is not None:
            if held == writer:
                await self._count_c(*self.count_call(scope, session_id, 0))
            return held
        first = await self._first(session_id)
        wanted = first or writer
        if wanted == writer:
            cap = self.max_sessions if first is None else 0
            counted = await self._count_c(*self.count_call(scope, session_id, cap))
            self.counted_or_refuse(scope, session_id, counted)
        owner = _text(await self._set_c(keys=[claim], args=[wanted, self.ttl_ms])) or wanted
        if wanted == writer and owner != writer:
            await self.release(scope, session_id)
        return owner

    async def release(self, scope: KeyScope, session_id: str) -> None:
        """`RedisSessionClaims.release`."""
        with redis_errors():
            await self.client.zrem(self.counted(scope), session_id)

    async def _first(self, session_id: str) -> str | None:
        generation = _text(await self.client.get(self.keys.pointer))
        if generation is None:
            return None
        meta = self.keys.with_generation(generation).meta(session_id)
        tenant, user_id = (_text(v) for v in await self.client.hmget(meta, ["tenant", "user_id"]))
        return None if tenant is None or user_id is None else _value(KeyScope(tenant, user_id))


def drop_claims(client: redis.Redis, *, prefix: str, scope: KeyScope) -> int:
    """Delete every claim `scope` holds, and their count (an erasure: no id of theirs
    stays behind, and the sessions no longer count); how many claims. A SCAN of the
    claims, like the erasure's SCAN of the sessions."""
    drop = client.register_script(_DROP_IF_THEIRS)
    keys = KeySpace(prefix)
    value, dropped = _value(scope), 0
    with redis_errors():
        # Glob has no braces: "{*}" matches every claim's tag as it is written.
        for raw in client.scan_iter(match=keys.claim("*"), count=_SCAN_PAGE):
            if _text(client.get(raw)) == value:
                dropped += int(drop(keys=[raw], args=[value]))
        client.delete(keys.claimed_sessions(scope.tenant, scope.user_id))
    return dropped
