"""The event contract: Avro schemas, frozen event models, the codec, ids and errors.

This package imports none of its siblings and no network library: everything that
crosses a process boundary in chatlog is defined here.
"""

from chatlog.schemas.codec import EventCodec, SchemaVersion, schema_versions
from chatlog.schemas.errors import (
    BrokerUnavailable,
    ChatlogError,
    ConfigError,
    DecodeError,
    InvalidEvent,
    InvalidId,
    InvalidInput,
    PublishTimeout,
    QueueFull,
    TopicMissing,
    UnknownSchema,
)
from chatlog.schemas.events import (
    ConversationEvent,
    MessageAppended,
    MessageRedacted,
    Payload,
    ProducerInfo,
    Role,
    SessionClosed,
    SessionStarted,
    SummaryUpdated,
    ToolCall,
    UserErased,
)
from chatlog.schemas.ids import new_id, validate_id
from chatlog.schemas.position import Position
from chatlog.schemas.registry import InMemorySchemaRegistry, SchemaRegistry

__all__ = [
    "BrokerUnavailable",
    "ChatlogError",
    "ConfigError",
    "ConversationEvent",
    "DecodeError",
    "EventCodec",
    "InMemorySchemaRegistry",
    "InvalidEvent",
    "InvalidId",
    "InvalidInput",
    "MessageAppended",
    "MessageRedacted",
    "Payload",
    "Position",
    "ProducerInfo",
    "PublishTimeout",
    "QueueFull",
    "Role",
    "SchemaRegistry",
    "SchemaVersion",
    "SessionClosed",
    "SessionStarted",
    "SummaryUpdated",
    "ToolCall",
    "TopicMissing",
    "UnknownSchema",
    "UserErased",
    "new_id",
    "schema_versions",
    "validate_id",
]
