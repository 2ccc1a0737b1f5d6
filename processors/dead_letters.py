"""Dead letters: what a record that cannot be projected carries to the DLQ topic.

The original key and bytes go unchanged, so a fixed consumer can re-publish them; the
headers say where the record came from and why it was refused.
"""

from __future__ import annotations

from chatlog.processors.projection import DeadLetter

__all__ = ["HEADER_PREFIX", "dead_letter_headers"]

HEADER_PREFIX = "chatlog.dlq."


def dead_letter_headers(letter: DeadLetter) -> list[tuple[str, str | bytes | None]]:
    """Kafka headers naming the original topic, partition, offset and the error."""
    record, error = letter.record, letter.error
    fields = {
        "topic": record.topic,
        "partition": str(record.partition),
        "offset": str(record.offset),
        "error.class": type(error).__name__,
        "error.message": error.message,
    }
    return [(HEADER_PREFIX + name, value.encode()) for name, value in fields.items()]
