"""One log format for every chatlog process: plain lines for a terminal, JSON lines for a collector.

What does a line carry? The same fields in both formats: the time (UTC), the level, the
logger, the process (``projector``, ``summarizer``, ``gateway``, ``replay``, ...), the
message, and where the line is about one of them, the ``partition``, ``session_id`` and
``event_id``. ``CHATLOG_LOG_FORMAT`` (``plain`` or ``json``) picks the format.

Who sets logging up? `setup_logging`, called first thing by every process (the CLI's
`main`, a replay worker): one handler on the root logger, with the secret-masking
`RedactingFilter` in front of the formatter, so that every library's records (faust,
mode, aiokafka, uvicorn, httpx) come out in the same format, masked. faust's worker is
told not to set logging up itself (``override_logging=False``): it would clear the root
handlers and log in colour to stdout.

How does a line get its partition or session? Through ``extra=context(...)`` at the call
that knows them, not through a context variable: the projector applies one batch of many
partitions and sessions in one thread, and the summarizer interleaves many sessions on
one event loop, so a "current session" would have to be set and reset around every unit
of work, and one reset missed would stamp the wrong session on unrelated lines. An
``extra`` is only ever on the record it was given to.

What never goes into a log: a message's content (log ids, counts and reasons, never
``content``), secrets (masked by the filter, `chatlog.schemas.secrets`), and a request's
query string: the gateway's access lines (uvicorn's) name the path only, because a query
can hold the user's own words (``GET /v1/recall?q=...``, a context's ``recall=``). Pure: only
``logging`` and ``json``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, TextIO

from chatlog.schemas.secrets import RedactingFilter

__all__ = ["CONTEXT_FIELDS", "LogFormat", "context", "setup_logging"]

LogFormat = Literal["plain", "json"]

# The optional fields of a line, set through `context` (``extra=``) by the call that knows them.
CONTEXT_FIELDS = ("partition", "session_id", "event_id")

# Colour and cursor codes (a library's, or a progress line's) mean nothing to a collector.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def context(
    *, partition: int | None = None, session_id: str | None = None, event_id: str | None = None
) -> dict[str, Any]:
    """The ``extra=`` of a log call about a partition, a session or an event (None: not known)."""
    given = {"partition": partition, "session_id": session_id, "event_id": event_id}
    return {name: value for name, value in given.items() if value is not None}


def _utc(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _context_of(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in CONTEXT_FIELDS if hasattr(record, name)}


class PlainFormatter(logging.Formatter):
    """``<time> <LEVEL> <process> <logger>: <message> [partition=.. session_id=..]``."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record)} {record.levelname} {self.process} {record.name}: "
        line += record.getMessage()
        fields = _context_of(record)
        if fields:
            line += " [" + " ".join(f"{name}={value}" for name, value in fields.items()) + "]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, process, message, the context fields
    that are known, and ``exception`` (the traceback) when the record has one."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "process": self.process,
            "message": _ANSI.sub("", record.getMessage()),
        }
        line.update(_context_of(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # default=str: an id or a partition is written whatever type the caller had.
        return json.dumps(line, ensure_ascii=False, default=str)


_FORMATTERS: Mapping[str, type[PlainFormatter | JsonFormatter]] = {
    "plain": PlainFormatter,
    "json": JsonFormatter,
}


class _PathOnly(logging.Filter):
    """Drops the query string from uvicorn's access lines, whose arguments are (client,
    method, path with query, HTTP version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            target = str(args[2])
            if "?" in target:
                record.args = (args[0], args[1], target.split("?", 1)[0] + "?…", *args[3:])
        return True


def setup_logging(
    process: str,
    *,
    log_format: LogFormat = "plain",
    level: int = logging.INFO,
    kafka_level: int = logging.ERROR,
    stream: TextIO | None = None,
) -> None:
    """Send every record of this process to `stream` (stderr) in `log_format`.

    Replaces whatever handlers the root logger had (a second call, say once the settings
    are read, switches the format). `kafka_level` is librdkafka's (``chatlog.kafka``),
    whose transient retry warnings would bury what matters. Warnings (``warnings.warn``)
    and, for JSON, uncaught exceptions become records too: a raw line would break a
    collector's parsing.
    """
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    # The filter masks the message before any formatter (or a library's handler) sees it.
    handler.addFilter(RedactingFilter())
    handler.addFilter(_PathOnly())
    handler.setFormatter(_FORMATTERS[log_format](process))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("chatlog.kafka").setLevel(kafka_level)
    # Off, then on: `captureWarnings(True)` does nothing while it believes itself on, and
    # whoever replaced `warnings.showwarning` since (a `catch_warnings` block that ended, a
    # test runner) would keep the warnings from the log.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught if log_format == "json" else sys.__excepthook__


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    logging.getLogger("chatlog").critical("uncaught exception", exc_info=(kind, error, traceback))
