"""Writing dead letters: records the projector cannot project, to the dead-letter topic.

A dead letter keeps the original key and bytes, with headers naming where it came from and
why (`chatlog.processors.dead_letters`). The batch's offsets are stored only once every
dead letter of it is acknowledged, so a dead letter may repeat, never vanish.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from chatlog.logs import context
from chatlog.processors.dead_letters import dead_letter_headers
from chatlog.processors.projection import DeadLetter
from chatlog.schemas.errors import DeliveryFailed

__all__ = ["KafkaDeadLetters"]

log = logging.getLogger("chatlog.projector")
_KAFKA_LOG = logging.getLogger("chatlog.kafka")
# How long one write waits for the broker before it fails (and the caller retries it).
_FLUSH_S = 30.0


class KafkaDeadLetters:
    """An idempotent producer to the dead-letter topic."""

    def __init__(
        self, bootstrap_servers: str, topic: str, *, config: Mapping[str, Any] | None = None
    ) -> None:
        self.topic = topic
        self._producer = Producer(
            {
                **(config or {}),
                "bootstrap.servers": bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                "logger": _KAFKA_LOG,
            }
        )

    def write(self, letters: Sequence[DeadLetter], *, stop: threading.Event) -> None:
        """Write `letters` and wait until the broker has them all; `DeliveryFailed` if not
        (within a bound, or once `stop` is set), so that the caller does not move on."""
        if not letters:
            return
        failures: list[str] = []

        def delivered(err: KafkaError | None, _: Message) -> None:
            if err is not None:
                failures.append(err.str())

        for letter in letters:
            log.warning(
                "dead-lettering %s[%d]@%d: %s",
                letter.record.topic,
                letter.record.partition,
                letter.record.offset,
                letter.error.message,
                extra=context(partition=letter.record.partition),
            )
            self._producer.produce(
                self.topic,
                key=letter.record.key,
                value=letter.record.value,
                headers=dead_letter_headers(letter),
                on_delivery=delivered,
            )
        # Flushed in slices, so that `stop` is seen while the broker does not answer.
        deadline = time.monotonic() + _FLUSH_S
        left = self._producer.flush(1)
        while left and time.monotonic() < deadline and not stop.is_set():
            left = self._producer.flush(1)
        if left or failures:
            # Not storing offsets replays the batch: a dead letter may repeat, never vanish.
            raise DeliveryFailed(
                f"could not write {len(letters)} dead letters to {self.topic}: "
                f"{failures or f'{left} unacknowledged'}",
                topic=self.topic,
            )

    def close(self, timeout: float) -> None:
        """Send what is still queued, waiting at most `timeout` seconds."""
        self._producer.flush(timeout)
