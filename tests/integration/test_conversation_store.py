"""The conversation store contract, run against the in-memory fake and the chatlog store.

`ConversationStoreContract` holds the tests every `ConversationStore` must pass; each
subclass says how to open its store. The chatlog store runs against real Kafka and
Redis with a real projector, and a window of 4 messages (plus at most 3 of overflow), so
that most pages of a 12-message session come from the log rather than from Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
import redis

from chatlog import wiring
from chatlog.integrations.conversations import (
    ConversationStore,
    SessionExists,
    UnknownMessage,
)
from chatlog.integrations.kafka_log import KafkaSessionLog
from chatlog.integrations.memory_store import InMemoryConversationStore
from chatlog.integrations.store import ChatlogConversationStore
from chatlog.producers.commands import new_event
from chatlog.producers.kafka_producer import AsyncConversationProducer
from chatlog.producers.partitioning import partition_for
from chatlog.projections.keys import KeySpace
from chatlog.projections.redis_reader import DEFAULT_GENERATION
from chatlog.schemas.errors import InvalidEvent, InvalidId, InvalidInput, OwnershipError
from chatlog.schemas.events import MessageRedacted, SessionStarted, ToolCall
from tests.processes import delete_prefix, running_projector, unique_settings

Check = Callable[..., Awaitable[None]]


def in_store(check: Check):
    """A test that runs `check(self, store)` in a fresh event loop, in a fresh store."""

    def test(self, open_store) -> None:
        async def main() -> None:
            async with open_store() as store:
                await check(self, store)

        asyncio.run(main())

    test.__name__ = check.__name__
    test.__doc__ = check.__doc__
    return test


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def add_numbered(store: ConversationStore, session: str, user: str, count: int):
    return [
        await store.add_message(
            session, user_id=user, role="user" if n % 2 == 0 else "assistant", content=f"m{n}"
        )
        for n in range(count)
    ]


class ConversationStoreContract:
    """What every `ConversationStore` does; subclasses define the `open_store` fixture."""

    @in_store
    async def test_a_created_session_reads_back(self, store):
        user = uid("u")
        created = await store.create_session(user_id=user, title="Order 7731")
        assert (created.user_id, created.title, created.status, created.message_count) == (
            user,
            "Order 7731",
            "open",
            0,
        )
        assert await store.get_session(created.session_id, user_id=user) == created
        named = await store.create_session(user_id=user, session_id=uid("s"))
        assert named.title is None

    @in_store
    async def test_a_taken_id_cannot_be_created_again(self, store):
        user, session = uid("u"), uid("s")
        await store.create_session(user_id=user, session_id=session)
        with pytest.raises(SessionExists, match="exists already"):
            await store.create_session(user_id=user, session_id=session)
        with pytest.raises(OwnershipError):
            await store.create_session(user_id=uid("other"), session_id=session)

    @in_store
    async def test_an_unknown_session_is_none_and_has_no_messages(self, store):
        assert await store.get_session(uid("s"), user_id=uid("u")) is None
        assert await store.get_messages(uid("s"), user_id=uid("u")) == []
        assert await store.delete_session(uid("s"), user_id=uid("u")) is False

    @in_store
    async def test_upsert_creates_then_renames(self, store):
        user, session = uid("u"), uid("s")
        assert (await store.upsert_session(session, user_id=user, title="A")).title == "A"
        assert (await store.upsert_session(session, user_id=user, title="B")).title == "B"
        assert (await store.upsert_session(session, user_id=user)).title == "B"
        assert (await store.get_session(session, user_id=user)).title == "B"

    @in_store
    async def test_messages_read_back_exactly_as_added(self, store):
        user, session = uid("u"), uid("s")
        added = [
            await store.add_message(session, user_id=user, role="system", content="Be brief."),
            await store.add_message(
                session,
                user_id=user,
                role="user",
                content="Where is order 7731?",
                name="alice",
                metadata={"channel": "web"},
                message_id="msg-1",
            ),
            await store.add_message(
                session,
                user_id=user,
                role="assistant",
                content="",
                tool_calls=[ToolCall(id="c1", name="lookup", arguments='{"order": 7731}')],
            ),
            await store.add_message(
                session, user_id=user, role="tool", content="shipped", tool_call_id="c1"
            ),
        ]
        assert added[1].message_id == "msg-1"
        assert [m.offset for m in added] == sorted(m.offset for m in added)
        assert await store.get_messages(session, user_id=user) == added
        described = await store.get_session(session, user_id=user)
        assert described.message_count == 4
        assert described.updated_at >= described.created_at

    @in_store
    async def test_a_retried_message_id_is_stored_once(self, store):
        user, session = uid("u"), uid("s")
        first = await store.add_message(
            session, user_id=user, role="user", content="hi", message_id="m-1"
        )
        await store.add_message(session, user_id=user, role="user", content="hi", message_id="m-1")
        assert await store.get_messages(session, user_id=user) == [first]

    @in_store
    async def test_pages_follow_the_paging_rules(self, store):
        user, session = uid("u"), uid("s")
        every = await add_numbered(store, session, user, 12)
        ids = [m.message_id for m in every]

        async def page(**kwargs):
            return await store.get_messages(session, user_id=user, **kwargs)

        assert await page(limit=None) == every
        assert await page() == every  # the default limit is 20
        assert await page(limit=5) == every[-5:]
        assert await page(limit=3, before=ids[8]) == every[5:8]
        assert await page(limit=20, before=ids[2]) == every[:2]
        assert await page(limit=3, after=ids[2]) == every[3:6]
        assert await page(limit=None, after=ids[9]) == every[10:]
        assert await page(after=ids[2], before=ids[5]) == every[3:5]
        assert await page(after=ids[5], before=ids[2]) == []
        assert await page(before=ids[0]) == []
        assert await page(after=ids[11]) == []

    @in_store
    async def test_paging_back_and_forth_visits_every_message_once(self, store):
        user, session = uid("u"), uid("s")
        every = await add_numbered(store, session, user, 12)
        backward, cursor = [], None
        while batch := await store.get_messages(session, user_id=user, limit=5, before=cursor):
            backward = batch + backward
            cursor = batch[0].message_id
        assert backward == every
        forward, cursor = [every[0]], every[0].message_id
        while batch := await store.get_messages(session, user_id=user, limit=5, after=cursor):
            forward += batch
            cursor = batch[-1].message_id
        assert forward == every

    @in_store
    async def test_a_cursor_that_is_not_a_message_of_the_session_is_refused(self, store):
        user, session, other = uid("u"), uid("s"), uid("s")
        await add_numbered(store, session, user, 9)
        elsewhere = await store.add_message(other, user_id=user, role="user", content="x")
        for cursor in ("no-such-message", elsewhere.message_id):
            with pytest.raises(UnknownMessage, match="no message"):
                await store.get_messages(session, user_id=user, before=cursor)
            with pytest.raises(UnknownMessage):
                await store.get_messages(session, user_id=user, after=cursor, limit=2)

    @in_store
    async def test_another_users_session_reads_as_none_and_refuses_writes(self, store):
        alice, bob, session = uid("alice"), uid("bob"), uid("s")
        await store.create_session(user_id=alice, session_id=session, title="private")
        await store.add_message(session, user_id=alice, role="user", content="order #A-1")
        # Read (and delete) as a session that does not exist: no existence oracle.
        missing = uid("s")
        for read in ("get_session", "get_messages", "delete_session"):
            call = getattr(store, read)
            assert await call(session, user_id=bob) == await call(missing, user_id=bob)
        assert await store.get_session(session, user_id=bob) is None
        # A write is refused before anything is published.
        for write in (
            store.upsert_session(session, user_id=bob, title="mine now"),
            store.add_message(session, user_id=bob, role="user", content="bob was here"),
        ):
            with pytest.raises(OwnershipError):
                await write
        assert await store.list_sessions(bob) == []
        assert [m.content for m in await store.get_messages(session, user_id=alice)] == [
            "order #A-1"
        ]

    @in_store
    async def test_a_user_lists_their_own_sessions_most_recent_first(self, store):
        alice, bob = uid("alice"), uid("bob")
        first = await store.create_session(user_id=alice, title="first")
        await asyncio.sleep(0.005)
        second = await store.create_session(user_id=alice, title="second")
        await store.create_session(user_id=bob, title="bob's")
        await asyncio.sleep(0.005)
        await store.add_message(first.session_id, user_id=alice, role="user", content="back")
        listed = await store.list_sessions(alice)
        assert [s.session_id for s in listed] == [first.session_id, second.session_id]
        assert listed[0].message_count == 1
        assert [s.session_id for s in await store.list_sessions(alice, limit=1)] == [
            first.session_id
        ]

    @in_store
    async def test_a_deleted_session_is_gone_and_its_id_is_not_reused(self, store):
        user, session = uid("u"), uid("s")
        await store.create_session(user_id=user, session_id=session, title="to delete")
        await add_numbered(store, session, user, 3)
        assert await store.delete_session(session, user_id=user) is True
        assert await store.get_session(session, user_id=user) is None
        assert await store.get_messages(session, user_id=user) == []
        assert session not in {s.session_id for s in await store.list_sessions(user)}
        assert await store.delete_session(session, user_id=user) is False
        for call in (
            store.create_session(user_id=user, session_id=session),
            store.upsert_session(session, user_id=user, title="again"),
            store.add_message(session, user_id=user, role="user", content="again"),
        ):
            with pytest.raises(SessionExists, match="deleted"):
                await call

    @in_store
    async def test_a_deleted_session_hides_even_its_owner_from_others(self, store):
        # The read rule: an erased session is not found, whoever asks; only its id stays
        # taken, since ids are never reused.
        bob, alice, session = uid("bob"), uid("alice"), uid("s")
        await store.create_session(user_id=bob, session_id=session, title="bob's")
        await store.add_message(session, user_id=bob, role="user", content="order #B-2")
        assert await store.delete_session(session, user_id=bob) is True
        assert await store.get_session(session, user_id=alice) is None
        assert await store.get_messages(session, user_id=alice) == []
        assert await store.delete_session(session, user_id=alice) is False
        for call in (
            store.create_session(user_id=alice, session_id=session),
            store.upsert_session(session, user_id=alice, title="mine now"),
            store.add_message(session, user_id=alice, role="user", content="alice was here"),
        ):
            with pytest.raises(SessionExists, match="deleted"):
                await call

    @in_store
    async def test_bad_input_is_refused_before_anything_is_written(self, store):
        user = uid("u")
        with pytest.raises(InvalidId):
            await store.add_message("bad id", user_id=user, role="user", content="x")
        with pytest.raises(InvalidId):
            await store.get_session("s", user_id="bad:user")
        with pytest.raises(InvalidEvent):
            await store.add_message(uid("s"), user_id=user, role="robot", content="x")
        with pytest.raises(InvalidInput, match="limit"):
            await store.get_messages(uid("s"), user_id=user, limit=0)
        assert await store.list_sessions(user) == []

    @in_store
    async def test_concurrent_sessions_each_keep_only_their_own_messages_in_order(self, store):
        users = {uid("s"): uid("u") for _ in range(20)}

        async def talk(session: str, user: str) -> None:
            for n in range(10):
                await store.add_message(
                    session, user_id=user, role="user", content=f"{session}:{n}"
                )

        await asyncio.gather(*(talk(s, u) for s, u in users.items()))
        for session, user in users.items():
            messages = await store.get_messages(session, user_id=user, limit=None)
            assert [m.content for m in messages] == [f"{session}:{n}" for n in range(10)]


class TestInMemoryConversationStore(ConversationStoreContract):
    @pytest.fixture
    def open_store(self):
        return InMemoryConversationStore


@pytest.fixture(scope="module")
def store_settings(kafka, redis_url):
    """One topic, prefix and projector for the module: tests use ids of their own."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    settings = unique_settings(kafka, redis_url, prefix, window=4, max_overflow=3, partitions=2)
    with running_projector(settings):
        yield settings
    delete_prefix(redis_url, prefix)


