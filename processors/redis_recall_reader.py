"""Recall: a user's earlier turns nearest in meaning to a query, opened, sync and asyncio.

How does one recall go?

1. The request is checked (`recall_query`, `check_k`, the ids) and the query embedded by
   this process's embedder, which must be the model the index was built with: the index
   refuses another (`EmbeddingModelMismatch`).
2. The live generation's recall index is searched (the read-model's generation pointer
   names the generation; the index lives on ``CHATLOG_RECALL_REDIS_URL``): nearest
   neighbours filtered by tenant and user (and session), one round trip, the messages
   still sealed (`chatlog.projections.redis_vectors`).
3. One round trip to the read-model's Redis fetches the user's key entries and the
   owner and status of each session a hit is in. An erased user is refused with
   `Erased`, as a read of their session is. The read rule
   (`chatlog.projections.access.visible`) is applied again here, where the content is
   opened: a hit that is not the user's own is left out (the filter already says so),
   and so is a hit in a session the read-model holds as erased (the embedder may not
   have deleted its vectors yet) or as someone else's (the user wrote into another's
   session past the claims: the projector refused it).
4. The hits are opened with the owner's keys, as a session read opens its view
   (`ViewOpener`), and returned most relevant first as `RecalledTurn`s.

Recall is a search, not a read-your-writes read: the embedder indexes a turn when it
reads it from the log, some time after its append, so a turn appended a
moment ago may not be found yet. The recent turns are in the session's window, which
recall supplements (docs/recall.md). Whether a session given is the user's own is the
client's check (`ChatLog.recall`), the one a session read makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio

from chatlog.processors.embeddings import Embedder
from chatlog.projections.access import visible
from chatlog.projections.keys import KeySpace
from chatlog.projections.opening import ViewOpener
from chatlog.projections.recall import (
    EmbeddingModel,
    RecalledTurn,
    RecallHit,
    check_k,
    recall_query,
)
from chatlog.projections.redis_keys import entries_of
from chatlog.projections.redis_reader import AsyncRedisReader, RedisReader, opener_of
from chatlog.projections.redis_store import redis_errors, text
from chatlog.projections.redis_vectors import AsyncRedisVectorSearch, RedisVectorIndex
from chatlog.projections.view import Message, SessionStatus, SessionView
from chatlog.schemas.errors import Erased
from chatlog.schemas.ids import validate_id
from chatlog.schemas.keyring import KeyEntries
from chatlog.schemas.sealing import KeyScope

__all__ = ["AsyncRedisRecall", "RecallRequest", "RedisRecall"]


class RecallRequest:
    """One recall request, checked: who asks, for what, how many."""

    def __init__(
        self, user_id: str, query: str, tenant: str, k: int, session_id: str | None
    ) -> None:
        self.owner = KeyScope(
            validate_id(tenant, field="tenant"), validate_id(user_id, field="user_id")
        )
        self.query = recall_query(query)
        self.k = check_k(k)
        self.session_id = (
            None if session_id is None else validate_id(session_id, field="session_id")
        )

    def search_args(self) -> dict[str, Any]:
        """What the index's search is asked: whose turns, which session, how many."""
        return {
            "tenant": self.owner.tenant,
            "user_id": self.owner.user_id,
            "session_id": self.session_id,
            "k": self.k,
        }

    def queue_checks(self, pipe: Any, keys: KeySpace, hits: Sequence[RecallHit]) -> list[str]:
        """Queue the owner's key entries and each hit session's owner and status (as
        the read-model holds them); the sessions."""
        sessions = list(dict.fromkeys(hit.session_id for hit in hits))
        pipe.hgetall(keys.user_keys(self.owner.tenant, self.owner.user_id))
        for session_id in sessions:
            pipe.hmget(keys.meta(session_id), "tenant", "user_id", "status")
        return sessions

    def checked(
        self, sessions: Sequence[str], replies: Sequence[Any]
    ) -> tuple[KeyEntries, set[str]]:
        """The owner's key entries, and the sessions among `sessions` whose hits are
        left out, from the replies to `queue_checks`: those the read-model holds as
        erased, or as someone else's (a turn written into another's session, which the
        projector refused). A session the read-model no longer holds (expired) is kept:
        its turns are what recall is for."""
        raw_entries, *metas = replies
        refused = set()
        for session_id, (tenant, user_id, status) in zip(sessions, metas, strict=True):
            if status is None:
                continue
            owner = KeyScope(text(tenant), text(user_id))
            erased = text(status) == SessionStatus.ERASED.value
            if not visible(owner=owner, erased=erased, reader=self.owner):
                refused.add(session_id)
        return entries_of(self.owner, raw_entries), refused

    def answer(
        self,
        hits: Sequence[RecallHit],
        sessions: Sequence[str],
        replies: Sequence[Any],
        opener: ViewOpener,
    ) -> list[RecalledTurn]:
        """The turns recalled: the `hits` the owner may see, opened, from the `replies`
        to `queue_checks` about `sessions` (`checked`, then `opened`)."""
        entries, refused = self.checked(sessions, replies)
        return self.opened(hits, entries, refused, opener)

    def opened(
        self,
        hits: Sequence[RecallHit],
        entries: KeyEntries,
        refused: set[str],
        opener: ViewOpener,
    ) -> list[RecalledTurn]:
        """The hits the owner may see, opened with their keys: `entries` are the owner's,
        `refused` the sessions whose hits are left out (`checked`)."""
        if entries.erased_at is not None:
            opener.keyring.forget(self.owner)  # its keys are destroyed: drop the copies here
            raise Erased(
                f"user {self.owner.user_id} of tenant {self.owner.tenant} was erased at "
                f"{entries.erased_at.isoformat()}; their turns are gone for good, nothing "
                f"is recalled"
            )
        mine = [
            hit
            for hit in hits
            if hit.session_id not in refused
            and visible(owner=KeyScope(hit.tenant, hit.user_id), erased=False, reader=self.owner)
        ]
        messages: dict[tuple[str, str], Message] = {}
        for session_id in dict.fromkeys(hit.session_id for hit in mine):
            found = [hit for hit in mine if hit.session_id == session_id]
            # The hits of one session opened as a session read opens its view.
            view = SessionView(
                session_id,
                self.owner.user_id,
                self.owner.tenant,
                found[0].partition,
                last_offset=-1,
                created_at_ms=0,
                updated_at_ms=0,
                messages=tuple(hit.message for hit in found),
            )
            for message in opener.open(view, entries).messages:
                messages[session_id, message.message_id] = message
        return [
            RecalledTurn.of(hit, message)
            for hit in mine
            if not (message := messages[hit.session_id, hit.message.message_id]).redacted
        ]


