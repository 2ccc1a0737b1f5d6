"""The `chatlog.audit` topic: a chain-keeping writer and a reader that verifies the chains.

How do writers in many processes keep one chain per partition without forking it? The
Kafka way: a partition has one transactional id, ``chatlog-audit-<topic>-<partition>``, so
at most one producer of it can commit at a time. A writer

1. calls `init_transactions`, which fences every other producer of that id (their next
   commit fails) and waits until a transaction they had under way is committed or aborted;
2. reads the partition's last committed record (a read_committed consumer) and hashes it:
   that is the `prev_hash` of its first record, and nobody else can append meanwhile;
3. appends in a transaction (begin, produce, commit), and keeps the hash of what it
   wrote, so later appends cost one transaction and no read.

A writer that was fenced (another process wrote since) gets a fatal error at its next
commit, which aborts its records: it opens a new producer, reads the last record again
and retries. So two writers alternate on a partition at the cost of a re-read each time,
and never both chain to the same record.

Which partition? Each writer picks one at random when it first writes and keeps it: a
process holds one producer, and processes spread over the partitions, so in steady state
a record costs one transaction (the measured figures are in docs/privacy.md). Records are
not partitioned by user: listing a user's records reads every partition anyway (their
pseudonym changes with the master key), and every record carries its time.

The reader (`read_audit`) reads every partition up to its end, read_committed, verifies
each chain (`chatlog.schemas.audit.verify_partition`) and decodes the records.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.processors.kafka_history import kafka_call, ranges_records, usable
from chatlog.producers.kafka_topics import kafka_reason, topic_partitions
from chatlog.schemas.audit import (
    GENESIS,
    AuditCodec,
    AuditRecord,
    PartitionChain,
    record_hash,
    verify_partition,
)
from chatlog.schemas.errors import BrokerUnavailable, ConfigError, DecodeError, OutcomeUnknown
from chatlog.schemas.position import Position

__all__ = ["AuditScan", "KafkaAuditWriter", "read_audit", "transactional_id"]

log = logging.getLogger("chatlog.audit")


class _ExpectedFencing(logging.Filter):
    """Drops librdkafka's reports of this producer being fenced: another writer took the
    partition, which is how the chain is kept, not a fault (the writer logs that it
    starts over, at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("fenced" in text or "old epoch" in text)


_KAFKA_LOG = logging.getLogger("chatlog.kafka.audit")
_KAFKA_LOG.addFilter(_ExpectedFencing())
_ATTEMPTS = 8
# The last record is usually the one before the partition's last commit marker.
_LOOK_BACK = 16
_READ_COMMITTED = {"isolation.level": "read_committed"}


def transactional_id(topic: str, partition: int) -> str:
    """The one transactional id of a partition of the audit topic."""
    return f"chatlog-audit-{topic}-{partition}"


@dataclass(slots=True)
class _Chain:
    """The producer that owns a partition's chain, and the hash its next record carries."""

    partition: int
    producer: Producer
    head: bytes


class KafkaAuditWriter:
    """Appends audit records to one partition of the audit topic, chained (see module).

    Nothing touches the network until the first `append`: building one is free.
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str = "chatlog.audit",
        config: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
        partition: int | None = None,
        codec: AuditCodec | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.config = dict(config or {})
        self.timeout = timeout
        self.partition = partition
        self.codec = codec or AuditCodec()
        self._chain: _Chain | None = None
        # One transaction at a time per producer: appends from several threads queue here.
        self._lock = threading.Lock()
        self.reopened = 0  # how often this writer found itself fenced (for tests, stats)

    def append(self, records: Sequence[AuditRecord]) -> list[Position]:
        """Append `records` in one transaction, chained in order; their positions.

        `BrokerUnavailable` or `TopicMissing` if nothing was written; `OutcomeUnknown`
        after repeated failures, when the outcome is not known. The chain stays intact
        either way; a retry after a commit whose answer was lost may store the records
        twice, with the same `audit_id`.
        """
        if not records:
            return []
        with self._lock:
            last: Exception | None = None
            for _ in range(_ATTEMPTS):
                chain = self._chain or self._open()
                try:
                    return self._write(chain, records)
                except (KafkaException, BufferError) as exc:  # BufferError: queue full
                    last = exc
                    self._drop(exc)
            assert last is not None
            raise OutcomeUnknown(
                f"could not append to the audit trail {self.topic}[{self._partition_hint()}] "
                f"after {_ATTEMPTS} attempts: {_reason(last)}",
                topic=self.topic,
            ) from last

    def close(self) -> None:
        """Release the producer (its chain is re-read by the next writer)."""
        with self._lock:
            chain, self._chain = self._chain, None
            if chain is not None:
                chain.producer.flush(self.timeout)

    def _partition_hint(self) -> str:
        return "?" if self.partition is None else str(self.partition)

    def _open(self) -> _Chain:
        """A producer that owns the partition's chain, and the chain's head."""
        # One read_committed consumer counts the partitions and reads the chain's head.
        consumer = groupless_consumer(
            self.bootstrap_servers, self.config, purpose="audit", tuning=_READ_COMMITTED
        )
        try:
            partition = self._choose(consumer)
            producer = self._producer(partition)
            chain = _Chain(partition, producer, self._last_hash(consumer, partition))
        finally:
            consumer.close()
        self._chain = chain
        return chain

    def _choose(self, consumer: Consumer) -> int:
        partitions = topic_partitions(
            consumer, self.topic, bootstrap_servers=self.bootstrap_servers, timeout=self.timeout
        )
        if self.partition is None:
            self.partition = random.randrange(partitions)
        elif not 0 <= self.partition < partitions:
            raise ConfigError(
                f"audit partition {self.partition} is not one of {self.topic}'s {partitions}"
            )
        return self.partition

    def _producer(self, partition: int) -> Producer:
        """The partition's transactional producer, every other writer of it fenced."""
        try:
            producer = Producer(
                {
                    **self.config,
                    "bootstrap.servers": self.bootstrap_servers,
                    "transactional.id": transactional_id(self.topic, partition),
                    "enable.idempotence": True,
                    "acks": "all",
                    "client.id": "chatlog-audit",
                    "logger": _KAFKA_LOG,
                }
            )
        except KafkaException as exc:
            raise ConfigError(f"invalid Kafka producer settings: {kafka_reason(exc)}") from exc
        try:
            # Fences every other writer of this partition, and waits out its transaction.
            producer.init_transactions(self.timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"the audit trail {self.topic}[{partition}] could not start a transactional "
                f"producer: {kafka_reason(exc)}",
                topic=self.topic,
                partition=partition,
            ) from exc
        return producer

    def _last_hash(self, consumer: Consumer, partition: int) -> bytes:
        """The hash of the partition's last committed record (`GENESIS` if it has none).

        Read after `init_transactions`: nobody else can commit to the partition now, and
        a transaction another writer had under way is committed or aborted by then.
        """
        where = TopicPartition(self.topic, partition)
        low, high = kafka_call(consumer.get_watermark_offsets, where, timeout=self.timeout)
        stop, back = high, _LOOK_BACK
        while stop > low:
            start = max(low, stop - back)
            found = self._last_in(consumer, partition, start, stop)
            if found is not None:
                return record_hash(found)
            # Only markers or aborted records there: look further back.
            stop, back = start, back * 4
        return GENESIS

    def _last_in(self, consumer: Consumer, partition: int, start: int, stop: int) -> bytes | None:
        """The value of the last committed record in start..stop (exclusive), if any.

        Not `ranges_records`: the range usually ends with a commit marker, which is never
        delivered, and waiting a poll's full timeout for it would double a writer's start.
        Short polls and the consumer's position say when the range is read.
        """
        where = TopicPartition(self.topic, partition, start)
        consumer.assign([where])
        last: bytes | None = None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for message in kafka_call(consumer.consume, 100, timeout=0.01):
                offset = message.offset()
                if usable(message, where) and offset is not None and offset < stop:
                    last = message.value() or b""
            [position] = kafka_call(consumer.position, [TopicPartition(self.topic, partition)])
            if position.offset >= stop:
                return last
        raise BrokerUnavailable(
            f"reading the head of the audit trail {self.topic}[{partition}] stalled at "
            f"{start}..{stop} for {self.timeout:g} s",
            topic=self.topic,
            partition=partition,
        )

    def _write(self, chain: _Chain, records: Sequence[AuditRecord]) -> list[Position]:
        producer = chain.producer
        positions: list[Position | None] = [None] * len(records)
        failures: list[KafkaError] = []

        def delivered(n: int) -> Any:
            def report(err: KafkaError | None, message: Message) -> None:
                if err is not None:
                    failures.append(err)
                else:
                    positions[n] = Position(message.partition() or 0, message.offset() or 0)

            return report

        head = chain.head
        producer.begin_transaction()
        for n, record in enumerate(records):
            value = self.codec.encode(replace(record, prev_hash=head))
            producer.produce(
                self.topic,
                key=record.key.encode("utf-8"),
                value=value,
                partition=chain.partition,
                on_delivery=delivered(n),
            )
            head = record_hash(value)
        producer.commit_transaction(self.timeout)
        producer.poll(0)  # the delivery reports, if the commit's flush left any
        if failures:
            raise KafkaException(failures[0])
        chain.head = head
        return [p if p is not None else Position(chain.partition, -1) for p in positions]

    def _drop(self, exc: Exception) -> None:
        """After a failed transaction: abort it, or give up the producer if it is fenced."""
        chain, error = self._chain, exc.args[0] if exc.args else None
        if chain is None:
            return
        if isinstance(error, KafkaError) and error.txn_requires_abort() and not error.fatal():
            try:
                chain.producer.abort_transaction(self.timeout)
                # The chain's head is unchanged: nothing of the transaction was committed.
                return
            except KafkaException:
                pass
        # Fenced (another writer took the partition), or unusable: a new producer re-reads
        # the partition's last record before it writes again.
        self.reopened += 1
        log.info(
            "audit writer of %s[%d] starts over: %s",
            self.topic,
            chain.partition,
            _reason(exc),
        )
        self._chain = None


def _reason(exc: Exception) -> str:
    return kafka_reason(exc) if isinstance(exc, KafkaException) else f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class AuditScan:
    """Every record of the audit topic, and each partition's chain as verified."""

    topic: str
    records: tuple[tuple[Position, AuditRecord], ...]
    chains: tuple[PartitionChain, ...]

    @property
    def intact(self) -> bool:
        """Every partition's chain holds."""
        return all(chain.intact for chain in self.chains)


def read_audit(
    *,
    bootstrap_servers: str,
    topic: str = "chatlog.audit",
    config: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> AuditScan:
    """Read the whole audit topic (committed records), verify each partition's chain."""
    consumer = groupless_consumer(
        bootstrap_servers, config, purpose="audit", tuning=_READ_COMMITTED
    )
    codec = AuditCodec()
    try:
        count = topic_partitions(
            consumer, topic, bootstrap_servers=bootstrap_servers, timeout=timeout
        )
        ranges: dict[int, tuple[int, int]] = {}
        for partition in range(count):
            low, high = kafka_call(
                consumer.get_watermark_offsets, TopicPartition(topic, partition), timeout=timeout
            )
            ranges[partition] = (low, high)
        values: dict[int, list[tuple[int, bytes]]] = {p: [] for p in ranges}
        for message in ranges_records(consumer, topic, ranges, timeout):
            values[message.partition() or 0].append((message.offset() or 0, message.value() or b""))
    finally:
        consumer.close()
    chains = tuple(
        verify_partition(p, values[p], from_start=ranges[p][0] == 0, codec=codec)
        for p in sorted(values)
    )
    records: list[tuple[Position, AuditRecord]] = []
    for partition in sorted(values):
        for offset, value in values[partition]:
            try:
                records.append((Position(partition, offset), codec.decode(value)))
            except DecodeError:
                continue  # reported as a break of its partition's chain
    records.sort(key=lambda item: (item[1].at, item[0].partition, item[0].offset))
    return AuditScan(topic, tuple(records), chains)
