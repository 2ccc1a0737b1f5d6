"""How a `SessionView` is laid out in Redis, and the smallest write that updates it.

A view becomes a meta hash (scalars) and a list of messages (one compact JSON document
each, oldest first). Rewriting the whole list on every event would multiply the write
volume by the window size, so `diff` computes what changed between the stored view and
the new one: how many messages to drop from the left (evicted or summarized), which to
overwrite in place (redacted), which to append. Pure: no Redis here.

Sealed fields are stored as the event carried them (`SealedFields`, base64 in the JSON):
a message's under ``s``, the title's and the summary's in their own meta fields.
"""

from __future__ import annotations

import base64
import json
import re
from binascii import a2b_base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from chatlog.projections.tasks import Task, TaskStatus
from chatlog.projections.view import (
    Message,
    SealedFields,
    SessionStatus,
    SessionView,
    place_values,
)
from chatlog.schemas.events import ToolCall

__all__ = [
    "META_DEFAULTS",
    "MessagesDelta",
    "decode_tasks",
    "decode_view",
    "diff",
    "encode_message",
    "encode_meta",
    "encode_tasks",
    "loads",
]

_NONE = ""

# Meta fields added after views were first stored, with the value a view stored before
# them has: absent means this. The projector writes only the fields that change, so an
# older view may lack them for good.
META_DEFAULTS = {
    "first_offset": "-1",
    "closed_through": "-1",
    "summary_withheld": "0",
    "redacted_at": "-1",
    "tasks": "[]",
}
_PLAIN = re.compile(r"[A-Za-z0-9_.@-]*")  # ids, and paths of plain names: nothing to escape


def encode_message(message: Message) -> str:
    """One message as compact JSON (short keys: it is stored once per message)."""
    doc: dict[str, object] = {
        "o": message.offset,
        "id": message.message_id,
        "r": message.role,
        "c": message.content,
        "t": message.occurred_at_ms,
    }
    if message.name is not None:
        doc["n"] = message.name
    if message.tool_calls:
        doc["tc"] = [[c.id, c.name, c.arguments] for c in message.tool_calls]
    if message.tool_call_id is not None:
        doc["tid"] = message.tool_call_id
    if message.metadata:
        doc["m"] = dict(message.metadata)
    if message.redacted:
        doc["x"] = 1
    # orjson writes what `json.dumps(doc, ensure_ascii=False, separators=(",", ":"))`
    # does (compact, UTF-8 unescaped), in a fifth of its time: one call per message written.
    text = orjson.dumps(doc).decode()
    if message.sealed is None:
        return text
    # Spliced in rather than dumped with the rest: base64 needs no escaping, and the
    # JSON encoder's scan of it was a tenth of what a sealed event costs the projector.
    return f'{text[:-1]},"s":{_sealed_json(message.sealed)}}}'


def _sealed_json(sealed: SealedFields) -> str:
    fields = ",".join(
        f'{_quoted(path)}:"{base64.b64encode(blob).decode()}"'
        for path, blob in sealed.fields.items()
    )
    return f"[{_quoted(sealed.event_id)},{_quoted(sealed.key_id)},{{{fields}}}]"


def _quoted(text: str) -> str:
    """`text` as a JSON string: ids and most paths need no escaping, so skip the encoder."""
    if _PLAIN.fullmatch(text):
        return f'"{text}"'
    return orjson.dumps(text).decode()


def decode_message(
    raw: str | bytes, open_values: Callable[[SealedFields], Mapping[str, str]] | None = None
) -> Message:
    """The message `encode_message` wrote; with `open_values` (which opens sealed fields,
    `chatlog.projections.opening.ViewOpener.values_for`), opened as it is decoded."""
    # A read decodes every message it returns: no generator or default dict made for
    # fields a message does not have, and the positional constructor (the field order of
    # `Message`), about a quarter cheaper than keywords.
    doc = loads(raw)
    content, name, metadata = doc["c"], doc.get("n"), doc.get("m") or {}
    listed = doc.get("tc")
    calls = tuple(ToolCall(id=i, name=n, arguments=a) for i, n, a in listed) if listed else ()
    sealed = _sealed_of(doc.get("s"))
    if sealed is not None and open_values is not None:
        content, name, calls, metadata = place_values(
            open_values(sealed),
            message_id=doc["id"],
            content=content,
            name=name,
            calls=calls,
            metadata=metadata,
        )
        sealed = None
    return Message(
        doc["o"],
        doc["id"],
        doc["r"],
        content,
        doc["t"],
        name,
        calls,
        doc.get("tid"),
        metadata,
        bool(doc.get("x")),
        sealed,
    )


