"""Position: where an event sits in the log, the token for read-your-writes."""

from __future__ import annotations

from dataclasses import dataclass

from chatlog.schemas.errors import InvalidInput

__all__ = ["Position"]


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A partition and an offset in the events topic, written `P:O`."""

    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """Read `P:O` (as printed by `str(position)` and the CLI)."""
        partition, sep, offset = text.partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise InvalidInput(f"position {text!r} is not PARTITION:OFFSET (for example 3:1042)")
        return cls(int(partition), int(offset))
