"""Id rules: what a session, user, tenant, message or event id may look like.

Ids end up inside Redis key names, Kafka keys, log lines and file names, so they are
allow-listed rather than escaped: letters, digits and `_ - . @`, 1 to 128 characters.
That excludes `:` (key separator), `{ }` (Redis Cluster hash tags), `* ? [ ]` (glob
patterns), whitespace and control characters. Generated ids are uuid4.
"""

from __future__ import annotations

import re
import uuid

from chatlog.schemas.errors import InvalidId

__all__ = ["ALLOWED_ID_CHARS", "MAX_ID_LENGTH", "new_id", "validate_id"]

MAX_ID_LENGTH = 128
ALLOWED_ID_CHARS = "letters A-Z a-z, digits 0-9, '_', '-', '.', '@'"
_ID = re.compile(r"[A-Za-z0-9_.@-]+")
_BAD_CHAR = re.compile(r"[^A-Za-z0-9_.@-]")


def new_id() -> str:
    """A fresh random id (uuid4, canonical text form)."""
    return str(uuid.uuid4())


def validate_id(value: object, *, field: str = "id") -> str:
    """Return `value` if it is a valid id, else raise `InvalidId` naming the problem."""
    if not isinstance(value, str):
        raise InvalidId(f"{field} must be a string, got {type(value).__name__}", field=field)
    if not value:
        raise InvalidId(
            f"{field} is empty; use 1 to {MAX_ID_LENGTH} characters of {ALLOWED_ID_CHARS}",
            field=field,
        )
    if len(value) > MAX_ID_LENGTH:
        raise InvalidId(
            f"{field} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}",
            field=field,
        )
    if _ID.fullmatch(value) is None:
        bad = _BAD_CHAR.search(value)
        assert bad is not None  # fullmatch failed, so some character is outside the set
        char = bad.group()
        raise InvalidId(
            f"{field} contains {char!r} (U+{ord(char):04X}) at position {bad.start()}; "
            f"ids may only use {ALLOWED_ID_CHARS}",
            field=field,
        )
    return value
