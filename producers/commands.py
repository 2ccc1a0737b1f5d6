"""Commands to events: validate what a chat back end asks for and build the event.

The producer publishes events, but callers think in commands ("append this message").
These functions are the pure step between: they check every field against the event
contract, fill in generated ids and timestamps, and raise `InvalidId` / `InvalidEvent`
with the offending field named. Nothing here does I/O, so a rejected command provably
publishes nothing.

Reserved metadata: an integration may keep fields of its own in a message's metadata
under a namespace it owns (the LangChain integration's ``langchain.*`` keys rebuild a
LangChain message). What reads them back trusts them to describe the message, so no
other writer may write them: `append_message` refuses a key in a reserved namespace
(`InvalidEvent`, naming the key), and only `append_owned_message`, called by the owning
integration with its `ReservedNamespace`, writes that namespace's keys. That entry point
is not re-exported by `chatlog.producers` and no public client passes its argument
through, so no caller writes reserved keys by accident; readers check what they read
anyway (`chatlog.integrations.langchain_messages`), since events reach the log by other
roads too (an older producer, another language).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from chatlog.schemas.errors import InvalidEvent
from chatlog.schemas.events import (
    ConversationEvent,
    MessageAppended,
    Payload,
    ProducerInfo,
    Role,
    ToolCall,
    validated,
)

__all__ = [
    "LANGCHAIN_METADATA",
    "RESERVED_NAMESPACES",
    "MessageFields",
    "ReservedNamespace",
    "append_message",
    "append_owned_message",
    "check_metadata",
    "new_event",
]


@dataclass(frozen=True, slots=True)
class ReservedNamespace:
    """A prefix of metadata keys that one integration alone writes and reads back."""

    prefix: str
    owner: str  # who writes it, named in a refusal


LANGCHAIN_METADATA = ReservedNamespace(
    "langchain.", "the LangChain integration (chatlog.integrations.langchain)"
)
RESERVED_NAMESPACES = (LANGCHAIN_METADATA,)


def new_event(
    session_id: str,
    *,
    user_id: str,
    payload: Payload,
    tenant: str = "default",
    producer: ProducerInfo | None = None,
) -> ConversationEvent:
    """A validated event for `session_id` carrying `payload`.

    Raises `InvalidEvent` for a part over its cap (`chatlog.schemas.events.MAX_NAME_CHARS`
    and the caps beside it), naming the field, the limit and the size.
    """
    return _new_event(
        session_id, user_id=user_id, payload=payload, tenant=tenant, producer=producer, owner=None
    )


def _new_event(
    session_id: str,
    *,
    user_id: str,
    payload: Payload,
    tenant: str,
    producer: ProducerInfo | None,
    owner: ReservedNamespace | None,
) -> ConversationEvent:
    fields: dict[str, Any] = {
        "session_id": session_id,
        "user_id": user_id,
        "tenant": tenant,
        "payload": payload,
    }
    if producer is not None:
        fields["producer"] = producer
    # The owning integration's reserved values carry a whole message's extra fields, so
    # they are exempt from the per-value cap (`check_caps`).
    context = None if owner is None else {"unbounded_prefix": owner.prefix}
    return validated(ConversationEvent, fields, context=context)


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
    """The `MessageAppended` event for one chat message (the AppendMessage command).

    Raises `InvalidEvent` for a metadata key in a reserved namespace (see the module), or
    for a part over its cap (`chatlog.schemas.events.check_caps`).
    """
    return _message_event(
        session_id, user_id, role, content, owner=None, producer=producer, **fields
    )


def append_owned_message(
    owner: ReservedNamespace,
    session_id: str,
    *,
    user_id: str,
    role: Role | str,
    content: str,
    producer: ProducerInfo | None = None,
    **fields: Unpack[MessageFields],
) -> ConversationEvent:
    """`append_message` for the integration that owns `owner`: it may write its own
    reserved keys, and still no other namespace's. Only that integration calls this."""
    return _message_event(
        session_id, user_id, role, content, owner=owner, producer=producer, **fields
    )


def check_metadata(metadata: Mapping[str, str], *, owner: ReservedNamespace | None) -> None:
    """Refuse a key in a reserved namespace that `owner` (None: any writer) does not own."""
    for key in metadata:
        # Folded so that "LangChain.fields" or a full-width look-alike is no way around it.
        folded = unicodedata.normalize("NFKC", key).casefold()
        for namespace in RESERVED_NAMESPACES:
            # By identity: the right is the integration's own object, not an equal copy.
            if folded.startswith(namespace.prefix) and namespace is not owner:
                raise InvalidEvent(
                    f"metadata key {key!r} is in the reserved namespace {namespace.prefix}* "
                    f"that only {namespace.owner} writes (it restores a message's fields); "
                    f"nothing was published. Rename the key (for example 'app.{key}'), or "
                    f"write the message through that integration",
                    field=f"metadata.{key}",
                )


def _message_event(
    session_id: str,
    user_id: str,
    role: Role | str,
    content: str,
    *,
    owner: ReservedNamespace | None,
    producer: ProducerInfo | None,
    **fields: Unpack[MessageFields],
) -> ConversationEvent:
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
    # Checked as validated, so that no other shape of metadata (pairs, a dict subclass)
    # carries a reserved key past the check.
    check_metadata(payload.metadata, owner=owner)
    return _new_event(
        session_id,
        user_id=user_id,
        payload=payload,
        tenant=fields.get("tenant", "default"),
        producer=producer,
        owner=owner,
    )
