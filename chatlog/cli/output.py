"""How the CLI shows things: a command's result for people or as JSON (``--json``), and
the text of a context and of a session list, which the demo (`dev/demo.py`) shows too."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from chatlog.projections.context import Context, render_summary
from chatlog.projections.store import SessionEntry

__all__ = [
    "context_lines",
    "iso",
    "one_line",
    "print_result",
    "session_json",
    "session_rows",
]


def print_result(result: Any, *, as_json: bool) -> None:
    """A command's result: JSON on one line with `as_json`, else `key: value` lines (a
    dict), one `key=value` line per item (a list), or the value itself."""
    if result is None:
        return
    if as_json:
        print(json.dumps(result, indent=None, default=str))
    elif isinstance(result, list):
        for item in result:
            print("  ".join(f"{k}={v}" for k, v in item.items() if v not in ("", None)))
    elif isinstance(result, dict):
        for key, value in result.items():
            print(f"{key}: {value}")
    else:
        print(result)


def context_lines(
    ctx: Context, messages: Sequence[dict[str, Any]], *, system: str | None = None
) -> list[str]:
    """A header line, then one line per message of `messages`.

    `messages` is ``ctx.to_openai(system=system, ...)``: the system prompt and the summary
    (when there are) come first, then the turns that fit the token budget.
    """
    held = len(ctx.messages)
    overflow = max(0, held - ctx.window_size)
    turns = len(messages) - bool(system) - bool(ctx.summary)
    header = [
        f"session {ctx.session_id}",
        f"owner {ctx.user_id}",
        f"position {ctx.position}",
        f"{ctx.message_count} messages",
    ]
    if held != ctx.message_count:
        header[-1] += f" ({held} held: {overflow} overflow + {held - overflow} window)"
    elif overflow:
        header[-1] += f" ({overflow} overflow + {held - overflow} window)"
    if turns < held:
        header.append(f"showing the newest {turns}")
    if ctx.summary:
        header.append(f"summary through offset {ctx.summary_through}")
    elif ctx.summary_withheld:
        # Said out loud: the turns it covered are in no message and no summary for now.
        header.append(
            f"summary through offset {ctx.summary_through} withheld (a redaction; being rebuilt)"
        )
    if ctx.title:
        header.append(f"title {ctx.title!r}")
    return ["  ".join(header), *(_message_line(m, ctx) for m in messages)]


def _is_summary(message: dict[str, Any], ctx: Context) -> bool:
    return bool(ctx.summary) and message == render_summary(ctx.summary or "", ctx.summary_role)


def _message_line(message: dict[str, Any], ctx: Context) -> str:
    if _is_summary(message, ctx):
        return f"[summary] {one_line(ctx.summary or '')}"
    label = message["role"]
    if message.get("name"):
        label += f":{message['name']}"
    parts = [f"[{label}]"]
    if message.get("content"):
        parts.append(one_line(message["content"]))
    for call in message.get("tool_calls", ()):
        function = call["function"]
        parts.append(f"-> {function['name']}({one_line(function['arguments'])})")
    return " ".join(parts)


def one_line(text: str) -> str:
    """`text` on one line: each line break shown as ⏎."""
    return text.replace("\r\n", "\n").replace("\n", " ⏎ ")


def session_json(entry: SessionEntry) -> dict[str, Any]:
    return {
        "session_id": entry.session_id,
        "title": entry.title,
        "status": entry.status.value,
        "message_count": entry.message_count,
        "created_at": iso(entry.created_at_ms),
        "last_activity": iso(entry.updated_at_ms),
    }


def session_rows(entries: Sequence[SessionEntry]) -> list[str]:
    """An aligned table of `entries` with a heading; no lines for no entries."""
    if not entries:
        return []
    rows = [("SESSION", "STATUS", "MESSAGES", "LAST ACTIVITY", "TITLE")]
    rows += [
        (
            e.session_id,
            e.status.value,
            str(e.message_count),
            iso(e.updated_at_ms),
            e.title or "-",
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  "
        f"{r[3]:<{widths[3]}}  {r[4]}"
        for r in rows
    ]


def iso(ms: int) -> str:
    """Epoch milliseconds as an ISO 8601 UTC time with milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
