"""The recall index against a real Redis with the query engine (the local stack's Redis
Stack, or ``CHATLOG_RECALL_REDIS_URL``): writes, searches that never cross users or
tenants, the delete paths, a model mismatch refused, a lost index detected, and
generations kept apart.

Vectors are small (8 numbers) and chosen by hand, so which turn is nearest is known.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio

from chatlog.processors.recall_indexing import RecallIndexing
from chatlog.processors.redis_recall_writer import apply_work
from chatlog.producers.commands import append_message
from chatlog.projections.epochs import Lost
from chatlog.projections.opening import ViewOpener
from chatlog.projections.recall import EmbeddingModel, IndexedTurn, TurnRef
from chatlog.projections.redis_vectors import (
    ApplyResult,
    AsyncRedisVectorSearch,
    RedisVectorIndex,
    erase_session,
    erase_user,
    recall_generations,
)
from chatlog.projections.view import Message, SealedFields, SessionView, message_of
from chatlog.schemas.errors import (
    EmbeddingModelMismatch,
    InvalidInput,
    RecallIndexLost,
    StoreUnavailable,
)
from chatlog.schemas.events import MessageAppended
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.master_keys import LocalKeyProvider, new_master_key
from chatlog.schemas.sealing import KeyScope, seal_event
from tests.key_fakes import MemoryKeyDirectory, MemoryKeyLog
from tests.processes import delete_recall_prefix, free_port
from tests.unit.test_recall_indexing import records, say

pytestmark = pytest.mark.integration

MODEL = EmbeddingModel("test-embedder", 8)


def axis(n: int, *, lean: float = 0.0) -> list[float]:
    """A unit vector along axis `n`, leaning a little toward the next axis."""
    vector = [0.0] * MODEL.dimension
    vector[n] = 1.0
    vector[(n + 1) % MODEL.dimension] = lean
    return vector


def turn(
    user: str, session: str, n: int, vector: list[float], *, tenant: str = "acme"
) -> IndexedTurn:
    message = Message(
        offset=n, message_id=f"m{n}", role="user", content=f"turn {n}", occurred_at_ms=1000 + n
    )
    return IndexedTurn(tenant, user, session, n % 3, message, vector)


@pytest.fixture
def client(recall_redis_url):
    connection = redis.Redis.from_url(recall_redis_url)
    yield connection
    connection.close()


@pytest.fixture
def prefix(recall_redis_url):
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    delete_recall_prefix(recall_redis_url, name)


@pytest.fixture
def index(client, prefix):
    built = RedisVectorIndex(client, prefix=prefix, generation="g1", model=MODEL)
    built.ensure()
    return built


def test_a_search_finds_the_nearest_turns_of_that_user_only(index):
    index.apply(
        [
            turn("alice", "a1", 1, axis(0)),
            turn("alice", "a1", 2, axis(1)),
            turn("alice", "a2", 3, axis(0, lean=0.5)),
            # Bob's and another tenant's Alice's turns lie exactly on the query.
            turn("bob", "b1", 4, axis(0)),
            turn("alice", "x1", 5, axis(0), tenant="other"),
        ]
    )
    hits = index.search(axis(0, lean=0.1), tenant="acme", user_id="alice", k=5)
    assert [h.message.message_id for h in hits] == ["m1", "m3", "m2"]
    assert {(h.tenant, h.user_id) for h in hits} == {("acme", "alice")}
    assert hits[0].score > hits[1].score > hits[2].score
    assert hits[0].session_id == "a1"
    assert hits[0].message.content == "turn 1"
    assert hits[0].position.partition == 1
    assert hits[0].position.offset == 1
    # One session only.
    hits = index.search(axis(0), tenant="acme", user_id="alice", session_id="a2", k=5)
    assert [h.message.message_id for h in hits] == ["m3"]
    # The other tenant's alice sees her own turn, nothing of acme's.
    hits = index.search(axis(0), tenant="other", user_id="alice", k=5)
    assert [(h.tenant, h.message.message_id) for h in hits] == [("other", "m5")]
    # Ids with characters the query language treats specially stay literal.
    assert index.search(axis(0), tenant="acme", user_id="alice*", k=5) == []
    assert index.search(axis(0), tenant="ac-me", user_id="alice", k=5) == []


def test_async_search_answers_as_the_sync_one(index, prefix, recall_redis_url):
    index.apply([turn("alice", "a1", 1, axis(0)), turn("bob", "b1", 2, axis(0))])

    async def search():
        client = redis.asyncio.Redis.from_url(recall_redis_url)
        try:
            reader = AsyncRedisVectorSearch(client, prefix=prefix, generation="g1", model=MODEL)
            return await reader.search(axis(0), tenant="acme", user_id="alice", k=3)
        finally:
            await client.aclose()

    assert asyncio.run(search()) == index.search(axis(0), tenant="acme", user_id="alice", k=3)


def test_writing_a_turn_again_keeps_one_document(index):
    index.upsert(turn("alice", "a1", 1, axis(0)))
    index.upsert(turn("alice", "a1", 1, axis(2)))  # the same message, replayed
    hits = index.search(axis(2), tenant="acme", user_id="alice", k=5)
    assert [h.message.message_id for h in hits] == ["m1"]
    assert hits[0].score == pytest.approx(1.0)
    # The same message id in another session is another turn.
    index.upsert(turn("alice", "a2", 1, axis(2)))
    assert len(index.search(axis(2), tenant="acme", user_id="alice", k=5)) == 2


def test_a_document_is_its_first_owners_alone(index, client, prefix):
    """A document is named by session and message id, which whoever publishes chooses:
    another user's (or another tenant's same user id's) upsert or deletion of it is
    refused, and counted; its owner's own still work."""
    index.upsert(turn("alice", "a1", 1, axis(0)))

    def alices() -> list[tuple[str, str, float]]:
        hits = index.search(axis(0), tenant="acme", user_id="alice", k=5)
        return [(h.message.message_id, h.message.content, round(h.score, 4)) for h in hits]

    forged = [turn("bob", "a1", 1, axis(3)), turn("alice", "a1", 1, axis(3), tenant="other")]
    assert index.apply(forged) == ApplyResult(written=0, foreign=2)
    assert alices() == [("m1", "turn 1", 1.0)]
    assert index.search(axis(3), tenant="acme", user_id="bob", k=5) == []
    assert index.search(axis(3), tenant="other", user_id="alice", k=5) == []
    # Both in one call, for a document nobody held: the first one written keeps it.
    both = index.apply([turn("alice", "a1", 2, axis(1)), turn("bob", "a1", 2, axis(1))])
    assert (both.written, both.foreign) == (1, 1)
    assert "m2" in {
        h.message.message_id for h in index.search(axis(1), tenant="acme", user_id="alice")
    }
    assert index.search(axis(1), tenant="acme", user_id="bob") == []
    # Deletions: only the owner's.
    refused = index.apply(
        deletions=[TurnRef("acme", "bob", "a1", "m1"), TurnRef("other", "alice", "a1", "m1")]
    )
    assert refused == ApplyResult(deleted=0, foreign=2)
    assert index.apply(deletions=[TurnRef("acme", "bob", "a1", "m9")]) == ApplyResult()
    assert alices()[0] == ("m1", "turn 1", 1.0)
    # A session's erasure in Bob's name deletes nothing of Alice's.
    assert erase_session(client, prefix=prefix, tenant="acme", user_id="bob", session_id="a1") == 0
    assert len(alices()) == 2
    # The owner's own replace and delete.
    assert index.upsert(turn("alice", "a1", 1, axis(2)))
    assert index.delete(TurnRef("acme", "alice", "a1", "m1")) is True
    assert [m for m, _, _ in alices()] == ["m2"]


