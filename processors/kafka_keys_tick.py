"""Ticks on the keys topic: what makes an erased key leave the disks on a quiet topic.

Why? An erased user's key is gone once the log cleaner has compacted the segment holding
it and its tombstone (`keys_topic_config`). But the cleaner never touches the active
segment, and the broker rolls a segment only when a record is appended after
`segment.ms` has passed: on a keys topic that receives nothing after an erasure, the
tombstone and the key would stay in the active segment for as long as the topic stays
quiet (seen: still there after 200 s with a bound of 60 s).

So the projector, which every deployment runs, appends a `KeysTick` to every partition
of the keys topic every `keys_tick_interval_ms` (half of `segment.ms`): the active
segment then rolls within one and a half `segment.ms` of any record, quiet or not.

* Each partition gets its own tick (a segment rolls per partition), produced to it
  explicitly, under the fixed key ``tick:<partition>``: compaction keeps one tick per
  partition, however many projectors write them and for however long.
* Several projectors ticking at once only roll segments sooner; a tick is a few bytes.
* The partition count is asked for at each round, so partitions added later get ticks.
* A broker that does not answer costs that round, logged at warning; the next round is
  one interval later. A tick that cannot be delivered expires within the interval, so
  ticks never pile up in the client's queue during an outage.
* It runs in a thread of its own, so that a Redis outage, which holds the projection
  loop in its retries, does not stop the ticks; it ends with the projector's stop event
  (at most `_SLICE_S`, or one metadata request, later).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from chatlog.logs import context
from chatlog.producers.kafka_topics import kafka_reason, topic_partitions
from chatlog.schemas.errors import ChatlogError
from chatlog.schemas.key_records import KeysTick

__all__ = ["KafkaKeysTicker", "TickProducer"]

log = logging.getLogger("chatlog.projector")
_KAFKA_LOG = logging.getLogger("chatlog.kafka")
# How often the thread looks at the stop event and serves delivery reports.
_SLICE_S = 0.25
# The longest a round waits for the broker to say how many partitions the topic has.
_METADATA_S = 5.0


class TickProducer(Protocol):
    """The part of a confluent-kafka `Producer` the ticker uses."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        """The cluster's metadata."""
        ...

    def produce(
        self,
        topic: str,
        *,
        value: bytes | None = None,
        key: bytes | str | None = None,
        partition: int = -1,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        """Queue one record."""
        ...

    def poll(self, timeout: float = -1) -> int:
        """Serve delivery reports."""
        ...

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        """Drop what is queued."""
        ...

    def flush(self, timeout: float = -1) -> int:
        """Wait for what is queued."""
        ...


class KafkaKeysTicker:
    """Appends a `KeysTick` to every partition of the keys topic every `interval_s`."""

    def __init__(
        self,
        producer: TickProducer,
        *,
        topic: str,
        interval_s: float,
        bootstrap_servers: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"the tick interval must be positive, got {interval_s}")
        self.topic = topic
        self.interval_s = interval_s
        self.ticks = 0  # delivered
        self.failed_rounds = 0
        self._producer = producer
        self._bootstrap_servers = bootstrap_servers
        self._clock = clock
        self._thread: threading.Thread | None = None

    @classmethod
    def connect(
        cls,
        bootstrap_servers: str,
        topic: str,
        *,
        interval_s: float,
        config: Mapping[str, Any] | None = None,
    ) -> KafkaKeysTicker:
        """A ticker with a producer of its own (it connects when first used)."""
        producer = Producer(
            {
                **(config or {}),
                "bootstrap.servers": bootstrap_servers,
                "acks": "all",
                # An undelivered tick is worthless once the next is due.
                "message.timeout.ms": max(1000, round(interval_s * 1000)),
                "logger": _KAFKA_LOG,
            }
        )
        return cls(
            producer, topic=topic, interval_s=interval_s, bootstrap_servers=bootstrap_servers
        )

    def tick(self) -> int:
        """Queue one tick for every partition of the topic; how many (0: none, logged)."""
        try:
            partitions = topic_partitions(
                self._producer,
                self.topic,
                bootstrap_servers=self._bootstrap_servers,
                timeout=min(_METADATA_S, self.interval_s),
            )
            at = self._clock()
            for partition in range(partitions):
                tick = KeysTick(partition, at)
                self._producer.produce(
                    self.topic,
                    key=tick.kafka_key,
                    value=tick.encode(),
                    partition=partition,
                    on_delivery=self._delivered,
                )
        except (ChatlogError, KafkaException, BufferError) as exc:
            self.failed_rounds += 1
            reason = kafka_reason(exc) if isinstance(exc, KafkaException) else str(exc)
            log.warning(
                "no tick on %s this round (%s); next in %g s. Until one is written, an "
                "erased key may stay on disk beyond CHATLOG_KEY_SHRED_WITHIN",
                self.topic,
                reason,
                self.interval_s,
            )
            return 0
        return partitions

    def run(self, stop: threading.Event) -> None:
        """Tick now, then every `interval_s`, until `stop` is set."""
        while not stop.is_set():
            self.tick()
            deadline = time.monotonic() + self.interval_s
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                self._producer.poll(min(left, _SLICE_S))

    def start(self, stop: threading.Event) -> None:
        """`run` in a daemon thread: a broker that hangs never holds the process."""
        self._thread = threading.Thread(
            target=self.run, args=(stop,), name="chatlog-keys-tick", daemon=True
        )
        self._thread.start()

    def close(self, timeout: float = 1.0) -> None:
        """Wait at most `timeout` s for the thread (its stop event set) and drop what is
        queued: a tick left behind is of no use."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # in a metadata request; a daemon, it ends with the process
        self._producer.purge(in_queue=True, in_flight=False, blocking=False)
        self._producer.flush(0)

    def _delivered(self, err: KafkaError | None, message: Message) -> None:
        if err is None:
            self.ticks += 1
            return
        log.warning(
            "a tick to %s[%s] was not delivered (%s); the next is in at most %g s",
            self.topic,
            message.partition(),
            err.str(),
            self.interval_s,
            extra=context(partition=message.partition()),
        )