def chatlog_store(settings) -> ChatlogConversationStore:
    return ChatlogConversationStore(
        producer=AsyncConversationProducer(wiring.producer(settings, flush_on_sigterm=False)),
        reader=wiring.async_reader(settings),
        log=KafkaSessionLog(
            bootstrap_servers=settings.kafka_bootstrap,
            topic=settings.topic,
            window=settings.window,
            opener=wiring.opener(settings),
        ),
        read_timeout_s=30,
    )


@pytest.mark.integration
class TestChatlogConversationStore(ConversationStoreContract):
    @pytest.fixture
    def open_store(self, store_settings):
        return lambda: chatlog_store(store_settings)

    def test_long_sessions_are_read_from_the_log_while_redis_stays_bounded(self, store_settings):
        alice, bob = uid("alice"), uid("bob")
        mine_id = uid("s")
        # A neighbour on the same partition, written in turns: the log scan must skip it.
        partitions = 2
        neighbour = next(
            s
            for s in (uid("s") for _ in range(1000))
            if partition_for(s, partitions) == partition_for(mine_id, partitions)
        )

        async def main() -> None:
            async with chatlog_store(store_settings) as store:
                mine = []
                for n in range(30):
                    mine.append(
                        await store.add_message(
                            mine_id, user_id=alice, role="user", content=f"a{n}"
                        )
                    )
                    await store.add_message(neighbour, user_id=bob, role="user", content=f"b{n}")
                assert {m.partition for m in mine} == {partition_for(mine_id, partitions)}
                assert await store.get_messages(mine_id, user_id=alice, limit=None) == mine
                page = await store.get_messages(
                    mine_id, user_id=alice, limit=4, before=mine[10].message_id
                )
                assert page == mine[6:10]
                # Redact an old message, long gone from Redis: the log read shows it redacted.
                redaction = new_event(
                    mine_id, user_id=alice, payload=MessageRedacted(message_id=mine[2].message_id)
                )
                position = await store.producer.publish(redaction)
                store.positions.note((store.log.topic, mine_id), position)
                old = await store.get_messages(
                    mine_id, user_id=alice, limit=3, after=mine[1].message_id
                )
                assert [(m.content, m.redacted) for m in old] == [
                    ("[redacted]", True),
                    ("a3", False),
                    ("a4", False),
                ]
                # A page among the recent messages never touches Kafka.
                store.log.page = None  # any log read would now fail
                assert await store.get_messages(mine_id, user_id=alice, limit=3) == mine[-3:]
                assert (await store.get_session(mine_id, user_id=alice)).message_count == 30

        asyncio.run(main())
        client = redis.Redis.from_url(store_settings.redis_url)
        try:
            keys = KeySpace(store_settings.redis_prefix, DEFAULT_GENERATION)
            bound = store_settings.window + store_settings.max_overflow
            assert client.llen(keys.messages(mine_id)) == bound
        finally:
            client.close()

    def test_a_store_from_settings_reads_its_own_writes(self, store_settings):
        async def main() -> None:
            async with ChatlogConversationStore.from_settings(store_settings) as store:
                user, session = uid("u"), uid("s")
                await store.add_message(session, user_id=user, role="user", content="hi")
                assert [m.content for m in await store.get_messages(session, user_id=user)] == [
                    "hi"
                ]
                # Session metadata goes to the log; the read-model keeps only the title.
                started = new_event(
                    session, user_id=user, payload=SessionStarted(title="t", metadata={"k": "v"})
                )
                store.positions.note(
                    (store.log.topic, session), await store.producer.publish(started)
                )
                assert (await store.get_session(session, user_id=user)).title == "t"

        asyncio.run(main())
