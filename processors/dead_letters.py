"""Dead letters: what a record that cannot be projected carries to the DLQ topic.

The original key and bytes go unchanged, so a fixed consumer can re-publish them; the
headers say where the record came from and why it was refused.
"""

from __future__ import annotations

from chatlog.processors.projection import DeadLetter
from chatlog.schemas.errors import ChatlogError, DecodeError, ForeignEvent, Undecryptable

__all__ = ["HEADER_PREFIX", "dead_letter_headers", "dead_letter_reason"]

HEADER_PREFIX = "chatlog.dlq."


def dead_letter_reason(error: ChatlogError) -> str:
    """The short reason a dead letter carries: what a consumer of the DLQ filters on."""
    if isinstance(error, Undecryptable):
        return "undecryptable"  # altered, a master key missing here, or its key unknown
    if isinstance(error, ForeignEvent):
        return "foreign"  # another user's session, or the wrong partition
    if isinstance(error, DecodeError):
        return "undecodable"
    return "invalid"


def dead_letter_headers(letter: DeadLetter) -> list[tuple[str, str | bytes | None]]:
    """Kafka headers naming the original topic, partition, offset and the error."""
    record, error = letter.record, letter.error
    fields = {
        "topic": record.topic,
        "partition": str(record.partition),
        "offset": str(record.offset),
        "reason": dead_letter_reason(error),
        "error.class": type(error).__name__,
        "error.message": error.message,
    }
    return [(HEADER_PREFIX + name, value.encode()) for name, value in fields.items()]
