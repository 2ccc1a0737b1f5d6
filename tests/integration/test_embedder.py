"""The embedder (`chatlog run embedder`) against the real Kafka, Redis and Redis Stack: every
user and assistant turn indexed once with its tags and found by a search; a redaction's
vector deleted; an erased user's vectors gone and no one else's; a restart that neither
duplicates nor drops; the embeddings endpoint down, then back (windows working all the
while, the failures counted); a model mismatch and a lost index refused.

The embeddings endpoint is `tests.llm_stub` (vectors drawn from each text's hash, 8
numbers): a search with the vector of a turn's text finds that turn first. Most tests run
the embedder in this process (`running_embedder`), so their stats can be read; the
start-up refusals run `chatlog run embedder` itself.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from confluent_kafka import Producer

from chatlog import wiring
from chatlog.client import ChatLog
from chatlog.processors.kafka_embedder import KafkaEmbedder
from chatlog.producers.commands import append_message, new_event
from chatlog.producers.partitioning import partition_for
from chatlog.projections.keys import KeySpace
from chatlog.projections.recall import EmbeddingModel
from chatlog.projections.redis_vectors import RedisVectorIndex
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import DataLoss
from chatlog.schemas.events import ConversationEvent, MessageRedacted, UserErased
from chatlog.settings import Settings
from tests.llm_stub import LlmStub, ok, status, stub_vector
from tests.processes import (
    chatlog_cli,
    delete_recall_prefix,
    free_port,
    full_chatlog,
    running_processor,
    running_projector,
    start_processor,
    stop,
    unique_settings,
    wait_until,
)

pytestmark = pytest.mark.integration

DIMENSION = 8
MODEL = EmbeddingModel("stub-embedding", DIMENSION)


@pytest.fixture
def stub() -> Iterator[LlmStub]:
    with LlmStub(embedding_dimension=DIMENSION) as server:
        yield server


@pytest.fixture
def recall(recall_redis_url) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(recall_redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(kafka, redis_url, redis_prefix, recall_redis_url, stub) -> Iterator[Settings]:
    yield unique_settings(
        kafka,
        redis_url,
        redis_prefix,
        partitions=3,
        recall=True,
        recall_redis_url=recall_redis_url,
        embedding_provider="openai",
        embedding_base_url=stub.base_url,
        embedding_model=MODEL.name,
        embedding_dimension=DIMENSION,
        embedding_timeout_s=1.0,
        embedder_group=f"embedder-{uuid.uuid4().hex[:8]}",
        pii_mode="off",
    )
    delete_recall_prefix(recall_redis_url, redis_prefix)


@pytest.fixture
def chat(settings) -> Iterator[ChatLog]:
    log = full_chatlog(settings)
    yield log
    log.close()


@contextlib.contextmanager
def running_embedder(settings: Settings) -> Iterator[tuple[KafkaEmbedder, list[BaseException]]]:
    """`wiring.recall_embedder` run in a thread for the block; what it raised, if it ended."""
    embedder = wiring.recall_embedder(settings)
    stopped, failed = threading.Event(), []

    def run() -> None:
        try:
            embedder.run(stop=stopped)
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="test-embedder", daemon=True)
    thread.start()
    try:
        yield embedder, failed
    finally:
        stopped.set()
        thread.join(30)
        embedder.embedder.close()
        assert not thread.is_alive(), "the embedder did not stop"


def documents(recall: redis.Redis, prefix: str, generation: str = "g1") -> dict[str, dict]:
    """The recall index's documents, by "session/message id": their tags."""
    found = {}
    keys = KeySpace(prefix, generation)
    for key in recall.scan_iter(f"{keys.recall_documents}*", count=1000):
        fields = {k.decode(): v for k, v in recall.hgetall(key).items()}
        if not fields:
            continue  # deleted since the scan found it
        session, message_id = key.decode().rsplit(":", 2)[1:]
        found[f"{session}/{message_id}"] = {
            name: fields[name].decode() for name in ("tenant", "user", "session", "role")
        }
    return found


def index_of(settings: Settings, recall: redis.Redis, generation: str = "g1") -> RedisVectorIndex:
    return RedisVectorIndex(
        recall, prefix=settings.redis_prefix, generation=generation, model=MODEL
    )


