"""chatlog: event-sourced conversation memory for LLM chat applications.

The thin facade over the layers: settings, the CLI, and re-exports of what a chat back
end uses. Everything here is also importable from its own package (`schemas`,
`producers`, `projections`, `processors`).
"""

from chatlog.settings import Settings
from producers.kafka_producer import AsyncConversationProducer, ConversationProducer
from schemas.errors import (
    BrokerUnavailable,
    ChatlogError,
    ConfigError,
    DecodeError,
    InvalidEvent,
    InvalidId,
    InvalidInput,
    PublishError,
    PublishTimeout,
    QueueFull,
    TopicMissing,
    UnknownSchema,
)
from schemas.events import ConversationEvent, Role
from schemas.position import Position

__all__ = [
    "AsyncConversationProducer",
    "BrokerUnavailable",
    "ChatlogError",
    "ConfigError",
    "ConversationEvent",
    "ConversationProducer",
    "DecodeError",
    "InvalidEvent",
    "InvalidId",
    "InvalidInput",
    "Position",
    "PublishError",
    "PublishTimeout",
    "QueueFull",
    "Role",
    "Settings",
    "TopicMissing",
    "UnknownSchema",
]
