"""Reading one session's older messages straight from its partition of the events topic.

The read-model keeps a session's recent messages only (the window and the unsummarized
overflow), so Redis stays bounded; the log keeps all of them. `KafkaSessionLog.page`
reads the session's partition from the session's first event to the last event the
read-model has applied, and folds the session's records into one page (`LogPage`).

What it costs: every record of the partition in that range is fetched, whichever
session it belongs to; only the session's own records (matched by key) are decoded.
So the cost grows with the partition's traffic over the session's life, not with the
session's size: a session that lived for an hour on a partition taking 100 events a
second means 360,000 records fetched. Measured against a local broker: 200,000 records
(~300-byte events) in 1.2 s, 10,000 in 30 ms, a short scan in a few ms. The scan uses a
short-lived consumer that joins no group and commits nothing
(`chatlog.processors.kafka_consumer`). Blocking: asyncio callers run it in a thread.
"""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import TopicPartition

from chatlog.integrations.conversations import LogPage, Page
from chatlog.processors.kafka_consumer import groupless_consumer

# The point-in-time reader's scan and its handling of librdkafka's errors.
from chatlog.processors.kafka_history import kafka_call, partition_records
from chatlog.projections.opening import EventOpener
from chatlog.projections.view import DEFAULT_POLICY
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import DecodeError
from chatlog.schemas.events import ConversationEvent
from chatlog.schemas.keyring import KeyEntries
from chatlog.schemas.sealing import KeyScope

__all__ = ["KafkaSessionLog"]


class KafkaSessionLog:
    """Pages of a session's messages, read from the events topic."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        codec: EventCodec | None = None,
        config: Mapping[str, str] | None = None,
        window: int = DEFAULT_POLICY.window,
        timeout: float = 10.0,
        opener: EventOpener | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        # Opens sealed events; without one their fields read as empty placeholders.
        self.opener = opener
        self.codec = codec or EventCodec()
        self.config = dict(config or {})
        self.window = window
        self.timeout = timeout

    def page(
        self, session_id: str, page: Page, *, partition: int, first_offset: int, last_offset: int
    ) -> LogPage:
        """The session's events on `partition` from `first_offset` (-1: the partition's
        start) through `last_offset`, folded into `page`."""
        fold = LogPage(session_id, page, window=self.window)
        key = session_id.encode("utf-8")
        known: dict[KeyScope, KeyEntries] = {}  # the owner's keys, fetched once
        consumer = groupless_consumer(self.bootstrap_servers, self.config, purpose="session-log")
        try:
            where = TopicPartition(self.topic, partition)
            start = first_offset
            if start < 0:
                start, _ = kafka_call(consumer.get_watermark_offsets, where, timeout=self.timeout)
            for record in partition_records(consumer, where, start, last_offset + 1, self.timeout):
                if record.key() != key:
                    continue
                value = record.value()
                try:
                    event = self.codec.decode(value) if value is not None else None
                except DecodeError:
                    event = None  # dead-lettered by the projector: never part of a view
                if event is not None and self.opener is not None:
                    [opened] = self.opener.open_batch([event], known=known)
                    # Erased or undecryptable: the projector never made it part of a view.
                    event = opened if isinstance(opened, ConversationEvent) else None
                offset = record.offset()
                if event is not None and offset is not None:
                    fold.take(event, offset)
        finally:
            consumer.close()
        return fold