class _AxisEmbedder:
    """Embeds every text as the first axis (only the writing is under test)."""

    model, dimension = MODEL.name, MODEL.dimension

    def embed(self, texts):
        return [axis(0) for _ in texts]

    async def aembed(self, texts):
        return self.embed(texts)


def test_a_batch_planned_before_a_users_erasure_and_applied_after_writes_nothing_of_theirs(
    index, client, prefix
):
    # The embedder opened and embedded Alice's turns (her key was still there), then her
    # erasure ran, then the batch reached Redis: the erasure's mark stops every turn.
    batch = records(
        say("s-alice", "user", "my PIN is 4321", user="alice"),
        say("s-alice", "assistant", "noted", user="alice"),
        say("s-bob", "user", "hello", user="bob"),
    )
    work = RecallIndexing(_AxisEmbedder()).plan(batch)
    assert len(work.upserts) == 3
    assert erase_user(client, prefix=prefix, tenant="default", user_id="alice") == 0
    applied = apply_work(index, work)
    assert (applied.written, applied.refused) == (1, 2)
    assert index.search(axis(0), tenant="default", user_id="alice") == []
    assert [h.user_id for h in index.search(axis(0), tenant="default", user_id="bob")] == ["bob"]
    assert index.state().marks == {0: 2}  # the batch is done: it is not tried again