def write_visits(chat: ChatLog, user: str, *, tenant: str = "default") -> dict[str, str]:
    """Two sessions of `user` (16 events): in each a system message, 6 user and assistant
    turns, a tool message; "session/message id" of each turn, with its text."""
    turns = {}
    for visit in (1, 2):
        session = f"{user}-visit-{visit}"
        chat.append(session, user_id=user, role="system", content="You are helpful.", tenant=tenant)
        for n in range(3):
            for role in ("user", "assistant"):
                text = f"{user} {role} turn {n} of visit {visit}: order #A{visit}-10{n}"
                message_id = f"{role[0]}{visit}{n}"
                chat.append(
                    session,
                    user_id=user,
                    role=role,
                    content=text,
                    message_id=message_id,
                    tenant=tenant,
                )
                turns[f"{session}/{message_id}"] = text
        chat.append(
            session, user_id=user, role="tool", content="42", tool_call_id="call-1", tenant=tenant
        )
    chat.producer.flush()
    return turns


def wait_for_documents(recall, prefix: str, count: int, *, what: str, failed=()) -> None:
    def there() -> bool:
        assert not failed, f"the embedder stopped: {failed[0]!r}"
        return len(documents(recall, prefix)) == count

    wait_until(there, timeout=60, what=what, every=0.2)


def test_every_turn_is_indexed_once_with_its_tags_and_found(settings, chat, recall):
    turns = write_visits(chat, "alice") | write_visits(chat, "bob", tenant="acme")
    with running_embedder(settings) as (embedder, failed):
        wait_for_documents(
            recall, settings.redis_prefix, len(turns), what="24 turns indexed", failed=failed
        )
        # The same turn written again (a producer's retry) stays one document.
        chat.append(
            "alice-visit-1",
            user_id="alice",
            role="user",
            content=turns["alice-visit-1/u10"],
            message_id="u10",
        )
        chat.producer.flush()
        wait_until(lambda: embedder.stats.records >= 33, timeout=30, what="the repeat consumed")
        stats = embedder.stats
    docs = documents(recall, settings.redis_prefix)
    assert set(docs) == set(turns)
    assert docs["alice-visit-1/u10"] == {
        "tenant": "default",
        "user": "alice",
        "session": "alice-visit-1",
        "role": "user",
    }
    assert docs["alice-visit-2/a21"]["role"] == "assistant"
    assert {docs[m]["tenant"] for m in docs if docs[m]["user"] == "bob"} == {"acme"}
    # System and tool messages are counted, not indexed.
    assert stats.skipped["not_a_turn"] == 8
    assert stats.written == len(turns) + 1
    index = index_of(settings, recall)
    text = turns["alice-visit-2/a21"]
    hits = index.search(stub_vector(text, DIMENSION), tenant="default", user_id="alice", k=3)
    assert (hits[0].session_id, hits[0].message.message_id) == ("alice-visit-2", "a21")
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert text not in hits[0].message.content  # stored sealed
    # Never another user's: bob's turn is not found for alice.
    bob = turns["bob-visit-1/u10"]
    hits = index.search(stub_vector(bob, DIMENSION), tenant="default", user_id="alice", k=10)
    assert all(h.user_id == "alice" for h in hits)


def test_a_redaction_deletes_the_vector_and_an_erasure_every_vector_of_the_user(
    settings, chat, recall
):
    turns = write_visits(chat, "carol") | write_visits(chat, "dave")
    prefix = settings.redis_prefix
    with running_embedder(settings) as (embedder, failed):
        wait_for_documents(recall, prefix, len(turns), what="turns indexed", failed=failed)
        chat.producer.publish(
            new_event("carol-visit-1", user_id="carol", payload=MessageRedacted(message_id="a11"))
        )
        wait_for_documents(recall, prefix, 23, what="the redaction", failed=failed)
        assert "carol-visit-1/a11" not in documents(recall, prefix)
        assert embedder.stats.deleted == 1
        erasure = chat.erase_user("carol")
        assert erasure.vectors_removed == 11  # 12 turns, one redacted
        assert {d["user"] for d in documents(recall, prefix).values()} == {"dave"}
        # A session's erasure reaches the embedder as an event.
        chat.producer.publish(new_event("dave-visit-1", user_id="dave", payload=UserErased()))
        wait_for_documents(recall, prefix, 6, what="the session's erasure", failed=failed)
        assert embedder.stats.erased == 6
    left = documents(recall, prefix)
    assert {(d["user"], d["session"]) for d in left.values()} == {("dave", "dave-visit-2")}


