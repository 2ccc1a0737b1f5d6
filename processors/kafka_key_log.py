"""Reading the `chatlog.keys` topic: the key directory caught up from it, and rotation.

Why catch up? The directory in Redis (`chatlog.projections.redis_keys`) is a copy,
written through by the writer that makes a key and by an erasure; the topic is the
durable record. When Redis loses the directory (a flush, a restart without persistence)
or a write-through was lost, reading the topic from its start puts every key back, and
every erasure: it is compacted, so it holds about one record per key and per erased
user, whatever its age.

How: a consumer that joins no group reads every partition from offset 0 up to the end
it had when the read began, in each partition's order. `catch_up_keys` applies each
record: a key is put (refused if its user is erased), a tombstone removes its key, an
erasure record removes every key of the user and marks them erased. Applying is
idempotent, and the order between partitions does not matter: a key and its tombstone
share a partition, and whichever of a key and its user's erasure comes first, the user
ends up erased with no key. A projector's tick (`KeysTick`, there only to make the
broker roll segments) is skipped and counted. A record that is not a keys record is
logged and skipped: it names no key a reader could need.

`rotate_keys` re-wraps every live data key under the current master key and publishes
it under the same Kafka key, so compaction drops the old wrapping; the events are not
touched (they are sealed with the data keys, which do not change). Once compaction has
run (within `CHATLOG_KEY_SHRED_WITHIN`), the old master key opens nothing and can be
destroyed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from confluent_kafka import TopicPartition

from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.processors.kafka_history import kafka_call, ranges_records
from chatlog.producers.kafka_topics import topic_partitions
from chatlog.schemas.errors import DecodeError
from chatlog.schemas.key_records import ErasureRecord, KeyRecord, KeysTick, decode_key_record
from chatlog.schemas.keyring import KeyLog, Keyring
from chatlog.schemas.master_keys import wrap_data_key
from chatlog.schemas.sealing import KeyScope

__all__ = ["KeysCaughtUp", "KeysRotated", "catch_up_keys", "read_key_log", "rotate_keys"]

log = logging.getLogger("chatlog.keys")


class WritableKeyDirectory(Protocol):
    """What a catch-up writes to (`RedisKeyDirectory`)."""

    def put(self, record: KeyRecord) -> bool:
        """Add `record`; False if its user was erased."""
        ...

    def remove(self, scope: KeyScope, key_id: str) -> None:
        """Drop one key."""
        ...

    def erase(self, record: ErasureRecord) -> tuple[str, ...]:
        """Remove every key of the user and mark them erased; the key ids removed."""
        ...


@dataclass(frozen=True, slots=True)
class KeysCaughtUp:
    """What one catch-up applied."""

    keys: int = 0
    refused: int = 0  # keys of users erased meanwhile
    tombstones: int = 0
    erasures: int = 0
    ticks: int = 0  # projectors' ticks (`KeysTick`): nothing to apply
    skipped: int = 0  # records that are not keys records
    shredded: int = 0  # tombstones published for erased users' keys still alive here
    seconds: float = 0.0


def catch_up_keys(
    directory: WritableKeyDirectory,
    *,
    bootstrap_servers: str,
    topic: str,
    config: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
    key_log: KeyLog | None = None,
) -> KeysCaughtUp:
    """Apply the whole keys topic, as it is now, to `directory`.

    With `key_log`, a key of an erased user that the topic still holds alive (made by a
    writer that could not reach Redis, or missed by an erasure) gets its tombstone, so
    that compaction takes it off the disks.
    """
    started = time.monotonic()
    counts = dict.fromkeys(
        ("keys", "refused", "tombstones", "erasures", "ticks", "skipped", "shredded"), 0
    )
    for key, value in read_key_log(
        bootstrap_servers=bootstrap_servers, topic=topic, config=config, timeout=timeout
    ):
        _apply(directory, key, value, counts, key_log)
    caught_up = KeysCaughtUp(**counts, seconds=time.monotonic() - started)
    log.info("key directory caught up with %s: %s", topic, caught_up)
    return caught_up


@dataclass(frozen=True, slots=True)
class KeysRotated:
    """What one rotation did."""

    rewrapped: int = 0
    current: int = 0  # already wrapped under the current master key
    erased: int = 0  # keys of erased users: left to their tombstones
    seconds: float = 0.0


def rotate_keys(
    keyring: Keyring,
    directory: WritableKeyDirectory,
    key_log: KeyLog,
    *,
    bootstrap_servers: str,
    topic: str,
    config: Mapping[str, Any] | None = None,
    timeout: float = 300.0,
) -> KeysRotated:
    """Re-wrap every live data key in the topic under the keyring's current master key."""
    started = time.monotonic()
    latest: dict[bytes, bytes | None] = {}
    for key, value in read_key_log(
        bootstrap_servers=bootstrap_servers, topic=topic, config=config, timeout=timeout
    ):
        latest[key] = value  # compaction's own rule: the last record of a key is the one
    current = keyring.provider.current
    counts = dict.fromkeys(("rewrapped", "current", "erased"), 0)
    for key, value in latest.items():
        try:
            record = decode_key_record(key, value)
        except DecodeError:
            continue  # logged by the catch-up; nothing to re-wrap
        if not isinstance(record, KeyRecord):
            continue  # tombstones, erasures and ticks: nothing wrapped
        if record.wrapped.kek_id == current:
            # Written to the directory again too: a catch-up that overlapped an earlier
            # rotation may have put the old wrapping back there. Running the rotation
            # once more before destroying the old master key repairs that.
            directory.put(record)
            counts["current"] += 1
            continue
        data_key = keyring.for_reading(record.scope, record.key_id, record.wrapped)
        rewrapped = replace(record, wrapped=wrap_data_key(keyring.provider, data_key))
        # The directory first: it refuses an erased user, whose key must not be written
        # to the topic again; a user erased between the two steps gets the tombstone back.
        if not directory.put(rewrapped):
            # Erased, yet its last record here is alive: its tombstone was missed.
            key_log.publish_tombstone(record.scope, record.key_id)
            counts["erased"] += 1
            continue
        key_log.publish_key(rewrapped)
        if not directory.put(rewrapped):
            key_log.publish_tombstone(record.scope, record.key_id)
            counts["erased"] += 1
            continue
        counts["rewrapped"] += 1
    rotated = KeysRotated(**counts, seconds=time.monotonic() - started)
    log.info("keys in %s re-wrapped under master key %s: %s", topic, current, rotated)
    return rotated


