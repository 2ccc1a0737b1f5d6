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

Can stored metadata make a message something it is not? No. The event's role alone says
what kind of message it is, and its tool calls alone which tools it called. A
``langchain.fields`` entry that would say otherwise (a user's message restored as a
`SystemMessage` or a ``developer`` `ChatMessage`, an `AIMessage` with tool calls the event
does not have, in ``tool_calls``, ``invalid_tool_calls``, the OpenAI-style
``additional_kwargs`` or tool-call content blocks) is ignored as a whole: the message is
rebuilt from the event's own fields and marked
``response_metadata["chatlog_ignored_metadata"]`` with the key and the reason. Ignored
rather than refused, so that one forged message cannot make a whole session unreadable.
Writers other than this integration cannot write ``langchain.*`` keys at all
(`chatlog.producers.commands`); this check covers events that reached the log by another
road.

Two more things travel in messages and never reach LangChain: the summary, shown as a
leading message marked with ``additional_kwargs["chatlog_summary"]`` (quoted data in a
`HumanMessage` by default, a `SystemMessage` with ``CHATLOG_SUMMARY_ROLE=system``; never
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

from chatlog.producers.commands import LANGCHAIN_METADATA
from chatlog.projections.context import SummaryRole, render_summary
from chatlog.projections.view import Message
from chatlog.schemas.errors import InvalidId, InvalidInput
from chatlog.schemas.events import Role, ToolCall
from chatlog.schemas.ids import new_id, validate_id

__all__ = [
    "CLEARED_KEY",
    "FIELDS_KEY",
    "IGNORED_KWARG",
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

_OURS = LANGCHAIN_METADATA.prefix
FIELDS_KEY = _OURS + "fields"
CLEARED_KEY = _OURS + "cleared_through"
SUMMARY_KWARG = "chatlog_summary"
METADATA_KWARG = "chatlog_metadata"
REDACTED_KWARG = "chatlog_redacted"
IGNORED_KWARG = "chatlog_ignored_metadata"

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
    notes: dict[str, Any] = {}
    if raw is not None:
        restored = _restore(stored, raw)
        contradiction = None if restored is None else _contradiction(restored, stored)
        if restored is not None and contradiction is None:
            return restored
        if contradiction is not None:
            notes[IGNORED_KWARG] = {FIELDS_KEY: contradiction}
    foreign = {k: v for k, v in message.metadata.items() if not k.startswith(_OURS)}
    if foreign:
        notes[METADATA_KWARG] = foreign
    if message.redacted:
        notes[REDACTED_KWARG] = True
    return _native(stored, response_metadata=notes)


def cleared_through(message: Message) -> int:
    """The offset of the last clear `message` was written after; -1 if it names none.

    A clear comes before every message that names it; a mark at or past the message's own
    offset is not one this integration wrote, and would hide the messages after it."""
    raw = message.metadata.get(CLEARED_KEY)
    try:
        mark = int(raw) if raw is not None else -1
    except ValueError:
        return -1
    return mark if mark < message.offset else -1


def summary_message(
    summary: str, *, through_offset: int, role: SummaryRole | str = SummaryRole.DATA
) -> HumanMessage | SystemMessage:
    """The rolling summary as the leading message of a history, rendered as `to_openai`
    renders it: quoted data in a `HumanMessage`, or (`SummaryRole.SYSTEM`) a `SystemMessage`."""
    rendered = render_summary(summary, role)
    cls = SystemMessage if rendered["role"] == "system" else HumanMessage
    return cls(
        content=rendered["content"],
        id=f"chatlog-summary-{through_offset}",
        additional_kwargs={SUMMARY_KWARG: {"through_offset": through_offset}},
    )


def is_summary(message: BaseMessage) -> bool:
    """Whether `message` is a summary `summary_message` made (never stored again)."""
    return (
        isinstance(message, HumanMessage | SystemMessage)
        and SUMMARY_KWARG in message.additional_kwargs
    )


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
    """Every call the message makes, valid or not: LangChain's OpenAI converters send its
    invalid calls as tool calls too, so the event must say them (their arguments raw)."""
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
    for invalid in message.invalid_tool_calls:
        calls.append(
            ToolCall(
                id=invalid.get("id") or "",
                name=invalid.get("name") or "",
                arguments=invalid.get("args") or "",
            )
        )
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


def _contradiction(restored: BaseMessage, stored: StoredFields) -> str | None:
    """Why `restored` says something the event does not (another role, other tool calls);
    None when it agrees with the event's own fields."""
    try:
        role = _role(restored)
    except InvalidInput:
        role = None
    if role is not stored.role:
        shown = role.value if role else restored.type
        return f"it says {shown!r} where the event's role is {stored.role.value!r}"
    if SUMMARY_KWARG in restored.additional_kwargs:
        return "it marks the message as chatlog's summary, which is never stored"
    native = _native(stored)
    if _calls(restored) != _calls(native):
        return "it would give the message tool calls the event does not have"
    called = {(call.id, call.name) for call in stored.tool_calls}
    # What OpenAI-style converters send as tool calls when the message's own list is empty.
    raw_calls = restored.additional_kwargs.get("tool_calls") or []
    function_call = restored.additional_kwargs.get("function_call")
    claimed: list[tuple[str, str] | None] = (
        [_openai_call(call) for call in raw_calls] if isinstance(raw_calls, list) else [None]
    )
    if function_call is not None:
        claimed.append(_openai_call({"id": "", "function": function_call}))
    if isinstance(restored.content, list):
        claimed += [
            _block_call(block)
            for block in restored.content
            if isinstance(block, dict) and block.get("type") in _CALL_BLOCKS
        ]
    if not all(c is not None and _among(c, called) for c in claimed):
        return "its additional_kwargs or content blocks name tool calls the event does not have"
    return None


def _among(claim: tuple[str, str], called: set[tuple[str, str]]) -> bool:
    """Whether `claim` is one of the event's calls: the same name, and the same id unless
    one side has none (a legacy ``function_call`` has no id)."""
    claimed_id, name = claim
    return any(n == name and (i == claimed_id or "" in (i, claimed_id)) for i, n in called)


def _calls(message: BaseMessage) -> list[tuple[str, str, str]]:
    """The tool calls a message makes, valid or not, as comparable values: whether a call
    is valid is LangChain's parsing of its arguments, not a different call."""
    calls = [
        (call.get("id") or "", call["name"], _canonical(call["args"]))
        for call in getattr(message, "tool_calls", ())
    ]
    for call in getattr(message, "invalid_tool_calls", ()):
        raw = call.get("args") or ""
        try:
            args = json.loads(raw)
        except (TypeError, ValueError):
            args = raw
        calls.append((call.get("id") or "", call.get("name") or "", _canonical(args)))
    return sorted(calls)


def _canonical(args: Any) -> str:
    return json.dumps(args, sort_keys=True, ensure_ascii=False)


# Content blocks that converters send as tool calls (Anthropic's, OpenAI Responses', and
# LangChain's own standard blocks).
_CALL_BLOCKS = frozenset(
    ("tool_use", "function_call", "tool_call", "tool_call_chunk", "server_tool_call")
)


def _block_call(block: dict[str, Any]) -> tuple[str, str] | None:
    """(id, name) of a tool-call content block; None if it names no function."""
    name = block.get("name")
    if not isinstance(name, str):
        return None
    return (str(block.get("id") or block.get("call_id") or ""), name)


def _openai_call(call: object) -> tuple[str, str] | None:
    """(id, function name) of an OpenAI-style tool call; None if it is not one."""
    if not isinstance(call, dict):
        return None
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return None
    return (str(call.get("id") or ""), function["name"])


def _json(extras: dict[str, Any], message: BaseMessage) -> str:
    try:
        return json.dumps(extras, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        fields = ", ".join(sorted(extras))
        raise InvalidInput(
            f"a LangChain {type(message).__name__} has fields chatlog cannot store as JSON "
            f"(among {fields}): {exc}"
        ) from exc
