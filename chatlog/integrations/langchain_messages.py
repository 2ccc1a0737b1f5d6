"""LangChain messages to chatlog events and back, without loss. Pure: no I/O.

What maps to what? A LangChain message's type becomes chatlog's role (human: user,
ai: assistant, system: system, tool and function: tool; a `ChatMessage` keeps its role
when chatlog has it). Its text, `name`, tool calls (id, name, arguments as JSON text) and
`tool_call_id` become the event's own fields, so the read-model, the summarizer and
`Context.to_openai` understand them. A LangChain id that is a valid chatlog id becomes
the `message_id`, so adding the same message twice (a retry) is stored once.

Everything else (`additional_kwargs`, `response_metadata`, `usage_metadata`, content
blocks, artifacts, a `None` or non-chatlog id, the exact class) goes, as JSON, into one
metadata entry, ``langchain.fields``, holding only what the native fields cannot say.
Reading rebuilds the message from the native fields and lays that entry over them, so
`from_chatlog(to_chatlog(m)) == m` for every message whose fields are JSON values.

Two more things travel in messages and never reach LangChain: the summary, shown as a
leading `SystemMessage` marked with ``additional_kwargs["chatlog_summary"]`` (and never
stored back), and the ``langchain.cleared_through`` mark that `clear()` relies on (see
`chatlog.integrations.langchain`). Messages written by other chatlog clients have no
``langchain.*`` entries; their metadata shows as ``response_metadata["chatlog_metadata"]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from chatlog.schemas.errors import MissingExtra

try:
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        ChatMessage,
        FunctionMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
        messages_from_dict,
    )
except ImportError as missing:
    raise MissingExtra.needs("langchain", "the LangChain message conversion", missing) from missing

from chatlog.projections.context import SUMMARY_PREAMBLE
from chatlog.projections.view import Message
from chatlog.schemas.errors import InvalidId, InvalidInput
from chatlog.schemas.events import Role, ToolCall
from chatlog.schemas.ids import new_id, validate_id

__all__ = [
    "CLEARED_KEY",
    "FIELDS_KEY",
    "METADATA_KWARG",
    "REDACTED_KWARG",
    "SUMMARY_KWARG",
    "StoredFields",
    "cleared_through",
    "from_chatlog",
    "is_summary",
    "summary_message",
    "to_chatlog",
]

FIELDS_KEY = "langchain.fields"
CLEARED_KEY = "langchain.cleared_through"
SUMMARY_KWARG = "chatlog_summary"
METADATA_KWARG = "chatlog_metadata"
REDACTED_KWARG = "chatlog_redacted"
_OURS = "langchain."

_ROLES = frozenset(role.value for role in Role)
# OpenAI's "developer" role is its new name for "system".
_CHAT_ROLES = {"developer": Role.SYSTEM}


@dataclass(frozen=True, slots=True)
class StoredFields:
    """The fields of a `MessageAppended` that stores one LangChain message."""

    message_id: str
    role: Role
    content: str
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def to_chatlog(message: BaseMessage, *, cleared_through: int = -1) -> StoredFields:
    """What to append for `message`; `cleared_through` >= 0 marks the session's last clear.

    Raises `InvalidInput` for a message chatlog cannot store (a `RemoveMessage`, fields
    that are not JSON values).
    """
    role = _role(message)
    content = message.content if isinstance(message.content, str) else _text(message)
    stored = StoredFields(
        message_id=_message_id(message.id),
        role=role,
        content=content,
        name=message.name,
        tool_calls=_tool_calls(message) if isinstance(message, AIMessage) else (),
        tool_call_id=message.tool_call_id if isinstance(message, ToolMessage) else None,
    )
    original = message.model_dump()
    native = _native(stored).model_dump()
    base = _base(native, original["type"])
    extras = {k: v for k, v in original.items() if k not in base or base[k] != v}
    metadata = {FIELDS_KEY: _json(extras, message)} if extras else {}
    if cleared_through >= 0:
        metadata[CLEARED_KEY] = str(cleared_through)
    return replace(stored, metadata=metadata)


def from_chatlog(message: Message) -> BaseMessage:
    """The LangChain message a stored chatlog message stands for."""
    stored = StoredFields(
        message_id=message.message_id,
        role=Role(message.role),
        content=message.content,
        name=message.name,
        tool_calls=message.tool_calls,
        tool_call_id=message.tool_call_id,
    )
    raw = message.metadata.get(FIELDS_KEY)
    if raw is not None:
        restored = _restore(stored, raw)
        if restored is not None:
            return restored
    notes: dict[str, Any] = {}
    foreign = {k: v for k, v in message.metadata.items() if not k.startswith(_OURS)}
    if foreign:
        notes[METADATA_KWARG] = foreign
    if message.redacted:
        notes[REDACTED_KWARG] = True
    return _native(stored, response_metadata=notes)


def cleared_through(message: Message) -> int:
    """The offset of the last clear `message` was written after; -1 if it names none."""
    raw = message.metadata.get(CLEARED_KEY)
    try:
        return int(raw) if raw is not None else -1
    except ValueError:
        return -1


def summary_message(summary: str, *, through_offset: int) -> SystemMessage:
    """The rolling summary as the leading message of a history."""
    return SystemMessage(
        content=SUMMARY_PREAMBLE + summary,
        id=f"chatlog-summary-{through_offset}",
        additional_kwargs={SUMMARY_KWARG: {"through_offset": through_offset}},
    )


def is_summary(message: BaseMessage) -> bool:
    """Whether `message` is a summary `summary_message` made (never stored again)."""
    return isinstance(message, SystemMessage) and SUMMARY_KWARG in message.additional_kwargs


def _role(message: BaseMessage) -> Role:
    if isinstance(message, ChatMessage):
        role = _CHAT_ROLES.get(message.role, message.role)
        return Role(role) if role in _ROLES else Role.USER
    for cls, role in (
        (HumanMessage, Role.USER),
        (AIMessage, Role.ASSISTANT),
        (SystemMessage, Role.SYSTEM),
        (ToolMessage, Role.TOOL),
        (FunctionMessage, Role.TOOL),
    ):
        if isinstance(message, cls):
            return role
    raise InvalidInput(
        f"a LangChain {type(message).__name__} (type {message.type!r}) is not a chat message "
        f"chatlog can store; add human, ai, system, tool, function or chat messages"
    )


def _text(message: BaseMessage) -> str:
    """The text of content blocks (a property since langchain-core 1.0, a method before)."""
    text: Any = message.text
    return str(text) if isinstance(text, str) else str(text())


def _message_id(langchain_id: str | None) -> str:
    if langchain_id is None:
        return new_id()
    try:
        return validate_id(langchain_id, field="message_id")
    except InvalidId:
        return new_id()  # the original id travels in langchain.fields


def _tool_calls(message: AIMessage) -> tuple[ToolCall, ...]:
    calls = []
    for call in message.tool_calls:
        try:
            arguments = json.dumps(call["args"], ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                f"the arguments of tool call {call.get('id')!r} ({call['name']}) are not "
                f"JSON values, so chatlog cannot store them: {exc}"
            ) from exc
        calls.append(ToolCall(id=call.get("id") or "", name=call["name"], arguments=arguments))
    return tuple(calls)


def _native(
    stored: StoredFields, *, response_metadata: Mapping[str, Any] | None = None
) -> BaseMessage:
    """The message the native fields alone describe."""
    common: dict[str, Any] = {
        "content": stored.content,
        "id": stored.message_id,
        "name": stored.name,
        "response_metadata": dict(response_metadata or {}),
    }
    if stored.role is Role.USER:
        return HumanMessage(**common)
    if stored.role is Role.SYSTEM:
        return SystemMessage(**common)
    if stored.role is Role.TOOL:
        return ToolMessage(tool_call_id=stored.tool_call_id or "", **common)
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    for call in stored.tool_calls:
        try:
            args = json.loads(call.arguments)
        except ValueError:
            args = None
        if isinstance(args, dict):
            calls.append({"name": call.name, "args": args, "id": call.id, "type": "tool_call"})
        else:
            # Written by another client: LangChain's place for calls it cannot parse.
            invalid.append(
                {
                    "name": call.name,
                    "args": call.arguments,
                    "id": call.id,
                    "error": "the arguments are not a JSON object",
                    "type": "invalid_tool_call",
                }
            )
    return AIMessage(tool_calls=calls, invalid_tool_calls=invalid, **common)


def _base(native: dict[str, Any], original_type: str) -> dict[str, Any]:
    """What the extras are laid over: the native message's fields, or only its content
    and id when the original was of another class (a chunk, a chat or function message)."""
    if native["type"] == original_type:
        return native
    return {"content": native["content"], "id": native["id"]}


def _restore(stored: StoredFields, raw: str) -> BaseMessage | None:
    try:
        extras = json.loads(raw)
        if not isinstance(extras, dict):
            return None
        native = _native(stored).model_dump()
        data = {**_base(native, extras.get("type", native["type"])), **extras}
        return messages_from_dict([{"type": data["type"], "data": data}])[0]
    except (ValueError, TypeError, KeyError):
        return None  # not written by this module: show the native fields


def _json(extras: dict[str, Any], message: BaseMessage) -> str:
    try:
        return json.dumps(extras, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        fields = ", ".join(sorted(extras))
        raise InvalidInput(
            f"a LangChain {type(message).__name__} has fields chatlog cannot store as JSON "
            f"(among {fields}): {exc}"
        ) from exc