def _shred(
    key_log: KeyLog | None, scope: KeyScope, key_ids: tuple[str, ...], counts: dict[str, int]
) -> None:
    """Tombstone keys of an erased user that the topic still holds alive (if it may)."""
    if key_log is None:
        return
    for key_id in key_ids:
        key_log.publish_tombstone(scope, key_id)
        counts["shredded"] += 1


def read_key_log(
    *,
    bootstrap_servers: str,
    topic: str,
    config: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
) -> Iterator[tuple[bytes, bytes | None]]:
    """Every record of the keys topic, from its start to its end when the read began, as
    ``(key, value)``, each partition in order; `timeout` bounds a stall of the read."""
    consumer = groupless_consumer(bootstrap_servers, config, purpose="keys")
    try:
        count = topic_partitions(consumer, topic, bootstrap_servers=bootstrap_servers)
        ranges = {
            partition: kafka_call(
                consumer.get_watermark_offsets, TopicPartition(topic, partition), timeout=10
            )
            for partition in range(count)
        }
        # Every partition at once (one by one, each waited for its first fetch: 5 s for
        # six); by position, since compaction leaves gaps before the end.
        for message in ranges_records(consumer, topic, ranges, timeout):
            yield message.key() or b"", message.value()
    finally:
        consumer.close()


def _apply(
    directory: WritableKeyDirectory,
    key: bytes,
    value: bytes | None,
    counts: dict[str, int],
    key_log: KeyLog | None,
) -> None:
    try:
        record = decode_key_record(key, value)
    except DecodeError as exc:
        log.warning("skipped a record of the keys topic: %s", exc.message)
        counts["skipped"] += 1
        return
    if isinstance(record, KeyRecord):
        if directory.put(record):
            counts["keys"] += 1
            return
        counts["refused"] += 1
        _shred(key_log, record.scope, (record.key_id,), counts)
    elif isinstance(record, ErasureRecord):
        removed = directory.erase(record)
        counts["erasures"] += 1
        _shred(key_log, record.scope, tuple(set(removed) - set(record.key_ids)), counts)
    elif isinstance(record, KeysTick):
        counts["ticks"] += 1
    else:
        scope, key_id = record
        directory.remove(scope, key_id)
        counts["tombstones"] += 1