def test_progress_marks_only_move_forward(index):
    index.apply(marks={0: 10, 1: 4})
    index.apply(marks={0: 7, 2: 1})
    assert index.state().marks == {0: 10, 1: 4, 2: 1}


def test_delete_paths(index, client, prefix):
    g2 = RedisVectorIndex(client, prefix=prefix, generation="g2", model=MODEL)
    g2.ensure()
    for built in (index, g2):
        built.apply(
            [
                turn("alice", "a1", 1, axis(0)),
                turn("alice", "a1", 2, axis(1)),
                turn("alice", "a2", 3, axis(2)),
                turn("bob", "b1", 4, axis(0)),
            ]
        )
    # A redaction: one turn.
    assert index.delete(TurnRef("acme", "alice", "a1", "m1")) is True
    assert index.delete(TurnRef("acme", "alice", "a1", "m1")) is False
    ids = {h.message.message_id for h in index.search(axis(0), tenant="acme", user_id="alice")}
    assert ids == {"m2", "m3"}
    # A session's erasure: in every generation.
    # g1 still holds m2 of it, g2 both m1 and m2.
    assert (
        erase_session(client, prefix=prefix, tenant="acme", user_id="alice", session_id="a1") == 3
    )
    for built in (index, g2):
        ids = {h.message.message_id for h in built.search(axis(0), tenant="acme", user_id="alice")}
        assert ids == {"m3"}
    # A user's erasure: every vector, every generation, and nothing of theirs comes back.
    assert erase_user(client, prefix=prefix, tenant="acme", user_id="alice") == 2
    for built in (index, g2):
        assert built.search(axis(2), tenant="acme", user_id="alice") == []
        assert [h.user_id for h in built.search(axis(0), tenant="acme", user_id="bob")] == ["bob"]
    late = index.apply([turn("alice", "a3", 9, axis(0)), turn("bob", "b1", 10, axis(1))])
    assert (late.written, late.skipped) == (1, 1)
    assert index.search(axis(0), tenant="acme", user_id="alice") == []
    # The same user id in another tenant is another person: not erased.
    assert index.upsert(turn("alice", "x1", 11, axis(0), tenant="other"))
    assert erase_user(client, prefix=prefix, tenant="acme", user_id="alice") == 0  # idempotent


def test_a_model_mismatch_is_refused_naming_both(index, client, prefix, recall_redis_url):
    other = EmbeddingModel("another-embedder", 16)
    with pytest.raises(EmbeddingModelMismatch) as raised:
        RedisVectorIndex(client, prefix=prefix, generation="g1", model=other).ensure()
    message = str(raised.value)
    assert "test-embedder (dimension 8)" in message
    assert "another-embedder (dimension 16)" in message
    assert "chatlog replay" in message
    assert raised.value.context["index_model"] == "test-embedder"
    # A reader with another model is refused too, even with a vector of the right size.
    renamed = EmbeddingModel("renamed-embedder", 8)
    reader = RedisVectorIndex(client, prefix=prefix, generation="g1", model=renamed)
    with pytest.raises(EmbeddingModelMismatch):
        reader.search(axis(0), tenant="acme", user_id="alice")
    # And with a vector of its own model's size, which Redis itself refuses first (a
    # reader still set for the model a replay has just replaced): the mismatch, named.
    index.apply([turn("alice", "a1", 1, axis(0))])  # Redis checks the size against a turn
    wider = RedisVectorIndex(client, prefix=prefix, generation="g1", model=other)
    with pytest.raises(EmbeddingModelMismatch, match="another-embedder"):
        wider.search([1.0] + [0.0] * 15, tenant="acme", user_id="alice")

    async def search_async() -> None:
        async with redis.asyncio.Redis.from_url(recall_redis_url) as aio:
            reader = AsyncRedisVectorSearch(aio, prefix=prefix, generation="g1", model=other)
            await reader.search([1.0] + [0.0] * 15, tenant="acme", user_id="alice")

    with pytest.raises(EmbeddingModelMismatch, match="another-embedder"):
        asyncio.run(search_async())
    # A vector that does not fit the model is bad input, not a Redis error.
    with pytest.raises(InvalidInput, match="does not fit embedding model"):
        index.search([1.0, 0.0], tenant="acme", user_id="alice")
    with pytest.raises(InvalidInput, match="1 to 100"):
        index.search(axis(0), tenant="acme", user_id="alice", k=0)