class RedisRecall:
    """Recalls a user's earlier turns (blocking): `client` holds the recall index,
    `reader` the read-model (its generation pointer, key directory and keys), `embedder`
    embeds the query."""

    def __init__(self, client: redis.Redis, *, reader: RedisReader, embedder: Embedder) -> None:
        self.client = client
        self.reader = reader
        self.embedder = embedder
        self.opener = opener_of(reader.opener, what="the turns recall finds")
        self.model = EmbeddingModel(embedder.model, embedder.dimension)
        self._indexes: dict[str, RedisVectorIndex] = {}  # by generation

    def recall(
        self,
        user_id: str,
        query: str,
        *,
        tenant: str = "default",
        k: int = 5,
        session_id: str | None = None,
    ) -> list[RecalledTurn]:
        """The `k` turns of `user_id` of `tenant` (in `session_id` only, if given)
        nearest in meaning to `query`, most relevant first (see the module)."""
        request = RecallRequest(user_id, query, tenant, k, session_id)
        [vector] = self.embedder.embed([request.query])
        keys = self.reader.keys()
        hits = self._index(keys).search(vector, **request.search_args())
        with redis_errors():
            pipe = self.reader.client.pipeline(transaction=False)
            sessions = request.queue_checks(pipe, keys, hits)
            replies = pipe.execute()
        return request.answer(hits, sessions, replies, self.opener)

    def _index(self, keys: KeySpace) -> RedisVectorIndex:
        """The live generation's index (one per generation seen: a replay flips it)."""
        index = self._indexes.get(keys.generation)
        if index is None:
            index = self._indexes[keys.generation] = RedisVectorIndex(
                self.client, prefix=keys.prefix, generation=keys.generation, model=self.model
            )
        return index

    def close(self) -> None:
        """Release the index's connections and what the embedder holds."""
        try:
            close = getattr(self.embedder, "close", None)  # an in-process model has none
            if close is not None:
                close()
        finally:
            self.client.close()


class AsyncRedisRecall:
    """`RedisRecall` for asyncio: the same steps, none blocking the event loop."""

    def __init__(
        self, client: redis.asyncio.Redis, *, reader: AsyncRedisReader, embedder: Embedder
    ) -> None:
        self.client = client
        self.reader = reader
        self.embedder = embedder
        self.opener = opener_of(reader.opener, what="the turns recall finds")
        self.model = EmbeddingModel(embedder.model, embedder.dimension)
        self._searches: dict[str, AsyncRedisVectorSearch] = {}  # by generation

    async def recall(
        self,
        user_id: str,
        query: str,
        *,
        tenant: str = "default",
        k: int = 5,
        session_id: str | None = None,
    ) -> list[RecalledTurn]:
        """`RedisRecall.recall`, awaited."""
        request = RecallRequest(user_id, query, tenant, k, session_id)
        [vector] = await self.embedder.aembed([request.query])
        keys = await self.reader.keys()
        search = self._searches.get(keys.generation)
        if search is None:
            search = self._searches[keys.generation] = AsyncRedisVectorSearch(
                self.client, prefix=keys.prefix, generation=keys.generation, model=self.model
            )
        hits = await search.search(vector, **request.search_args())
        with redis_errors():
            pipe = self.reader.client.pipeline(transaction=False)
            sessions = request.queue_checks(pipe, keys, hits)
            replies = await pipe.execute()
        return request.answer(hits, sessions, replies, self.opener)

    async def aclose(self) -> None:
        """Release the index's connections and what the embedder holds."""
        try:
            aclose = getattr(self.embedder, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            await self.client.aclose()
