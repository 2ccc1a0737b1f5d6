"""Support chats as the demo runs them: the projector and the offline summarizer together.

Real Kafka and Redis, `chatlog run projector` and `chatlog run summarizer` as processes
with the default (extractive, no LLM) summarizer, as `make demo` runs them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from chatlog import wiring
from chatlog.client import AsyncChatLog, ChatLog
from chatlog.producers.kafka_producer import AsyncConversationProducer
from chatlog.settings import Settings
from tests.processes import running_processor, unique_settings

pytestmark = pytest.mark.integration

WINDOW = 20
THRESHOLD = 10


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


def test_start_session_titles_a_session_and_retitles_it(running):
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
