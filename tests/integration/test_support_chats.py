"""Support chats as the demo runs them: the projector and the offline summarizer together.

Real Kafka and Redis, `chatlog run projector` and `chatlog run summarizer` as processes
with the default (extractive, no LLM) summarizer, as `make demo` runs them. What the demo
used to check on every run is asserted here: concurrent chats that call tools never show
another session's order number (summaries included) and list only their owner's
sessions; a long chat appended turn by turn is summarized with every turn accounted for
exactly once. Read-your-writes for every append is `test_projection.py`'s.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import redis

from chatlog import __version__, wiring
from chatlog.client import AsyncChatLog, ChatLog
from chatlog.producers.kafka_producer import AsyncConversationProducer
from chatlog.projections.context import Context
from chatlog.schemas.events import ConversationEvent, MessageAppended, SummaryUpdated
from chatlog.schemas.position import Position
from chatlog.settings import Settings
from tests.processes import (
    log_events,
    opened,
    running_processor,
    unique_settings,
    wait_until,
)

pytestmark = pytest.mark.integration

WINDOW = 20
THRESHOLD = 10
ORDER = re.compile(r"#T[0-9]{4}")


@dataclass(frozen=True)
class Running:
    """Settings whose projector and summarizer run for the module, and a client on them."""

    settings: Settings
    log: ChatLog


@pytest.fixture(scope="module")
def running(kafka, redis_url, tmp_path_factory) -> Iterator[Running]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    settings = unique_settings(
        kafka,
        redis_url,
        prefix,
        window=WINDOW,
        summary_threshold=THRESHOLD,
        summarizer_group=f"summarizer-{uuid.uuid4().hex[:8]}",
    )
    logs = tmp_path_factory.mktemp("support-chats")
    log = ChatLog(
        producer=wiring.producer(settings, flush_on_sigterm=False),
        reader=wiring.reader(settings),
        read_timeout_s=30,
    )
    try:
        with (
            running_processor("projector", settings, log=logs / "projector.log"),
            running_processor("summarizer", settings, log=logs / "summarizer.log"),
        ):
            yield Running(settings, log)
    finally:
        log.close()
        client = redis.Redis.from_url(redis_url)
        try:
            for key in client.scan_iter(f"{prefix}*", count=1000):
                client.unlink(key)
        finally:
            client.close()


@dataclass(frozen=True)
class Chat:
    session_id: str
    user_id: str
    order: str
    turns: tuple[dict[str, object], ...]


def support_chat(number: int, rng: random.Random) -> Chat:
    """A chat about order #T<number>, with a tool call; a third run past the window."""
    order = f"#T{number:04d}"
    call_id = f"call_{number}"
    turns: list[dict[str, object]] = [
        {"role": "user", "content": f"Where is my order {order}?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": call_id, "name": "lookup_order", "arguments": json.dumps({"order": order})}
            ],
        },
        {
            "role": "tool",
            "content": f'{{"order": "{order}", "eta_days": 2}}',
            "tool_call_id": call_id,
        },
    ]
    pairs = rng.randint(12, 20) if number % 3 == 0 else rng.randint(1, 5)
    for n in range(pairs):
        turns.append({"role": "assistant", "content": f"Order {order} update {n}."})
        turns.append({"role": "user", "content": f"Thanks, and then ({n})?"})
    return Chat(f"s-{uuid.uuid4().hex[:10]}", f"user{number % 7}", order, tuple(turns))


def orders_in(ctx: Context) -> set[str]:
    """Every order number the context shows: messages, tool-call arguments, summary."""
    text = [m.content for m in ctx.messages]
    text += [c.arguments for m in ctx.messages for c in m.tool_calls]
    text.append(ctx.summary or "")
    return set(ORDER.findall(" ".join(text)))


def test_concurrent_chats_with_tool_calls_each_show_only_their_own_order(running):
    log = running.log
    rng = random.Random(7)
    chats = [support_chat(number, rng) for number in range(60)]

    def publish(chat: Chat) -> Position:
        log.start_session(chat.session_id, user_id=chat.user_id, title=f"About {chat.order}")
        for turn in chat.turns:
            position = log.append(chat.session_id, user_id=chat.user_id, **turn)
        return position

    with ThreadPoolExecutor(max_workers=8) as pool:
        last = dict(zip([c.session_id for c in chats], pool.map(publish, chats), strict=True))

    for chat in chats:
        ctx = log.context(chat.session_id, user_id=chat.user_id, after=last[chat.session_id])
        contents = [t["content"] for t in chat.turns]
        held = [m.content for m in ctx.messages]
        assert (ctx.user_id, ctx.title) == (chat.user_id, f"About {chat.order}")
        assert ctx.message_count == len(chat.turns)
        assert held == contents[len(contents) - len(held) :]
        assert orders_in(ctx) == {chat.order}

    # Summaries are written from the session's own turns only.
    due = [c for c in chats if len(c.turns) - WINDOW >= THRESHOLD]
    assert due

    def summarized() -> bool:
        return all(log.context(c.session_id, user_id=c.user_id).summary for c in due)

    wait_until(summarized, timeout=60, what="a summary of every chat past the window")
    for chat in due:
        ctx = log.context(chat.session_id, user_id=chat.user_id)
        assert orders_in(ctx) == {chat.order}, ctx.summary

    for user in {c.user_id for c in chats}:
        own = {c.session_id: f"About {c.order}" for c in chats if c.user_id == user}
        listed = {e.session_id: e.title for e in log.sessions(user, limit=100)}
        assert listed == own