def test_a_lost_index_is_detected(index, client, prefix):
    index.apply([turn("alice", "a1", 1, axis(0))], marks={0: 5})
    assert index.state().assess({0: 6}) == "intact"
    # Redis lost the index's definition (a restart without persistence, a flush).
    client.execute_command("FT.DROPINDEX", index.name)
    with pytest.raises(RecallIndexLost, match="search index is gone"):
        index.search(axis(0), tenant="acme", user_id="alice")
    with pytest.raises(RecallIndexLost):
        RedisVectorIndex(client, prefix=prefix, generation="g1", model=MODEL).ensure()
    assert isinstance(index.state().assess({0: 6}), Lost)
    # Redis lost everything: the consumer group's offsets tell it from a fresh start.
    index.drop()
    assert index.state().assess({}) == "fresh"
    verdict = index.state().assess({0: 6})
    assert isinstance(verdict, Lost)
    assert "offset 5" in verdict.reason
    with pytest.raises(RecallIndexLost, match="holds no recall index"):
        index.search(axis(0), tenant="acme", user_id="alice")
    # A writer that read the epoch before the loss writes nothing into a rebuilt index.
    index.ensure()
    stale = RedisVectorIndex(client, prefix=prefix, generation="g1", model=MODEL)
    stale.ensure()
    stale.mark_lost("test")
    with pytest.raises(RecallIndexLost):
        index.apply([turn("alice", "a1", 2, axis(0))])
    assert isinstance(index.state().assess({}), Lost)


def test_generations_are_separate_indexes(index, client, prefix):
    g2 = RedisVectorIndex(client, prefix=prefix, generation="g2", model=MODEL)
    g2.ensure()
    index.apply([turn("alice", "a1", 1, axis(0))])
    g2.apply([turn("alice", "a1", 2, axis(0))])
    assert recall_generations(client, prefix=prefix) == ["g1", "g2"]
    assert [
        h.message.message_id for h in index.search(axis(0), tenant="acme", user_id="alice")
    ] == ["m1"]
    assert [h.message.message_id for h in g2.search(axis(0), tenant="acme", user_id="alice")] == [
        "m2"
    ]
    g2.drop()
    assert recall_generations(client, prefix=prefix) == ["g1"]
    assert len(index.search(axis(0), tenant="acme", user_id="alice")) == 1


def test_a_sealed_turn_is_stored_sealed_and_opens_with_its_owners_key(index, client):
    # What the index holds of a turn is the message as the read-model keeps it: sealed.
    provider = LocalKeyProvider.from_spec(new_master_key("k1"))
    directory = MemoryKeyDirectory()
    writer = Keyring(provider, log=MemoryKeyLog(), directory=directory)
    event = append_message("a1", user_id="alice", role="user", content="my PIN is 4321")
    sealed = seal_event(event, writer.for_writing(KeyScope.of(event)))
    assert isinstance(sealed.payload, MessageAppended)
    message = message_of(sealed.payload, 1, 1, SealedFields.of(sealed))
    index.upsert(IndexedTurn(event.tenant, "alice", "a1", 0, message, axis(0)))
    stored = client.hget(index.keys.recall_document("a1", message.message_id), "doc")
    assert b"4321" not in stored
    [hit] = index.search(axis(0), tenant=event.tenant, user_id="alice")
    assert "4321" not in hit.message.content
    assert hit.message.sealed is not None
    # Opened as a read of the session opens it, with the owner's keys.
    view = SessionView("a1", "alice", event.tenant, 0, 1, 1, 1)
    entries = directory.entries(KeyScope(event.tenant, "alice"))
    values = ViewOpener(Keyring(provider)).values_for(view, entries)(hit.message.sealed)
    assert values["content"] == "my PIN is 4321"


def test_a_recall_redis_that_does_not_answer_names_its_own_setting():
    gone = redis.Redis(port=free_port(), socket_connect_timeout=1)
    index = RedisVectorIndex(gone, prefix="chatlog", generation="g1", model=MODEL)
    with pytest.raises(StoreUnavailable, match="check CHATLOG_RECALL_REDIS_URL"):
        index.state()