def test_the_endpoint_down_pauses_the_embedder_and_it_catches_up_when_it_returns(
    settings, chat, recall, stub
):
    stub.default = status(500)
    with running_projector(settings), running_embedder(settings) as (embedder, failed):
        turns = write_visits(chat, "erin")
        # Windows keep working: the projector does not wait for embeddings.
        last = chat.append("erin-visit-2", user_id="erin", role="user", content="still there?")
        context = chat.context("erin-visit-2", user_id="erin", after=last)
        assert any("#A2-102" in m.content for m in context.messages)
        wait_until(
            lambda: embedder.stats.outages == 1 and embedder.stats.retries >= 2,
            timeout=60,
            what="the outage counted",
        )
        assert documents(recall, settings.redis_prefix) == {}
        assert embedder.readiness(1000) is not None
        stub.default = ok()
        wait_for_documents(
            recall, settings.redis_prefix, len(turns) + 1, what="the catch-up", failed=failed
        )
        from chatlog.prom_metrics import EmbedderCollector, registry_of  # the metrics extra

        samples = {
            s.name: s.value
            for f in registry_of(EmbedderCollector(embedder)).collect()
            for s in f.samples
        }
        assert samples["chatlog_embedder_outages_total"] == 1  # however many attempts
        assert samples["chatlog_embedder_retries_total"] >= 2
        failed_calls = samples["chatlog_embedder_embed_failures_total"]
        assert failed_calls + samples["chatlog_embedder_embed_refused_total"] >= 2
        assert samples["chatlog_embedder_turns_written_total"] == len(turns) + 1


def test_a_restart_neither_duplicates_nor_drops(settings, chat, recall, tmp_path):
    log = tmp_path / "embedder.log"
    first = write_visits(chat, "fay")
    process = start_processor("embedder", settings, log=log)
    try:
        wait_for_documents(recall, settings.redis_prefix, len(first), what="the first turns")
        second = write_visits(chat, "gus")
        time.sleep(0.3)  # some of gus's turns indexed, maybe not all: killed mid-run
    finally:
        stop(process, sig=signal.SIGKILL)
    third = write_visits(chat, "hal")
    with running_processor("embedder", settings, log=log) as process:
        wait_for_documents(
            recall, settings.redis_prefix, len(first) + len(second) + len(third), what="all turns"
        )
        # SIGTERM: it commits and exits 0, within the 10 s bound.
        signalled = time.monotonic()
        assert stop(process) == 0, log.read_text()[-3000:]
        assert time.monotonic() - signalled < 10
    # One document per turn, by name; and the index counts no second copy either.
    assert set(documents(recall, settings.redis_prefix)) == set(first) | set(second) | set(third)
    info = index_of(settings, recall).info()
    assert int(info["num_docs"]) == len(first) + len(second) + len(third)


def test_it_refuses_to_start_when_recall_is_off_or_redis_has_no_query_engine(settings, redis_url):
    off = chatlog_cli(settings.model_copy(update={"recall": False}), "run", "embedder")
    assert off.returncode == 1
    assert "CHATLOG_RECALL=true" in off.stderr
    plain = chatlog_cli(
        settings.model_copy(update={"recall_redis_url": redis_url}), "run", "embedder"
    )
    assert plain.returncode == 1
    assert "CHATLOG_RECALL_REDIS_URL" in plain.stderr
    assert "no query engine" in plain.stderr
    assert "make services" in plain.stderr


def test_a_model_mismatch_refuses_to_start(settings, recall):
    RedisVectorIndex(
        recall, prefix=settings.redis_prefix, generation="g1", model=EmbeddingModel("other", 16)
    ).ensure()
    ran = chatlog_cli(settings, "run", "embedder")
    assert ran.returncode == 1
    assert "built with embedding model other (dimension 16)" in ran.stderr
    assert "chatlog replay" in ran.stderr


