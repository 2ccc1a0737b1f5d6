"""The error hierarchy shared by every chatlog layer.

Every error subclasses `ChatlogError` and, where one fits, the builtin it resembles, so
callers can catch either. Errors carry their context (topic, partition, offset, session,
setting) as attributes as well as in the message::

    ChatlogError
    ├── ConfigError(ValueError)            a setting is missing, unknown or invalid
    ├── MissingExtra(ImportError)          a feature's optional dependencies are not installed
    ├── InvalidInput(ValueError)           a caller passed something chatlog refuses
    │   ├── InvalidId                      an id breaks the id rules
    │   └── InvalidEvent                   an event or command breaks the contract
    ├── DecodeError(ValueError)            bytes on the topic are not a chatlog event
    │   └── UnknownSchema                  ... written with a schema chatlog does not know
    ├── ReadError                          a read could not be answered
    │   ├── SessionNotFound(LookupError)   no such session (never existed, expired, erased)
    │   ├── OwnershipError(PermissionError) the session belongs to another user
    │   ├── ReadTimeout(TimeoutError)      the projection did not reach a position in time
    │   └── StoreUnavailable(ConnectionError) Redis did not answer
    └── PublishError                       an event could not be published
        ├── BrokerUnavailable(ConnectionError)
        ├── PublishTimeout(TimeoutError)
        ├── QueueFull(BufferError)
        └── TopicMissing(LookupError)
"""

from __future__ import annotations

from typing import Any

from chatlog.distribution import DISTRIBUTION

__all__ = [
    "BrokerUnavailable",
    "ChatlogError",
    "ConfigError",
    "DecodeError",
    "InvalidEvent",
    "InvalidId",
    "InvalidInput",
    "MissingExtra",
    "OwnershipError",
    "PublishError",
    "PublishTimeout",
    "QueueFull",
    "ReadError",
    "ReadTimeout",
    "SessionNotFound",
    "StoreUnavailable",
    "TopicMissing",
    "UnknownSchema",
]


class ChatlogError(Exception):
    """Root of every error chatlog raises; `context` holds what the error is about."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = {k: v for k, v in context.items() if v is not None}


class ConfigError(ChatlogError, ValueError):
    """A setting is missing, unknown or invalid; the message names it and the fix."""


class MissingExtra(ChatlogError, ImportError):
    """A feature needs an extra (a group of optional dependencies) that is not installed."""

    @classmethod
    def needs(cls, extra: str, feature: str, missing: ImportError) -> MissingExtra:
        """The error for `feature`, whose import failed with `missing`; names the install."""
        return cls(
            f"{feature} needs the {missing.name or 'optional'} package: "
            f"pip install '{DISTRIBUTION}[{extra}]'",
            extra=extra,
            module=missing.name,
        )


class InvalidInput(ChatlogError, ValueError):
    """The caller passed something chatlog refuses; nothing was published."""


class InvalidId(InvalidInput):
    """An id (session, user, tenant, message) breaks the id rules."""


class InvalidEvent(InvalidInput):
    """An event or command does not satisfy the event contract."""


class DecodeError(ChatlogError, ValueError):
    """Bytes read from the topic are not a decodable chatlog event."""


class UnknownSchema(DecodeError):
    """The event names a writer schema (fingerprint or registry id) chatlog cannot find."""


class ReadError(ChatlogError):
    """A read of the read-model could not be answered."""


class SessionNotFound(ReadError, LookupError):
    """No such session: it never existed, expired, or its owner was erased."""


class OwnershipError(ReadError, PermissionError):
    """The session belongs to another user; nothing of it is returned."""


class ReadTimeout(ReadError, TimeoutError):
    """The projection did not reach the awaited position within the timeout."""


class StoreUnavailable(ReadError, ConnectionError):
    """The read-model's store (Redis) did not answer."""


class PublishError(ChatlogError):
    """An event could not be published; the caller may retry with the same event."""


class BrokerUnavailable(PublishError, ConnectionError):
    """No broker answered within the delivery timeout."""


class PublishTimeout(PublishError, TimeoutError):
    """The broker did not acknowledge the event in time; it may or may not be stored."""


class QueueFull(PublishError, BufferError):
    """The producer's local queue stayed full for the whole timeout (back-pressure)."""


class TopicMissing(PublishError, LookupError):
    """The events topic does not exist; `chatlog topics create` makes it."""
