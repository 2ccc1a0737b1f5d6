"""Kafka consumers: the one builder of those that join no group, and what every consumer
of the events topic turns a consumed message into (`record_of`).

Which readers are these? Every reader of the log that picks its partitions and offsets
itself: the point-in-time read, the conversation store's page beyond the window,
`chatlog tail`, and the replay. None of them subscribes, so none joins a consumer
group, and none commits: where they start is decided by their caller (a watermark, a
progress mark, a session's first offset), never by offsets stored at the broker. The
projector, which does belong to a group, builds its own consumer.

What they share, and so what is written here only: librdkafka insists on a group id, so
each consumer gets a throwaway one nothing is ever committed under; offsets are neither
committed nor stored; an assigned offset that is out of range falls back to the
partition's start, never its end, so a reader never silently skips records; the end of a
read is known from watermarks and positions, so no end-of-partition events are wanted;
and librdkafka logs through the ``chatlog.kafka`` logger. Invalid settings are a
`ConfigError` naming them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from chatlog.processors.projection import Record
from chatlog.processors.projector_coalescing import Coalescing
from chatlog.producers.kafka_access import broker_refusal
from chatlog.schemas.errors import BrokerUnavailable, ConfigError

__all__ = ["groupless_consumer", "poll_batch", "record_of"]

_KAFKA_LOG = logging.getLogger("chatlog.kafka")
log = logging.getLogger("chatlog.consumer")


def groupless_consumer(
    bootstrap_servers: str,
    config: Mapping[str, Any] | None = None,
    *,
    purpose: str,
    tuning: Mapping[str, Any] | None = None,
) -> Consumer:
    """A consumer for `assign()` that joins no group and commits nothing.

    `config` is the user's librdkafka settings (``CHATLOG_KAFKA_*``); `tuning` is the
    caller's own (fetch sizes, say) and wins over `config`; the settings that make the
    consumer groupless win over both. `purpose` names it in its throwaway group id.
    """
    try:
        return Consumer(
            {
                **(config or {}),
                **(tuning or {}),
                "bootstrap.servers": bootstrap_servers,
                "group.id": f"chatlog-{purpose}-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "logger": _KAFKA_LOG,
            }
        )
    except (KafkaException, ValueError) as exc:
        raise ConfigError(f"invalid Kafka consumer settings: {exc}") from exc


def poll_batch(
    consumer: Consumer, batch_size: int, timeout: float, *, coalescing: Coalescing | None = None
) -> list[Message]:
    """Up to `batch_size` messages: waits up to `timeout` for the first only, then takes
    whatever else is fetched already (consume(n, timeout) would hold a lone event until
    the timeout ran out). A group member's batch (the projector's, the embedder's).

    With `coalescing`, a small batch is held for the records on their way, as long as it
    says (`chatlog.processors.projector_coalescing`): the projector's live batches."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    batch = [first, *consumer.consume(batch_size - 1, timeout=0)]
    if coalescing is None:
        return batch
    hold = coalescing.hold(len(batch), time.monotonic())
    if hold > 0:
        # Returns once the target is in hand, or when the hold is over.
        wanted = min(coalescing.target, batch_size) - len(batch)
        batch += consumer.consume(wanted, timeout=hold)
    coalescing.taken(len(batch), time.monotonic())
    return batch


def record_of(message: Message, topic: str) -> Record | None:
    """A consumed message as a `Record`; None for an event that is not a record.

    A refused password or certificate raises `ConfigError`; a fatal or permanent consumer
    error `BrokerUnavailable`; a transient one is logged and skipped (librdkafka retries
    it).
    """
    error = message.error()
    if error is not None:
        if error.code() == KafkaError._PARTITION_EOF:
            return None
        refusal = broker_refusal(error)  # a password or certificate to fix, not an outage
        if refusal is not None:
            raise refusal
        if error.fatal() or not error.retriable():
            raise BrokerUnavailable(f"consuming {topic} failed: {error.str()}")
        log.warning("consumer: %s", error.str())
        return None
    return Record(
        topic=message.topic() or topic,
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=message.key(),
        value=message.value(),
    )