def test_a_dropped_index_stops_it_naming_replay(settings, chat, recall):
    turns = write_visits(chat, "ida")
    port = free_port()
    metrics = settings.model_copy(update={"metrics_port": port})
    with running_embedder(metrics) as (embedder, failed):
        from chatlog.prom_metrics import EmbedderCollector, registry_of  # the metrics extra

        wait_for_documents(
            recall, settings.redis_prefix, len(turns), what="turns indexed", failed=failed
        )
        registry = registry_of(EmbedderCollector(embedder))
        samples = {s.name: s.value for f in registry.collect() for s in f.samples}
        assert samples["chatlog_embedder_turns_written_total"] == len(turns)
        assert samples["chatlog_embedder_skipped_total"] >= 0
        recall.execute_command("FT.DROPINDEX", f"{settings.redis_prefix}:g1:recall")
        wait_until(lambda: bool(failed), timeout=30, what="the embedder to stop")
    assert isinstance(failed[0], DataLoss)
    assert "chatlog replay" in failed[0].message
    assert index_of(settings, recall).state().meta["epoch"].startswith("lost:")
    # And it refuses to start again until a replay rebuilt it.
    ran = chatlog_cli(settings, "run", "embedder")
    assert ran.returncode == 1
    assert "chatlog replay" in ran.stderr


def test_metrics_and_health_of_the_process(settings, chat, recall, tmp_path):
    turns = write_visits(chat, "joe")
    port = free_port()
    served = settings.model_copy(update={"metrics_port": port})
    with running_processor("embedder", served, log=tmp_path / "embedder.log"):
        wait_for_documents(recall, settings.redis_prefix, len(turns), what="turns indexed")
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=30, what="/readyz", every=0.2)
        text = httpx.get(f"{url}/metrics", timeout=2).text
        assert f"chatlog_embedder_turns_written_total {float(len(turns))}" in text
        assert 'chatlog_embedder_skipped_total{reason="not_a_turn"} 4.0' in text
        assert 'chatlog_embedder_breaker_state{state="closed"} 1.0' in text
        assert "chatlog_embedder_embed_seconds_count" in text
        assert httpx.get(f"{url}/livez", timeout=2).status_code == 200
        health = chatlog_cli(served, "health")
        assert health.returncode == 0, health.stdout + health.stderr


def test_erasure_on_a_redis_without_the_query_engine_erases_nothing_there(
    kafka, redis_url, redis_prefix
):
    settings = unique_settings(kafka, redis_url, redis_prefix, recall_redis_url=redis_url)
    log = full_chatlog(settings)
    try:
        log.append("kim-1", user_id="kim", role="user", content="hello")
        log.producer.flush()
        assert log.erase_user("kim").vectors_removed == 0
    finally:
        log.close()


def test_a_flip_of_the_live_generation_moves_it_to_that_generations_index(settings, chat, recall):
    generations = wiring.generations(settings)
    generations.initialise("g1")
    before = write_visits(chat, "lea")
    with running_embedder(settings) as (embedder, failed):
        wait_for_documents(recall, settings.redis_prefix, len(before), what="g1", failed=failed)
        # A replay flips the pointer (its recall index not built: the embedder fills it
        # from its progress marks, none here, so from offset 0).
        generations.create("g2")
        assert generations.flip("g1", "g2")
        after = write_visits(chat, "max")

        def in_g2() -> bool:
            assert not failed, f"the embedder stopped: {failed[0]!r}"
            return len(documents(recall, settings.redis_prefix, "g2")) == len(before) + len(after)

        wait_until(in_g2, timeout=60, what="g2's index filled", every=0.2)
        assert embedder.generation == "g2"
    assert set(documents(recall, settings.redis_prefix, "g2")) == set(before) | set(after)
    # g1 keeps what it had (and what was indexed in the second before the flip was seen).
    assert set(before) <= set(documents(recall, settings.redis_prefix, "g1"))
    assert (
        index_of(settings, recall, "g2")
        .search(
            stub_vector(after["max-visit-1/u10"], DIMENSION), tenant="default", user_id="max", k=1
        )[0]
        .message.message_id
        == "u10"
    )


