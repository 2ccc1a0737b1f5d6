"""Replay rebuilds the recall index with the read-model: the new generation's index holds
exactly the turns the log says it should, the old generation's goes with it, a lost index
is rebuilt by `chatlog replay`, worker processes build the same, `--verify` compares
document by document, a changed model builds the new generation with the new model, and
an interrupted replay resumes the index from its progress marks.

Real Kafka, real Redis for the read-model, Redis Stack for the index, the offline
embedding model (wordllama), the projector as a process; events sealed, as by default.
"""

from __future__ import annotations

import json
import threading

import pytest
import redis

from chatlog import wiring
from chatlog.processors.kafka_replay import ReplayProgress
from chatlog.processors.replay import rebuild, verify
from chatlog.projections.keys import KeySpace
from chatlog.projections.recall import EmbeddingModel
from chatlog.projections.redis_vectors import RedisVectorIndex, recall_generations
from chatlog.schemas.errors import (
    ConfigError,
    EmbeddingModelMismatch,
    Interrupted,
    RecallIndexLost,
)
from chatlog.settings import Settings
from tests.processes import (
    chatlog_cli,
    delete_recall_prefix,
    full_chatlog,
    running_projector,
    unique_settings,
    wait_until,
)

pytestmark = pytest.mark.integration

USERS = 6
SESSIONS_PER_USER = 2
TURNS = 8  # user and assistant, alternating, per session
FILLER = [
    "Hello, I have a question about my account.",
    "Of course, I can help with that. What would you like to know?",
    "The app logs me out every few minutes.",
    "Please try clearing the cache and signing in again.",
    "That did not change anything, unfortunately.",
    "I have escalated it to our engineers; you will hear from us.",
    "Thanks, have a nice day.",
    "You are welcome, goodbye.",
]
FACT = "My order number is A7-1042 and it was for a red kitchen blender."
QUESTION = "which kitchen appliance did I order?"


@pytest.fixture
def settings(kafka, redis_url, recall_redis_url, redis_prefix) -> Settings:
    built = unique_settings(
        kafka,
        redis_url,
        redis_prefix,
        partitions=3,
        recall=True,
        recall_redis_url=recall_redis_url,
    )
    yield built
    delete_recall_prefix(recall_redis_url, redis_prefix)


@pytest.fixture
def recall_client(recall_redis_url):
    client = redis.Redis.from_url(recall_redis_url)
    yield client
    client.close()


def publish(kafka, settings: Settings) -> set[tuple[str, str]]:
    """Sessions of several users with user, assistant, tool and system turns; one turn
    redacted, one session erased, one user erased. The (session, message id) of every turn
    the recall index must hold."""
    expected: set[tuple[str, str]] = set()
    chat = full_chatlog(settings)
    try:
        for u in range(USERS):
            for s in range(SESSIONS_PER_USER):
                session = f"u{u}-s{s}"
                for n in range(TURNS):
                    role = "user" if n % 2 == 0 else "assistant"
                    content = FACT if (u, s, n) == (1, 0, 2) else FILLER[n]
                    message_id = f"m{n}"
                    chat.append(
                        session,
                        user_id=f"u{u}",
                        role=role,
                        content=content,
                        message_id=message_id,
                    )
                    expected.add((session, message_id))
                chat.append(session, user_id=f"u{u}", role="system", content="Be kind.")
                chat.append(session, user_id=f"u{u}", role="tool", content="{}", tool_call_id="c1")
        # Projected: the reader knows the sessions' owners.
        wait_until(lambda: projected(kafka, settings), timeout=60, what="live projection")
        chat.redact("u0-s1", "m3", user_id="u0")
        expected.discard(("u0-s1", "m3"))
        chat.erase_session("u2-s0", user_id="u2")
        expected -= {("u2-s0", f"m{n}") for n in range(TURNS)}
        chat.erase_user("u3")
        expected -= {(f"u3-s{s}", f"m{n}") for s in range(SESSIONS_PER_USER) for n in range(TURNS)}
    finally:
        chat.close()
    return expected


def projected(kafka, settings: Settings) -> bool:
    """Whether the live generation has projected the whole topic."""
    marks = wiring.live_store(settings).progress()
    ends = kafka.end_offsets(settings.topic)
    return all(marks.get(p, -1) >= end - 1 for p, end in ends.items() if end)


