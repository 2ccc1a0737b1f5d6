"""The session's events read back from the log as the projector sees them, against the real
broker: for the summarizer's rebuild of a withheld summary (`KafkaHistory.session_events`)
and for reads of the past (`as_of`). An erased intruder's event is left out, as the
projector leaves it out; only the owner's erasure makes the session unreadable."""

from __future__ import annotations

import pytest

from chatlog import wiring
from chatlog.client import ChatLog
from chatlog.schemas.errors import Erased
from chatlog.schemas.events import MessageAppended
from tests.processes import running_projector, unique_settings

pytestmark = pytest.mark.integration


def test_an_erased_intruder_leaves_the_owners_session_readable_and_rebuildable(
    kafka, redis_url, redis_prefix
):
    settings = unique_settings(kafka, redis_url, redis_prefix, partitions=1)
    producer = wiring.producer(settings, flush_on_sigterm=False)
    reader = wiring.reader(settings)
    chat = ChatLog(
        producer=producer,
        reader=reader,
        history=wiring.kafka_history(settings),
        eraser=wiring.eraser(settings, producer, reader.client),
    )
    history = wiring.kafka_history(settings)
    try:
        with running_projector(settings):
            chat.append("ann-1", user_id="ann", role="user", content="hello")
            # Another user writing into ann's session, past the client's claim check (a raw
            # producer): the projector refuses it, the log keeps it.
            chat.producer.append("ann-1", user_id="mallory", role="user", content="intruding")
            last = chat.append("ann-1", user_id="ann", role="user", content="more")
            chat.context("ann-1", user_id="ann", after=last)
            chat.erase_user("mallory")

            events, through = history.session_events("ann-1", partition=0, start=0)
            contents = [
                e.payload.content for e, _ in events if isinstance(e.payload, MessageAppended)
            ]
            assert contents == ["hello", "more"]
            assert through == last.offset
            past = chat.context("ann-1", user_id="ann", as_of=last)
            assert [m.content for m in past.messages] == ["hello", "more"]

            # The owner erased: the session can be neither rebuilt nor read as it was.
            chat.erase_user("ann")
            with pytest.raises(Erased):
                history.session_events("ann-1", partition=0, start=0)
            with pytest.raises(Erased):
                chat.context("ann-1", user_id="ann", as_of=last)
    finally:
        chat.close()
