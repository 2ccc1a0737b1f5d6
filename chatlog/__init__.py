"""chatlog: event-sourced conversation memory for LLM chat applications.

The thin facade over the layers: `ChatLog` / `AsyncChatLog` (append, context, sessions),
settings, the CLI, and re-exports of what a chat back end uses. Everything here is also
importable from its own package (`schemas`, `producers`, `projections`, `processors`).
"""

from chatlog.client import AsyncChatLog, ChatLog
from chatlog.settings import Settings
from producers.kafka_producer import AsyncConversationProducer, ConversationProducer
from projections.context import Context
from projections.store import SessionEntry
from projections.view import Message
from schemas.errors import (
    BrokerUnavailable,
    ChatlogError,
    ConfigError,
    DecodeError,
    InvalidEvent,
    InvalidId,
    InvalidInput,
    OwnershipError,
    PublishError,
    PublishTimeout,
    QueueFull,
    ReadError,
    ReadTimeout,
    SessionNotFound,
    StoreUnavailable,
    TopicMissing,
    UnknownSchema,
)
from schemas.events import ConversationEvent, Role
from schemas.position import Position

__all__ = [
    "AsyncChatLog",
    "AsyncConversationProducer",
    "BrokerUnavailable",
    "ChatLog",
    "ChatlogError",
    "ConfigError",
    "Context",
    "ConversationEvent",
    "ConversationProducer",
    "DecodeError",
    "InvalidEvent",
    "InvalidId",
    "InvalidInput",
    "Message",
    "OwnershipError",
    "Position",
    "PublishError",
    "PublishTimeout",
    "QueueFull",
    "ReadError",
    "ReadTimeout",
    "Role",
    "SessionEntry",
    "SessionNotFound",
    "Settings",
    "StoreUnavailable",
    "TopicMissing",
    "UnknownSchema",
]