def session_events(
    kafka, settings: Settings, session_id: str
) -> list[tuple[int, ConversationEvent]]:
    """(offset, event) of the session's events in the log, in order."""
    return [(o, e) for o, e in log_events(kafka, settings) if e.session_id == session_id]


def test_a_long_chat_appended_turn_by_turn_accounts_for_every_turn_once(running, kafka):
    log, settings = running.log, running.settings
    session, user = f"s-{uuid.uuid4().hex[:10]}", "hannah"
    # Each turn names a part number, which the extractive summary keeps as a fact.
    turns = [f"Turn {n}: we will send part #P{n:04d}." for n in range(127)]
    visits = [44, 34, 20, 29]  # the demo's: four visits, each past a threshold of overflow
    policy = wiring.policy(settings)
    store = wiring.live_store(settings)
    sent = 0
    for size in visits:
        for content in turns[sent : sent + size]:
            role = "user" if sent % 2 == 0 else "assistant"
            position = log.append(session, user_id=user, role=role, content=content)
            sent += 1
        # Read-your-writes while the summarizer writes into the same topic.
        ctx = log.context(session, user_id=user, after=position)
        assert (ctx.messages[-1].content, ctx.messages[-1].offset) == (
            turns[sent - 1],
            position.offset,
        )

        # Final once below the threshold: no summary is asked for, none is in flight.
        def folded() -> bool:
            view = store.load([session])[session]
            return view is not None and len(view.overflow(policy)) < THRESHOLD

        wait_until(folded, timeout=60, what=f"the overflow after {sent} turns to be summarized")

    view = opened(settings, store.load([session])[session])
    assert view is not None
    held = [m.content for m in view.messages]
    covered = view.summary_covered
    assert view.message_count == len(turns)
    assert view.overflow_dropped == 0
    # The oldest turns are in the summary, the newest held in full, none in both.
    assert covered + len(held) == len(turns)
    assert held == turns[covered:]
    assert all(m.offset > view.summary_through for m in view.messages)
    assert view.summary

    logged = session_events(kafka, settings, session)
    events = [(o, e.payload) for o, e in logged]
    appended = [o for o, p in events if isinstance(p, MessageAppended)]
    summaries = [(o, p) for o, p in events if isinstance(p, SummaryUpdated)]
    assert len(summaries) >= len(visits)
    # Each event says which client wrote it, at the installed version.
    writers = {(e.producer.client, e.producer.version) for _, e in logged}
    assert writers == {("chatlog-python", __version__), ("chatlog-summarizer", __version__)}
    # The summary covers exactly the turns logged up to its offset, each once.
    assert covered == sum(o <= view.summary_through for o in appended)
    newest = max((p for _, p in summaries), key=lambda p: p.through_offset)
    assert (newest.summary, newest.through_offset, newest.covered_messages) == (
        view.summary,
        view.summary_through,
        covered,
    )


def test_start_session_titles_a_session_and_retitles_it(running, kafka):
    log, settings = running.log, running.settings
    session, user = f"s-{uuid.uuid4().hex[:10]}", "ines"
    log.start_session(session, user_id=user, title="Order #T9001")
    position = log.append(session, user_id=user, role="user", content="Hello")
    assert log.context(session, user_id=user, after=position).title == "Order #T9001"

    async def retitle() -> tuple[str | None, str | None]:
        async with AsyncChatLog(
            producer=AsyncConversationProducer(wiring.producer(settings, flush_on_sigterm=False)),
            reader=wiring.async_reader(settings),
            read_timeout_s=30,
        ) as async_log:
            renamed = await async_log.start_session(session, user_id=user, title="Refund")
            first = await async_log.context(session, user_id=user, after=renamed)
            kept = await async_log.start_session(session, user_id=user)
            second = await async_log.context(session, user_id=user, after=kept)
            return first.title, second.title

    assert asyncio.run(retitle()) == ("Refund", "Refund")
    assert [e.title for e in log.sessions(user)] == ["Refund"]
    logged = [e for _, e in session_events(kafka, settings, session)]
    assert [type(e.payload).__name__ for e in logged] == [
        "SessionStarted",
        "MessageAppended",
        "SessionStarted",
        "SessionStarted",
    ]
    assert {(e.producer.client, e.producer.version) for e in logged} == {
        ("chatlog-python", __version__)
    }
