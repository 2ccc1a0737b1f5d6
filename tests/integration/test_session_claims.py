"""An append into another user's session is refused before anything is published (issue
15): the session's first writer claims it in Redis, against the real broker and Redis."""

from __future__ import annotations

import asyncio
import threading

import pytest
import redis
from confluent_kafka import TopicPartition

from chatlog.client import AsyncChatLog
from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.schemas.errors import OwnershipError
from chatlog.settings import Settings
from tests.processes import full_chatlog, running_projector, unique_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(kafka, redis_url, redis_prefix) -> Settings:
    return unique_settings(kafka, redis_url, redis_prefix, session_ttl_s=3600)


def end_offsets(settings: Settings) -> list[int]:
    """Every partition's end offset of the events topic: what has been published."""
    consumer = groupless_consumer(settings.kafka_bootstrap, settings.kafka, purpose="test")
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(settings.topic, p), timeout=10)[1]
            for p in range(settings.partitions)
        ]
    finally:
        consumer.close()


def test_another_users_append_is_refused_and_nothing_is_published(settings):
    alice, bob = full_chatlog(settings), full_chatlog(settings)  # two processes' clients
    try:
        alice.start_session("s-1", user_id="alice", title="Refund")
        alice.append("s-1", user_id="alice", role="user", content="my order 7731")
        published = end_offsets(settings)
        with pytest.raises(OwnershipError, match="belongs to another user, not bob"):
            bob.append("s-1", user_id="bob", role="user", content="bob's words")
        with pytest.raises(OwnershipError):
            bob.start_session("s-1", user_id="bob", title="mine now")
        # The same user id in another tenant is another user.
        with pytest.raises(OwnershipError):
            bob.append("s-1", user_id="alice", role="user", content="x", tenant="other")
        assert end_offsets(settings) == published
        alice.append("s-1", user_id="alice", role="user", content="still mine")
        # The claim lives as long as the session's view, refreshed by the appends.
        ttl_ms = alice.reader.client.pttl(f"{settings.redis_prefix}:owner:{{s-1}}")
        assert 3_500_000 < ttl_ms <= 3_600_000
    finally:
        alice.close()
        bob.close()


def test_of_two_writers_racing_for_a_new_session_one_owns_it(settings):
    clients = {user: full_chatlog(settings) for user in ("carol", "dave", "erin", "frank")}
    start = threading.Barrier(len(clients))
    won: list[str] = []
    refused: list[str] = []

    def write(user: str) -> None:
        start.wait()
        try:
            clients[user].append("s-race", user_id=user, role="user", content=f"{user} was here")
            won.append(user)
        except OwnershipError:
            refused.append(user)

    threads = [threading.Thread(target=write, args=(user,)) for user in clients]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(won) == 1
        assert sorted(won + refused) == sorted(clients)
        assert sum(end_offsets(settings)) == 1  # only the winner's message was published
    finally:
        for client in clients.values():
            client.close()


def test_a_session_written_before_claims_keeps_its_owner(settings):
    # Written past the client (a raw producer, or before claims existed): no claim, but
    # the read-model knows the owner, and the first claim takes it from there.
    chat = full_chatlog(settings)
    try:
        with running_projector(settings):
            position = chat.producer.append("s-old", user_id="gina", role="user", content="hi")
            chat.context("s-old", user_id="gina", after=position)
            with pytest.raises(OwnershipError):
                chat.append("s-old", user_id="hank", role="user", content="squatting")
            chat.append("s-old", user_id="gina", role="user", content="still mine")
    finally:
        chat.close()


def test_the_asyncio_client_claims_too(settings):
    async def scenario() -> None:
        async with (
            AsyncChatLog.from_settings(settings, flush_on_sigterm=False) as ida,
            AsyncChatLog.from_settings(settings, flush_on_sigterm=False) as jon,
        ):
            await ida.start_session("s-async", user_id="ida")
            with pytest.raises(OwnershipError):
                await jon.append("s-async", user_id="jon", role="user", content="x")
            await ida.append("s-async", user_id="ida", role="user", content="y")

    asyncio.run(scenario())
    assert sum(end_offsets(settings)) == 2
    # A client of its own, closed: one left to the garbage collector fails the run at exit
    # (an unclosed socket is a ResourceWarning, and warnings are errors).
    with redis.Redis.from_url(settings.redis_url) as client:
        claim = client.get(f"{settings.redis_prefix}:owner:{{s-async}}")
    assert claim == b"default\x1fida"


def test_the_langchain_history_claims_and_keeps_positions_per_user(settings):
    from langchain_core.messages import HumanMessage

    from chatlog.integrations.langchain import ChatlogMessageHistory, HistoryBook

    chat = full_chatlog(settings)
    book = HistoryBook()
    try:
        with running_projector(settings):
            mine = ChatlogMessageHistory("s-lc", "kim", log=chat, book=book)
            mine.add_messages([HumanMessage("hello")])
            published = end_offsets(settings)
            theirs = ChatlogMessageHistory("s-lc", "lou", log=chat, book=book)
            with pytest.raises(OwnershipError):
                theirs.add_messages([HumanMessage("squatting")])
            assert end_offsets(settings) == published
            # Kim's write is noted for kim only: lou's history of the session knows nothing.
            assert mine.last_position is not None
            assert theirs.last_position is None
            assert [m.content for m in mine.messages] == ["hello"]
    finally:
        chat.close()
