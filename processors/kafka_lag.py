"""`KafkaTopicEnds`: where each partition of the events topic starts and ends, for lag.

How far behind is the projector? For each partition, the records between its progress
mark (the last offset projected into the live generation, kept in Redis) and the end of
the partition (its high watermark): `chatlog.processors.projector_stats.records_behind`
does the sum. This module asks the broker for the ends, with one consumer that joins no
group and reads nothing, made on first use and kept (the HTTP gateway's ``/readyz``
asks it at every probe).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.processors.kafka_history import kafka_call
from chatlog.producers.kafka_topics import topic_partitions

__all__ = ["KafkaTopicEnds"]


class KafkaTopicEnds:
    """The low and high watermarks of every partition of one topic."""

    def __init__(
        self, *, bootstrap_servers: str, topic: str, config: Mapping[str, Any] | None = None
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self._config = dict(config or {})
        self._consumer: Consumer | None = None
        self._lock = threading.Lock()  # probes may overlap; a consumer is one thread's

    def ends(self, *, timeout: float = 2.0) -> dict[int, tuple[int, int]]:
        """Each partition's (low, high) watermarks: its first offset and the next one to
        be written. `BrokerUnavailable` or `TopicMissing` if the broker cannot say."""
        with self._lock:
            if self._consumer is None:
                self._consumer = groupless_consumer(
                    self.bootstrap_servers, self._config, purpose="lag"
                )
            consumer = self._consumer
            count = topic_partitions(
                consumer, self.topic, bootstrap_servers=self.bootstrap_servers, timeout=timeout
            )
            return {
                partition: kafka_call(
                    consumer.get_watermark_offsets,
                    TopicPartition(self.topic, partition),
                    timeout=timeout,
                )
                for partition in range(count)
            }

    def close(self) -> None:
        """Release the consumer (if one was made)."""
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
