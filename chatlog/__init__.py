"""chatlog: event-sourced conversation memory for LLM chat applications.

The one import root. Its sub-packages are the layers (`chatlog.schemas`,
`chatlog.producers`, `chatlog.projections`, `chatlog.processors`) and the integrations
(`chatlog.integrations`); this module is the facade a chat back end imports: `ChatLog` /
`AsyncChatLog` (append, context, sessions, recall), `Settings`, the error tree and the
values they return.

Importing `chatlog` loads no network library: the clients that need confluent-kafka or
redis (`ChatLog`, `AsyncChatLog` and the producers) are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from chatlog.distribution import DISTRIBUTION, installed_version
from chatlog.projections.context import Context
from chatlog.projections.recall import RecalledTurn
from chatlog.projections.store import SessionEntry
from chatlog.projections.view import Message
from chatlog.schemas.errors import (
    BrokerUnavailable,
    ChatlogError,
    ConfigError,
    Conflict,
    Corrupt,
    DataLoss,
    DecodeError,
    DeliveryFailed,
    EmbedderUnavailable,
    EmbeddingError,
    EmbeddingModelMismatch,
    EmbeddingTimeout,
    Erased,
    Forbidden,
    ForeignEvent,
    Incomplete,
    Interrupted,
    InvalidEvent,
    InvalidId,
    InvalidInput,
    InvalidTransition,
    JwksUnavailable,
    LayoutMismatch,
    LimitExceeded,
    MissingExtra,
    NotAudited,
    NotQueued,
    OutcomeUnknown,
    OwnershipError,
    PublishTimeout,
    QueueFull,
    RateLimited,
    ReadModelLost,
    ReadTimeout,
    RecallIndexLost,
    Refused,
    RetryableEmbeddingError,
    RetryableSummarizerError,
    SessionExists,
    SessionNotFound,
    StoreUnavailable,
    SummarizerError,
    SummarizerTimeout,
    SummarizerUnavailable,
    TooManySessions,
    TopicMissing,
    Unauthenticated,
    Unavailable,
    Undecryptable,
    UnknownMessage,
    UnknownSchema,
    UnknownUser,
)
from chatlog.schemas.events import ConversationEvent, Role
from chatlog.schemas.position import Position
from chatlog.settings import Settings

if TYPE_CHECKING:
    from chatlog.client import AsyncChatLog, ChatLog
    from chatlog.processors.erasure import Erasure
    from chatlog.processors.kafka_history import KafkaHistory
    from chatlog.producers.kafka_producer import AsyncConversationProducer, ConversationProducer

__version__ = installed_version()

__all__ = [
    "DISTRIBUTION",
    "AsyncChatLog",
    "AsyncConversationProducer",
    "BrokerUnavailable",
    "ChatLog",
    "ChatlogError",
    "ConfigError",
    "Conflict",
    "Context",
    "ConversationEvent",
    "ConversationProducer",
    "Corrupt",
    "DataLoss",
    "DecodeError",
    "DeliveryFailed",
    "EmbedderUnavailable",
    "EmbeddingError",
    "EmbeddingModelMismatch",
    "EmbeddingTimeout",
    "Erased",
    "Erasure",
    "Forbidden",
    "ForeignEvent",
    "Incomplete",
    "Interrupted",
    "InvalidEvent",
    "InvalidId",
    "InvalidInput",
    "InvalidTransition",
    "JwksUnavailable",
    "KafkaHistory",
    "LayoutMismatch",
    "LimitExceeded",
    "Message",
    "MissingExtra",
    "NotAudited",
    "NotQueued",
    "OutcomeUnknown",
    "OwnershipError",
    "Position",
    "PublishTimeout",
    "QueueFull",
    "RateLimited",
    "ReadModelLost",
    "ReadTimeout",
    "RecallIndexLost",
    "RecalledTurn",
    "Refused",
    "RetryableEmbeddingError",
    "RetryableSummarizerError",
    "Role",
    "SessionEntry",
    "SessionExists",
    "SessionNotFound",
    "Settings",
    "StoreUnavailable",
    "SummarizerError",
    "SummarizerTimeout",
    "SummarizerUnavailable",
    "TooManySessions",
    "TopicMissing",
    "Unauthenticated",
    "Unavailable",
    "Undecryptable",
    "UnknownMessage",
    "UnknownSchema",
    "UnknownUser",
]

_LAZY = {
    "AsyncChatLog": "chatlog.client",
    "ChatLog": "chatlog.client",
    "Erasure": "chatlog.processors.erasure",
    "KafkaHistory": "chatlog.processors.kafka_history",
    "AsyncConversationProducer": "chatlog.producers.kafka_producer",
    "ConversationProducer": "chatlog.producers.kafka_producer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'chatlog' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
