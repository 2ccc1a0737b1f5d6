"""The projection end to end: real Kafka, real Redis, a real projector process."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from confluent_kafka import Producer

from chatlog import wiring
from chatlog.client import AsyncChatLog, ChatLog
from chatlog.producers.kafka_producer import AsyncConversationProducer
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import ReadModelLost, SessionNotFound
from tests.processes import running_projector, unique_settings, wait_until

pytestmark = pytest.mark.integration


def test_200_sessions_x_50_messages_concurrently_each_sees_only_its_own(settings, chat):
    sessions = {f"s{i:03d}": f"user{i % 37}" for i in range(200)}
    per_session = 50
    turns = [(s, n) for s in sessions for n in range(per_session)]
    random.Random(3).shuffle(turns)
    # Each session's turns must be sent in order, so one lock per session serializes them
    # while threads interleave sessions at random.
    next_turn = dict.fromkeys(sessions, 0)
    locks = {s: threading.Lock() for s in sessions}
    missed_own_write: list[str] = []

    def send(session: str) -> None:
        with locks[session]:
            n = next_turn[session]
            next_turn[session] += 1
            content = f"{session}:{n}"
            position = chat.append(
                session,
                user_id=sessions[session],
                role="user" if n % 2 == 0 else "assistant",
                content=content,
            )
            context = chat.context(session, user_id=sessions[session], after=position)
            if context.messages[-1].content != content:
                missed_own_write.append(content)

    with running_projector(settings), ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(send, [s for s, _ in turns]))

    assert missed_own_write == []
    for session, user in sessions.items():
        context = chat.context(session, user_id=user)
        assert [m.content for m in context.messages] == [
            f"{session}:{n}" for n in range(per_session)
        ]
        assert [m.content for m in context.window] == [
            f"{session}:{n}" for n in range(per_session - 20, per_session)
        ]
        assert context.message_count == per_session


def test_a_poison_record_goes_to_the_dlq_and_the_projector_keeps_going(kafka, settings, chat):
    poison = Producer({"bootstrap.servers": kafka.bootstrap})
    poison.produce(settings.topic, key=b"s-poison", value=b"\x00\x00\x00\x00\x07not avro")
    poison.produce(settings.topic, key=b"s-poison", value=b'{"role": "user"}')
    poison.flush(10)
    with running_projector(settings):
        position = chat.append("s-poison", user_id="u", role="user", content="still works")
        context = chat.context("s-poison", user_id="u", after=position, timeout=30)
        assert [m.content for m in context.messages] == ["still works"]
        wait_until(
            lambda: len(kafka.consume_all(settings.dlq_topic)) == 2,
            timeout=30,
            what="two dead letters",
        )
    letters = kafka.consume_all(settings.dlq_topic)
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers()}
        assert headers["chatlog.dlq.topic"] == settings.topic
        assert headers["chatlog.dlq.error.class"] in {"DecodeError", "UnknownSchema"}
        assert int(headers["chatlog.dlq.offset"]) in {0, 1}
        assert letter.key() == b"s-poison"
    assert {letter.value() for letter in letters} == {
        b"\x00\x00\x00\x00\x07not avro",
        b'{"role": "user"}',
    }


def test_another_users_session_is_refused_and_never_listed(settings, chat):
    with running_projector(settings):
        position = chat.append("s-alice", user_id="alice", role="user", content="order #A-1")
        chat.context("s-alice", user_id="alice", after=position)
        with pytest.raises(SessionNotFound, match=r"^no session s-alice of user bob in tenant"):
            chat.context("s-alice", user_id="bob")
        # A write into alice's session by bob is dead-lettered, never shown to anyone.
        intrusion = chat.append("s-alice", user_id="bob", role="user", content="bob was here")
        marker = chat.append("s-alice", user_id="alice", role="user", content="after")
        context = chat.context("s-alice", user_id="alice", after=marker)
    assert [m.content for m in context.messages] == ["order #A-1", "after"]
    assert intrusion.offset < marker.offset
    assert [e.session_id for e in chat.sessions("alice")] == ["s-alice"]
    assert chat.sessions("bob") == []


def test_a_missing_session_and_an_unreached_position_say_so(settings, chat):
    # Before any projector has created the read-model, no read can tell "never
    # existed" from "lost with Redis's data": it says so rather than "not found".
    with pytest.raises(ReadModelLost, match="chatlog run projector"):
        chat.context("s-none", user_id="u")
    wiring.generations(settings).initialise("g1")  # what a projector's first start does
    with pytest.raises(SessionNotFound, match="no session s-none"):
        chat.context("s-none", user_id="u")
    position = chat.append("s-late", user_id="u", role="user", content="x")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="is the projector running"):
        chat.context("s-late", user_id="u", after=position, timeout=0.5)
    assert time.monotonic() - started < 5


def test_sessions_are_listed_by_last_activity_and_expire_with_their_ttl(
    kafka, redis_url, redis_prefix
):
    settings = unique_settings(kafka, redis_url, redis_prefix, session_ttl_s=3)
    chat = ChatLog(producer=wiring.producer(settings), reader=wiring.reader(settings))
    with running_projector(settings):
        for session in ("s-old", "s-new"):
            position = chat.append(session, user_id="carol", role="user", content=session)
            chat.context(session, user_id="carol", after=position, timeout=30)
            time.sleep(0.01)
        listed = chat.sessions("carol")
        assert [(e.session_id, e.message_count) for e in listed] == [("s-new", 1), ("s-old", 1)]
        time.sleep(3.5)
        assert chat.sessions("carol") == []
        with pytest.raises(SessionNotFound):
            chat.context("s-new", user_id="carol")
    chat.close()


def test_the_async_facade_reads_its_own_writes(settings):
    async def run():
        chat = AsyncChatLog(
            producer=AsyncConversationProducer(wiring.producer(settings, flush_on_sigterm=False)),
            reader=wiring.async_reader(settings),
            read_timeout_s=30,
        )
        async with chat:
            seen = []
            for n in range(5):
                position = await chat.append("s-async", user_id="dora", role="user", content=str(n))
                context = await chat.context("s-async", user_id="dora", after=position)
                seen.append(context.messages[-1].content)
            listed = await chat.sessions("dora")
        return seen, listed

    with running_projector(settings):
        seen, listed = asyncio.run(run())
    assert seen == ["0", "1", "2", "3", "4"]
    assert [e.session_id for e in listed] == ["s-async"]


def test_decoding_is_shared_with_every_consumer(kafka, settings, chat):
    position = chat.append("s-raw", user_id="u", role="user", content="a secret")
    [message] = kafka.consume_all(settings.topic)
    assert (message.partition(), message.offset()) == (position.partition, position.offset)
    event = EventCodec().decode(message.value())
    assert b"a secret" not in message.value()  # sealed: no content in the clear
    [opened] = wiring.opener(settings).open_batch([event])
    assert opened.payload.content == "a secret"