def documents(client: redis.Redis, settings: Settings, generation: str) -> set[tuple[str, str]]:
    """(session, message id) of every document of `generation`'s recall index."""
    head = KeySpace(settings.redis_prefix, generation).recall_documents
    names = (k.decode()[len(head) :] for k in client.scan_iter(match=f"{head}*", count=1000))
    return {tuple(name.split(":", 1)) for name in names}  # type: ignore[misc]


def index(client: redis.Redis, settings: Settings, generation: str) -> RedisVectorIndex:
    spec = settings.embedding
    return RedisVectorIndex(
        client,
        prefix=settings.redis_prefix,
        generation=generation,
        model=EmbeddingModel(spec.model, spec.dimension),
    )


def recalled(client: redis.Redis, settings: Settings, generation: str) -> list[str]:
    """The message ids of u1's turns nearest to the question, nearest first."""
    embedder = wiring.embedder(settings)
    try:
        vector = embedder.embed([QUESTION])[0]
    finally:
        embedder.close()
    hits = index(client, settings, generation).search(vector, tenant="default", user_id="u1", k=3)
    return [f"{h.session_id}/{h.message.message_id}" for h in hits]


def listed(client: redis.Redis, settings: Settings) -> list[str]:
    return recall_generations(client, prefix=settings.redis_prefix)


def test_a_replay_builds_the_new_generations_index_and_a_lost_one_is_rebuilt(
    kafka, settings, recall_client
):
    with running_projector(settings):
        expected = publish(kafka, settings)
        wait_until(lambda: projected(kafka, settings), timeout=60, what="live projection")
        report = rebuild(wiring.replay_parts(settings), handover_s=0.5)
        assert (report.replaced, report.generation) == ("g1", "g2")
        assert documents(recall_client, settings, "g2") == expected
        assert report.recall_documents == len(expected) == 6 * 2 * 8 - 1 - 8 - 16
        assert "u1-s0/m2" in recalled(recall_client, settings, "g2")
        assert index(recall_client, settings, "g2").state().assess({}) == "intact"

        # The live index is lost (its definition dropped, its documents left): readers
        # refuse it, and `chatlog replay` builds the next generation's from the log.
        recall_client.execute_command("FT.DROPINDEX", f"{settings.redis_prefix}:g2:recall")
        with pytest.raises(RecallIndexLost):
            recalled(recall_client, settings, "g2")
        cli = chatlog_cli(settings, "replay", "--handover", "0.5", "--json")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    result = json.loads(cli.stdout)
    assert (result["replaced"], result["generation"]) == ("g2", "g3")
    assert result["recall_documents"] == len(expected)
    assert "the recall index of the live generation g2 was lost" in cli.stderr
    assert documents(recall_client, settings, "g3") == expected
    assert "u1-s0/m2" in recalled(recall_client, settings, "g3")
    # The old generation's index is gone: definition, documents, metadata, progress.
    assert listed(recall_client, settings) == ["g3"]
    assert documents(recall_client, settings, "g2") == set()
    old = KeySpace(settings.redis_prefix, "g2")
    assert recall_client.exists(old.recall_meta, old.recall_progress) == 0


def test_turns_appended_during_the_replay_are_indexed_by_its_catch_up_and_hand_over(
    kafka, settings, recall_client
):
    with running_projector(settings):
        expected = publish(kafka, settings)
        done = threading.Event()
        appended: list[tuple[str, str]] = []

        def traffic() -> None:
            with wiring.producer(settings, flush_on_sigterm=False) as producer:
                n = 0
                while not done.is_set():
                    session, message_id = f"live{n % 5}", f"t{n}"
                    producer.append(
                        session,
                        user_id="carol",
                        role="user" if n % 2 == 0 else "assistant",
                        content=f"{FILLER[n % len(FILLER)]} ({n})",
                        message_id=message_id,
                    )
                    appended.append((session, message_id))
                    n += 1

        started_with: list[int] = []  # turns appended when the end offsets were read

        def stop_traffic_at_the_hand_over(progress: ReplayProgress) -> None:
            if not started_with:
                started_with.append(len(appended))
            if progress.phase == "hand over":
                done.set()

        writer = threading.Thread(target=traffic)
        writer.start()
        try:
            wait_until(lambda: len(appended) >= 20, timeout=30, what="live traffic")
            report = rebuild(
                wiring.replay_parts(settings),
                handover_s=3.0,
                on_progress=stop_traffic_at_the_hand_over,
            )
        finally:
            done.set()
            writer.join(30)
    assert report.generation == "g2"
    # Every turn written before the hand-over ended: those the rebuild read, and those
    # appended after the end offsets it started from, read by the catch-up and hand-over.
    assert len(appended) > started_with[0] + 5
    assert documents(recall_client, settings, "g2") == expected | set(appended)