def publish_raw(settings: Settings, events: list[ConversationEvent]) -> None:
    """Publish `events` with a bare confluent-kafka producer: no claims, no checks, each on
    its session's own partition (librdkafka's default partitioner is not murmur2)."""
    raw = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for event in events:
        raw.produce(
            settings.topic,
            key=event.session_id.encode(),
            value=EventCodec().encode(event),
            partition=partition_for(event.session_id, 3),
        )
    assert raw.flush(30) == 0


def test_events_forged_into_another_users_session_change_nothing_of_hers(settings, chat, recall):
    """Bob, with a bare Kafka producer (no claims, no gateway), publishes into Alice's
    sessions: a turn with the message id of one of hers, a redaction of another, and an
    erasure of a whole session. The projector refuses all three as foreign; the index
    must too: her vectors stay as they were, and the refusals are counted."""
    turns = write_visits(chat, "alice")
    prefix = settings.redis_prefix
    forged = [
        append_message(
            "alice-visit-1", user_id="bob", role="user", content="forged by bob", message_id="u10"
        ),
        new_event("alice-visit-1", user_id="bob", payload=MessageRedacted(message_id="a11")),
        new_event("alice-visit-2", user_id="bob", payload=UserErased()),
    ]
    publish_raw(settings, forged)
    with running_embedder(settings) as (embedder, failed):
        # Alice's next turn, after the forged events in both sessions' partitions.
        for session in ("alice-visit-1", "alice-visit-2"):
            chat.append(session, user_id="alice", role="user", content="later", message_id="z")
        chat.producer.flush()
        wait_for_documents(recall, prefix, len(turns) + 2, what="alice's turns", failed=failed)
        stats = embedder.stats
    docs = documents(recall, prefix)
    assert set(docs) == set(turns) | {"alice-visit-1/z", "alice-visit-2/z"}
    assert {d["user"] for d in docs.values()} == {"alice"}
    text = turns["alice-visit-1/u10"]
    hits = index_of(settings, recall).search(
        stub_vector(text, DIMENSION), tenant="default", user_id="alice", k=1
    )
    assert (hits[0].message.message_id, hits[0].score) == ("u10", pytest.approx(1.0, abs=1e-5))
    assert (
        index_of(settings, recall).search(
            stub_vector("forged by bob", DIMENSION), tenant="default", user_id="bob", k=5
        )
        == []
    )
    assert stats.skipped["other_owner"] == 2  # the turn and the redaction
    assert (stats.deleted, stats.erased) == (0, 0)


def test_with_the_read_model_holding_her_sessions_a_forged_event_is_not_even_planned(
    settings, chat, recall
):
    """The projector holds Alice's sessions as hers: the embedder reads their owners and
    leaves out Bob's events in them altogether, a turn under a message id of his own
    too (which the index alone would keep as his)."""
    prefix = settings.redis_prefix
    with running_projector(settings):
        turns = write_visits(chat, "alice")
        for session in ("alice-visit-1", "alice-visit-2"):
            last = chat.append(session, user_id="alice", role="user", content="projected?")
            chat.context(session, user_id="alice", after=last)  # her views are there
        forged = [
            append_message(
                "alice-visit-1", user_id="bob", role="user", content="new", message_id="b"
            ),
            append_message(
                "alice-visit-1", user_id="bob", role="user", content="forged", message_id="u10"
            ),
            new_event("alice-visit-1", user_id="bob", payload=MessageRedacted(message_id="a11")),
        ]
        publish_raw(settings, forged)
        chat.append("alice-visit-1", user_id="alice", role="user", content="later", message_id="z")
        chat.producer.flush()
        with running_embedder(settings) as (embedder, failed):
            wait_for_documents(recall, prefix, len(turns) + 3, what="alice's turns", failed=failed)
            stats = embedder.stats
    docs = documents(recall, prefix)
    assert "alice-visit-1/b" not in docs
    assert {d["user"] for d in docs.values()} == {"alice"}
    assert "alice-visit-1/a11" in docs
    assert stats.skipped["other_owner"] == 3  # left out by the plan, none reached the index
