"""Producers: validate a command, build the event, publish it with confluent-kafka.

The pure parts (`commands`, `partitioning`) import no network library; the Kafka
adapters are loaded on first use, so `import chatlog.producers.partitioning` stays pure.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from chatlog.producers.commands import append_message, new_event
from chatlog.producers.partitioning import murmur2, partition_for

if TYPE_CHECKING:
    from chatlog.producers.kafka_producer import AsyncConversationProducer, ConversationProducer

__all__ = [
    "AsyncConversationProducer",
    "ConversationProducer",
    "append_message",
    "murmur2",
    "new_event",
    "partition_for",
]

_LAZY = {
    "AsyncConversationProducer": "chatlog.producers.kafka_producer",
    "ConversationProducer": "chatlog.producers.kafka_producer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'chatlog.producers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
