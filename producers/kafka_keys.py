"""The `chatlog.keys` topic as the keyring's durable log (`chatlog.schemas.keyring.KeyLog`).

It writes through a `ConversationProducer`'s client, so key records get the same
guarantees as events (idempotent, acks=all) and the same errors: a key record is
acknowledged before the first event it seals is sent, and an unknown outcome is a
`PublishTimeout` (publishing the same record again is harmless: compaction keeps one).
"""

from __future__ import annotations

from concurrent.futures import Future

from chatlog.producers.kafka_producer import ConversationProducer
from chatlog.schemas.key_records import ErasureRecord, KeyRecord, key_record_key
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope

__all__ = ["KafkaKeyLog"]


class KafkaKeyLog:
    """Publishes wrapped data keys, their tombstones and erasure records."""

    def __init__(self, producer: ConversationProducer, *, topic: str = "chatlog.keys") -> None:
        self.producer = producer
        self.topic = topic

    def publish_key(self, record: KeyRecord) -> None:
        """Append `record`; return once the broker has acknowledged it."""
        future = self._send(record.kafka_key, record.encode(), user_id=record.scope.user_id)
        self.producer.wait(future, what=f"data key {record.key_id} of user {record.scope.user_id}")

    def publish_erasure(self, record: ErasureRecord) -> None:
        """Tombstone each of `record.key_ids`, then append `record`; return once all are
        acknowledged."""
        user = record.scope.user_id
        futures = [
            self._send(key_record_key(record.scope, key_id), None, user_id=user)
            for key_id in record.key_ids
        ]
        futures.append(self._send(record.kafka_key, record.encode(), user_id=user))
        for future in futures:
            self.producer.wait(future, what=f"the erasure of user {user}")

    def publish_tombstone(self, scope: KeyScope, key_id: str) -> None:
        """Append the tombstone of one key; return once the broker has acknowledged it."""
        future = self._send(key_record_key(scope, key_id), None, user_id=scope.user_id)
        self.producer.wait(future, what=f"the tombstone of data key {key_id}")

    def _send(self, key: str, value: bytes | None, *, user_id: str) -> Future[Position]:
        return self.producer.send_record(self.topic, key=key, value=value, user_id=user_id)
