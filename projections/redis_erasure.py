"""An erased user's sessions out of the read-model: every generation, every key of each.

Why a SCAN rather than the user's session index? The index lists what a reader may list,
not everything Redis holds of the user: a session erased on its own (`UserErased`)
leaves a tombstone that is out of the index, an old generation is kept for a while after
a rebuild flipped the pointer, and a rebuild's generation fills up before it is live.
A SCAN of every generation's session meta hashes finds them all; it costs one pass over
the prefix's keys (non-blocking, a page at a time), which an erasure, a rare operation,
can afford. SCAN returns every key that exists for the whole scan, so a view written
before the user's erased mark was set is found; one written after it never is, because
the store's scripts refuse an erased owner (`chatlog.projections.redis_store`; on a
cluster the store deletes what it wrote for an owner it then finds erased).

Each session is removed by one Lua call on its slot that checks its owner again (the
meta hash's user and tenant) and deletes the meta hash and the message list; then its
entry in that generation's user index (another slot) is removed. Which index? The
user's of their tenant; a generation built with key layout 1 has one per user id,
shared by every tenant's user of that id, so the entry is removed from both names (one
of them does not exist), and only this tenant's sessions leave the shared one, and
entries whose session has expired.

On Redis Cluster the SCAN runs on every master (redis-py's cluster `scan_iter`) and
each page's calls are split by node (`chatlog.projections.redis_cluster.execute`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import redis

from chatlog.projections.keys import LAYOUT, LEGACY_LAYOUT, KeySpace
from chatlog.projections.redis_claims import drop_claims
from chatlog.projections.redis_cluster import execute
from chatlog.projections.redis_generations import GenerationStore
from chatlog.projections.redis_store import redis_errors, text
from chatlog.schemas.sealing import KeyScope

__all__ = ["RedisUserSessions"]

# KEYS: meta, msgs (one slot). ARGV: user id, tenant. 1 if the session was the user's
# and is gone, 0 if it was someone else's. Its index entries go in a second step.
_FORGET = """
local owner = redis.call('HMGET', KEYS[1], 'user_id', 'tenant')
if owner[1] ~= ARGV[1] or owner[2] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""

_SCAN_PAGE = 1000


class RedisUserSessions:
    """Finds and removes a user's sessions in every generation under one prefix."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self.client = client
        self.keys = KeySpace(prefix)
        self.generations = GenerationStore(client, prefix=prefix)
        self._forget = client.register_script(_FORGET)
        # A generation name has no ':' (`KeySpace`), so a longer prefix cannot pass for one.
        self._meta = re.compile(
            re.escape(prefix)
            + r":(?P<generation>[A-Za-z0-9_.-]{1,32})"
            + r":s:\{(?P<session>[^}]*)\}:meta"
        )

    def find(self, scope: KeyScope) -> set[str]:
        """The ids of every session of `scope` that any generation holds."""
        return {session_id for page in self._owned(scope) for _, session_id in page}

    def remove(self, scope: KeyScope) -> set[str]:
        """Delete every session of `scope` in every generation, and their index entries;
        the ids of the sessions removed (from one generation or more)."""
        removed: set[str] = set()
        touched: set[str] = set()
        for page in self._owned(scope):

            def forget(pipe: Any, page: list[tuple[str, str]] = page) -> None:
                for generation, session_id in page:
                    keys = self.keys.with_generation(generation)
                    self._forget(
                        keys=[keys.meta(session_id), keys.messages(session_id)],
                        args=[scope.user_id, scope.tenant],
                        client=pipe,
                    )

            with redis_errors():
                replies = execute(self.client, forget, (self._forget,))
                gone = [entry for entry, reply in zip(page, replies, strict=True) if int(reply)]
                pipe = self.client.pipeline(transaction=False)
                for generation, session_id in gone:
                    keys = self.keys.with_generation(generation)
                    for index in _indexes(keys, scope):
                        pipe.zrem(index, session_id)
                    # The session's LangGraph thread state goes with it (sealed under the
                    # destroyed key already: this leaves no ciphertext behind either). One
                    # key per DEL: a cluster pipeline refuses a multi-key one.
                    pipe.delete(keys.checkpoints(session_id))
                    pipe.delete(keys.checkpoint_index(session_id))
                pipe.execute()
            removed.update(session_id for _, session_id in gone)
            touched.update(generation for generation, _ in gone)
        # The live generation and a rebuild's, even with none of the user's sessions left:
        # their index may still list sessions that expired.
        live = self.generations.live()
        rebuilding = self.generations.rebuild_in_progress().get("generation")
        for generation in touched | {g for g in (live, rebuilding) if g}:
            keys = self.keys.with_generation(generation)
            for index in _indexes(keys, scope):
                self._drop_expired(keys, index)
        # Their sessions' claims name them too (and would keep the ids theirs).
        drop_claims(self.client, prefix=self.keys.prefix, scope=scope)
        return removed

    def _owned(self, scope: KeyScope) -> Iterator[list[tuple[str, str]]]:
        """Pages of (generation, session id), one per page of the SCAN of every session
        meta hash under the prefix, of the sessions `scope` owns."""
        pattern = f"{self.keys.prefix}:*:s:*:meta"
        page: list[tuple[str, str, str]] = []
        with redis_errors():
            for raw in self.client.scan_iter(match=pattern, count=_SCAN_PAGE):
                match = self._meta.fullmatch(text(raw))
                if match is not None:
                    page.append((text(raw), match["generation"], match["session"]))
                if len(page) >= _SCAN_PAGE:
                    yield self._owners_match(page, scope)
                    page = []
            if page:
                yield self._owners_match(page, scope)

    def _owners_match(
        self, page: list[tuple[str, str, str]], scope: KeyScope
    ) -> list[tuple[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for meta, _, _ in page:
            pipe.hmget(meta, "user_id", "tenant")
        owners: list[list[Any]] = pipe.execute()
        return [
            (generation, session_id)
            for (_, generation, session_id), (user, tenant) in zip(page, owners, strict=True)
            if user is not None and text(user) == scope.user_id and text(tenant) == scope.tenant
        ]

    def _drop_expired(self, keys: KeySpace, index: str) -> None:
        """Remove the index entries whose session has no meta hash any more (expired)."""
        with redis_errors():
            members: list[Any] = self.client.zrange(index, 0, -1)
            listed = [text(s) for s in members]
            if not listed:
                return
            pipe = self.client.pipeline(transaction=False)
            for session_id in listed:
                pipe.exists(keys.meta(session_id))
            gone = [s for s, exists in zip(listed, pipe.execute(), strict=True) if not exists]
            if gone:
                self.client.zrem(index, *gone)


def _indexes(keys: KeySpace, scope: KeyScope) -> tuple[str, str]:
    """The user's index in the generation `keys` names, under either key layout."""
    return (
        keys.user_sessions(scope.tenant, scope.user_id, layout=LAYOUT),
        keys.user_sessions(scope.tenant, scope.user_id, layout=LEGACY_LAYOUT),
    )
