"""The key directory, projected again from the `chatlog.keys` topic.

Why? The directory in Redis (`chatlog.projections.redis_keys`) is a copy, written through
by the writer that makes a key and by an erasure; the topic is the durable record. When
Redis loses the directory (a flush, a restart without persistence) or a write-through
was lost, reading the topic from its start puts every key back, and every erasure: it is
compacted, so it holds about one record per key and per erased user, whatever its age.

How: a consumer that joins no group reads every partition from offset 0 up to the end
it had when the catch-up began (`catch_up`), applying each record in its partition's
order: a key is put (refused if its user is erased), a tombstone removes its key, an
erasure record removes every key of the user and marks them erased. Applying is
idempotent, and the order between partitions does not matter: a key and its tombstone
share a partition, and whichever of a key and its user's erasure comes first, the user
ends up erased with no key. A record that is not a keys record is logged and skipped:
it names no key a reader could need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.processors.kafka_history import kafka_call
from chatlog.producers.kafka_topics import topic_partitions
from chatlog.schemas.errors import BrokerUnavailable, DecodeError
from chatlog.schemas.key_records import ErasureRecord, KeyRecord, decode_key_record
from chatlog.schemas.sealing import KeyScope

__all__ = ["KeysCaughtUp", "catch_up_keys"]

log = logging.getLogger("chatlog.keys")


class WritableKeyDirectory(Protocol):
    """What a catch-up writes to (`RedisKeyDirectory`)."""

    def put(self, record: KeyRecord) -> bool:
        """Add `record`; False if its user was erased."""
        ...

    def remove(self, scope: KeyScope, key_id: str) -> None:
        """Drop one key."""
        ...

    def erase(self, record: ErasureRecord) -> None:
        """Remove every key of the user and mark them erased."""
        ...


@dataclass(frozen=True, slots=True)
class KeysCaughtUp:
    """What one catch-up applied."""

    keys: int = 0
    refused: int = 0  # keys of users erased meanwhile
    tombstones: int = 0
    erasures: int = 0
    skipped: int = 0  # records that are not keys records
    seconds: float = 0.0


def catch_up_keys(
    directory: WritableKeyDirectory,
    *,
    bootstrap_servers: str,
    topic: str,
    config: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
) -> KeysCaughtUp:
    """Apply the whole keys topic, as it is now, to `directory`."""
    started = time.monotonic()
    consumer = groupless_consumer(bootstrap_servers, config, purpose="keys")
    try:
        count = topic_partitions(consumer, topic, bootstrap_servers=bootstrap_servers)
        ends: dict[int, int] = {}
        for partition in range(count):
            low, high = kafka_call(
                consumer.get_watermark_offsets, TopicPartition(topic, partition), timeout=10
            )
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        counts = dict.fromkeys(("keys", "refused", "tombstones", "erasures", "skipped"), 0)
        deadline = started + timeout
        while ends:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"the keys topic {topic!r} was not read to its end within {timeout:g} s "
                    f"({len(ends)} partitions left)",
                    topic=topic,
                )
            for message in kafka_call(consumer.consume, 1000, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.fatal() or not error.retriable():
                        raise BrokerUnavailable(f"reading {topic} failed: {error.str()}")
                    continue
                if message.partition() in ends:
                    _apply(directory, message.key() or b"", message.value(), counts)
            # By position, not by the last offset seen: compaction leaves gaps, and the
            # record before the end may be gone.
            positions = consumer.position([TopicPartition(topic, p) for p in ends])
            for tp in positions:
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
    finally:
        consumer.close()
    caught_up = KeysCaughtUp(**counts, seconds=time.monotonic() - started)
    log.info("key directory caught up with %s: %s", topic, caught_up)
    return caught_up


def _apply(
    directory: WritableKeyDirectory, key: bytes, value: bytes | None, counts: dict[str, int]
) -> None:
    try:
        record = decode_key_record(key, value)
    except DecodeError as exc:
        log.warning("skipped a record of the keys topic: %s", exc.message)
        counts["skipped"] += 1
        return
    if isinstance(record, KeyRecord):
        counts["keys" if directory.put(record) else "refused"] += 1
    elif isinstance(record, ErasureRecord):
        directory.erase(record)
        counts["erasures"] += 1
    else:
        scope, key_id = record
        directory.remove(scope, key_id)
        counts["tombstones"] += 1
