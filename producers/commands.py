"""Commands to events: validate what a chat back end asks for and build the event.

The producer publishes events, but callers think in commands ("append this message").
These functions are the pure step between: they check every field against the event
contract, fill in generated ids and timestamps, and raise `InvalidId` / `InvalidEvent`
with the offending field named. Nothing here does I/O, so a rejected command provably
publishes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypedDict, Unpack

from chatlog.schemas.events import (
    ConversationEvent,
    MessageAppended,
    Payload,
    ProducerInfo,
    Role,
    ToolCall,
    validated,
)

__all__ = ["MessageFields", "append_message", "new_event"]


def new_event(
    session_id: str,
    *,
    user_id: str,
    payload: Payload,
    tenant: str = "default",
    producer: ProducerInfo | None = None,
) -> ConversationEvent:
    """A validated event for `session_id` carrying `payload`."""
    fields: dict[str, Any] = {
        "session_id": session_id,
        "user_id": user_id,
        "tenant": tenant,
        "payload": payload,
    }
    if producer is not None:
        fields["producer"] = producer
    return validated(ConversationEvent, fields)


class MessageFields(TypedDict, total=False):
    """The optional parts of a chat message, shared by every way of appending one."""

    name: str | None
    tool_calls: Iterable[ToolCall | Mapping[str, str]]
    tool_call_id: str | None
    metadata: Mapping[str, str] | None
    message_id: str | None
    tenant: str


def append_message(
    session_id: str,
    *,
    user_id: str,
    role: Role | str,
    content: str,
    producer: ProducerInfo | None = None,
    **fields: Unpack[MessageFields],
) -> ConversationEvent:
    """The `MessageAppended` event for one chat message (the AppendMessage command)."""
    payload_fields: dict[str, Any] = {
        "role": role,
        "content": content,
        "name": fields.get("name"),
        "tool_calls": tuple(fields.get("tool_calls", ())),
        "tool_call_id": fields.get("tool_call_id"),
        "metadata": dict(fields.get("metadata") or {}),
    }
    message_id = fields.get("message_id")
    if message_id is not None:
        payload_fields["message_id"] = message_id
    payload = validated(MessageAppended, payload_fields)
    return new_event(
        session_id,
        user_id=user_id,
        payload=payload,
        tenant=fields.get("tenant", "default"),
        producer=producer,
    )
