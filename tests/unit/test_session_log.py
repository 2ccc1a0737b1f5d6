"""`KafkaHistory.session_events`, what the summarizer rebuilds a withheld summary from,
against a stand-in for the partition's records (no broker)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chatlog.processors import kafka_history
from chatlog.processors.kafka_history import KafkaHistory
from chatlog.producers.commands import append_message
from chatlog.projections.opening import EventOpener
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import Erased
from chatlog.schemas.events import ConversationEvent
from chatlog.schemas.key_records import ErasureRecord
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.master_keys import LocalKeyProvider, new_master_key
from chatlog.schemas.sealing import KeyScope, seal_event
from tests.key_fakes import MemoryKeyDirectory, MemoryKeyLog

PROVIDER = LocalKeyProvider.from_spec(new_master_key("k1"))


class _Record:
    def __init__(self, offset: int, event: ConversationEvent) -> None:
        self._offset, self._event = offset, event

    def key(self) -> bytes:
        return self._event.session_id.encode()

    def value(self) -> bytes:
        return EventCodec().encode(self._event)

    def offset(self) -> int:
        return self._offset


class _Consumer:
    def get_watermark_offsets(self, *args: object, **kwargs: object) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def log(monkeypatch):
    """The session's partition, as a list of events the stand-in consumer reads."""
    events: list[ConversationEvent] = []
    monkeypatch.setattr(kafka_history, "groupless_consumer", lambda *a, **k: _Consumer())
    monkeypatch.setattr(kafka_history, "kafka_call", lambda *a, **k: (0, len(events)))
    monkeypatch.setattr(
        kafka_history,
        "partition_records",
        lambda consumer, where, start, stop, timeout: (
            _Record(n, e) for n, e in enumerate(events) if start <= n < stop
        ),
    )
    return events


def test_an_erased_intruder_does_not_make_the_owners_session_erased(log):
    """Another user's event in the session is refused by the fold, as the projector
    refuses it; that user's erasure must not stop the owner's summaries for good."""
    directory = MemoryKeyDirectory()
    writer = Keyring(PROVIDER, log=MemoryKeyLog(), directory=directory)

    def sealed(user: str, text: str) -> ConversationEvent:
        event = append_message("ann-1", user_id=user, role="user", content=text)
        return seal_event(event, writer.for_writing(KeyScope.of(event)))

    log += [sealed("ann", "hello"), sealed("mallory", "intruding"), sealed("ann", "more")]
    directory.erase(ErasureRecord(KeyScope("default", "mallory"), datetime.now(UTC), ()))
    history = KafkaHistory(
        bootstrap_servers="unused:9092",
        topic="events",
        opener=EventOpener(Keyring(PROVIDER, directory=directory), directory),
    )
    events, through = history.session_events("ann-1", partition=0, start=0)
    assert [e.payload.content for e, _ in events] == ["hello", "more"]
    assert through == 2

    # The owner erased: the session's events are gone for good.
    directory.erase(ErasureRecord(KeyScope("default", "ann"), datetime.now(UTC), ()))
    with pytest.raises(Erased):
        history.session_events("ann-1", partition=0, start=0)