def loads(raw: str | bytes) -> Any:
    """A stored JSON document (a message, sealed fields), parsed.

    orjson parses a message in about a quarter of `json.loads`'s time, from bytes as
    Redis returns them. What it refuses and `json.loads` accepts (lone surrogates, NaN,
    numbers beyond a double) `json.loads` still parses, so no stored document reads
    differently than before.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _sealed_of(doc: list[Any] | None) -> SealedFields | None:
    if doc is None:
        return None
    event_id, key_id, fields = doc
    return SealedFields(event_id, key_id, {path: a2b_base64(b64) for path, b64 in fields.items()})


def _sealed_text(sealed: SealedFields | None) -> str:
    return _NONE if sealed is None else _sealed_json(sealed)


def _sealed_field(text: str | None) -> SealedFields | None:
    return _sealed_of(loads(text)) if text else None


def encode_meta(view: SessionView, *, window: int) -> dict[str, str]:
    """The meta hash of `view`; `window` tells readers how many messages are recent."""
    return {
        "session_id": view.session_id,
        "user_id": view.user_id,
        "tenant": view.tenant,
        "partition": str(view.partition),
        "last_offset": str(view.last_offset),
        "first_offset": str(view.first_offset),
        "closed_through": str(view.closed_through),
        "created_at": str(view.created_at_ms),
        "updated_at": str(view.updated_at_ms),
        "status": view.status.value,
        "title": _NONE if view.title is None else view.title,
        "title_sealed": _sealed_text(view.title_sealed),
        "message_count": str(view.message_count),
        "summary": _NONE if view.summary is None else view.summary,
        "summary_sealed": _sealed_text(view.summary_sealed),
        "summary_through": str(view.summary_through),
        "summary_model": _NONE if view.summary_model is None else view.summary_model,
        "summary_covered": str(view.summary_covered),
        "overflow_dropped": str(view.overflow_dropped),
        "summary_withheld": "1" if view.summary_withheld else "0",
        "redacted_at": str(view.redacted_at),
        "tasks": encode_tasks(view.tasks),
        "window": str(window),
    }


def decode_view(meta: Mapping[str, str], messages: Sequence[str | bytes]) -> SessionView | None:
    """The view stored as `meta` and `messages`; None when there is no meta."""
    if not meta:
        return None
    title_sealed = _sealed_field(meta.get("title_sealed"))
    summary_sealed = _sealed_field(meta.get("summary_sealed"))
    return SessionView(
        session_id=meta["session_id"],
        user_id=meta["user_id"],
        tenant=meta["tenant"],
        partition=int(meta["partition"]),
        last_offset=int(meta["last_offset"]),
        first_offset=int(meta.get("first_offset", META_DEFAULTS["first_offset"])),
        closed_through=int(meta.get("closed_through", META_DEFAULTS["closed_through"])),
        created_at_ms=int(meta["created_at"]),
        updated_at_ms=int(meta["updated_at"]),
        status=SessionStatus(meta["status"]),
        # A sealed one's placeholder is the empty string, as in the event.
        title=meta["title"] if title_sealed else meta["title"] or None,
        messages=tuple(decode_message(raw) for raw in messages),
        message_count=int(meta["message_count"]),
        summary=meta["summary"] if summary_sealed else meta["summary"] or None,
        summary_through=int(meta["summary_through"]),
        summary_model=meta["summary_model"] or None,
        summary_covered=int(meta["summary_covered"]),
        overflow_dropped=int(meta["overflow_dropped"]),
        summary_withheld=meta.get("summary_withheld", META_DEFAULTS["summary_withheld"]) == "1",
        redacted_at=int(meta.get("redacted_at", META_DEFAULTS["redacted_at"])),
        title_sealed=title_sealed,
        summary_sealed=summary_sealed,
        tasks=decode_tasks(meta.get("tasks", META_DEFAULTS["tasks"])),
    )


_TASK_FIELDS = (
    "task_id",
    "kind",
    "status",
    "offset",
    "started_at_ms",
    "updated_at_ms",
    "heartbeat_at_ms",
    "ended_at_ms",
    "progress",
    "input",
    "note",
    "result",
    "error",
    "reason",
)


def encode_tasks(tasks: Sequence[Task]) -> str:
    """A session's tasks as one JSON list (a meta field: a session has few tasks)."""
    if not tasks:
        return "[]"  # most sessions: the meta of every write carries it
    docs = []
    for task in tasks:
        doc: dict[str, Any] = {name: getattr(task, name) for name in _TASK_FIELDS}
        doc["status"] = task.status.value
        doc["sealed"] = [json.loads(_sealed_json(entry)) for entry in task.sealed]
        docs.append(doc)
    return orjson.dumps(docs).decode()


def decode_tasks(text: str) -> tuple[Task, ...]:
    """The tasks `encode_tasks` wrote."""
    tasks = []
    for doc in json.loads(text or "[]"):
        sealed = tuple(entry for entry in map(_sealed_of, doc.pop("sealed", ())) if entry)
        doc["status"] = TaskStatus(doc["status"])
        tasks.append(Task(**doc, sealed=sealed))
    return tuple(tasks)


@dataclass(frozen=True, slots=True)
class MessagesDelta:
    """Turns the stored message list into the new one: trim, then overwrite, then append."""

    trim_left: int = 0
    overwrite: tuple[tuple[int, str], ...] = ()
    append: tuple[str, ...] = ()
    replace_all: tuple[str, ...] | None = field(default=None)


def diff(old: Sequence[Message], new: Sequence[Message]) -> MessagesDelta:
    """The delta from `old` to `new` (both ordered by offset, as views keep them)."""
    if not new:
        return MessagesDelta(trim_left=len(old))
    # Evolve drops from the left (eviction, summaries), so `new` starts inside `old`.
    first = new[0].offset
    trim = 0
    while trim < len(old) and old[trim].offset < first:
        trim += 1
    kept = old[trim:]
    if len(kept) > len(new):
        return _replace_all(new)
    overwrite = []
    for index, (before, after) in enumerate(zip(kept, new, strict=False)):
        if before is after:
            continue  # evolve reuses unchanged messages: identity is the cheap, common case
        if before.offset != after.offset:
            return _replace_all(new)  # not a trim-and-append shape: write it whole
        if before != after:
            overwrite.append((index, encode_message(after)))
    append = tuple(encode_message(m) for m in new[len(kept) :])
    return MessagesDelta(trim_left=trim, overwrite=tuple(overwrite), append=append)


def _replace_all(messages: Sequence[Message]) -> MessagesDelta:
    return MessagesDelta(replace_all=tuple(encode_message(m) for m in messages))