def test_worker_processes_build_the_same_index(kafka, settings, recall_client):
    with running_projector(settings):
        expected = publish(kafka, settings)
        wait_until(lambda: projected(kafka, settings), timeout=60, what="live projection")
        report = rebuild(wiring.replay_parts(settings), handover_s=0.5, workers=2, keep_old=True)
    assert report.generation == "g2"
    assert documents(recall_client, settings, "g2") == expected
    assert index(recall_client, settings, "g2").state().marks == {
        p: end - 1 for p, end in kafka.end_offsets(settings.topic).items() if end
    }
    assert "u1-s0/m2" in recalled(recall_client, settings, "g2")


def test_verify_compares_the_indexes_document_by_document(kafka, settings, recall_client):
    with running_projector(settings):
        expected = publish(kafka, settings)
        wait_until(lambda: projected(kafka, settings), timeout=60, what="live projection")
        rebuild(wiring.replay_parts(settings), handover_s=0.5)
        wait_until(lambda: projected(kafka, settings), timeout=60, what="the projector on g2")
        same = verify(wiring.replay_parts(settings))
        assert same.differences == []
        assert same.recall_documents == len(expected)

        recall_client.delete(KeySpace(settings.redis_prefix, "g2").recall_document("u4-s1", "m5"))
        cli = chatlog_cli(settings, "replay", "--verify")
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "recall session u4-s1: 1 turn(s) missing in g2 (m5)" in cli.stdout
    # The scratch generation's index is dropped after the comparison.
    assert listed(recall_client, settings) == ["g2"]


def test_a_replay_with_another_model_builds_the_new_index_with_it(kafka, settings, recall_client):
    with running_projector(settings):
        expected = publish(kafka, settings)
        wait_until(lambda: projected(kafka, settings), timeout=60, what="live projection")
        rebuild(wiring.replay_parts(settings), handover_s=0.5)
        smaller = settings.model_copy(update={"embedding_dimension": 64})
        rebuild(wiring.replay_parts(smaller), handover_s=0.5)
    state = index(recall_client, smaller, "g3").state()
    assert state.model == EmbeddingModel(settings.embedding.model, 64)
    assert documents(recall_client, settings, "g3") == expected
    assert "u1-s0/m2" in recalled(recall_client, smaller, "g3")
    # A process still set for the old model is refused, loudly.
    with pytest.raises(EmbeddingModelMismatch, match="rebuild the index"):
        recalled(recall_client, settings, "g3")


def test_an_interrupted_replay_resumes_the_index_from_its_marks(kafka, settings, recall_client):
    with running_projector(settings):
        expected = publish(kafka, settings)
        wait_until(lambda: projected(kafka, settings), timeout=60, what="live projection")
        stop = threading.Event()

        def interrupt_halfway(progress: ReplayProgress) -> None:
            if progress.done >= 60:
                stop.set()

        with pytest.raises(Interrupted):
            rebuild(
                wiring.replay_parts(settings, batch_size=20),
                stop=stop,
                on_progress=interrupt_halfway,
            )
        partial = documents(recall_client, settings, "g2")
        assert 0 < len(partial) < len(expected)
        marks = index(recall_client, settings, "g2").state().marks
        report = rebuild(wiring.replay_parts(settings), handover_s=0.5)
    assert report.resumed
    assert report.generation == "g2"
    total = sum(kafka.end_offsets(settings.topic).values())
    assert report.events == total - sum(offset + 1 for offset in marks.values())
    assert documents(recall_client, settings, "g2") == expected


def test_recall_on_a_redis_without_the_query_engine_is_refused_naming_the_setting(
    settings, redis_url
):
    plain = settings.model_copy(update={"recall_redis_url": redis_url})
    with pytest.raises(ConfigError, match="CHATLOG_RECALL_REDIS_URL") as raised:
        rebuild(wiring.replay_parts(plain), handover_s=0)
    assert "no query engine" in str(raised.value)
    assert wiring.generations(plain).live() is None
