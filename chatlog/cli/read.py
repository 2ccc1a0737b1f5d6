"""The CLI's read commands: `context`, `sessions` and `tail`.

`context` and `sessions` read the Redis read-model, exactly as a chat back end does
(ownership checked, read-your-writes with ``--after``). `tail` reads the log itself: the
one partition of the events topic that holds the session, from its start, so it shows
what was published even when no projector runs. So does `context --as-of`, which folds
the session's events up to a past time or position (`chatlog.processors.kafka_history`): what the
bot saw then, with no projector and no Redis. `chatlog.cli` owns the parser and the exit
codes; the functions here take parsed arguments and either return what to print as JSON
or print as they go (`tail`). The text formatting is shared with the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from chatlog import wiring
from chatlog.processors.kafka_history import AsOf, log_consumer, read_as_of, usable
from chatlog.producers.kafka_topics import topic_partitions
from chatlog.producers.partitioning import partition_for
from chatlog.projections.context import SUMMARY_PREAMBLE, Context
from chatlog.projections.store import SessionEntry
from chatlog.schemas.errors import BrokerUnavailable, DecodeError, InvalidInput
from chatlog.schemas.events import ConversationEvent, MessageAppended, SummaryUpdated
from chatlog.schemas.ids import validate_id
from chatlog.schemas.position import Position
from chatlog.settings import Settings

__all__ = [
    "as_of_argument",
    "context",
    "context_lines",
    "iso",
    "parse_as_of",
    "partition_count",
    "session_rows",
    "sessions",
    "stop_on_signals",
    "tail",
]

_METADATA_TIMEOUT_S = 10.0


# -- context ------------------------------------------------------------------------


def context(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | None:
    """`chatlog context`: the session's context; JSON, or printed as a transcript."""
    if getattr(args, "as_of", None) is not None:
        return _context_as_of(args, settings)
    after = Position.parse(args.after) if args.after is not None else None
    reader = wiring.reader(settings)
    try:
        ctx = reader.context(
            args.session,
            user_id=args.user,
            after=after,
            timeout=args.timeout if args.timeout is not None else settings.read_timeout_s,
        )
    finally:
        reader.client.close()
    return _show_context(ctx, args)


def _context_as_of(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | None:
    """`chatlog context --as-of`: the context folded from the log; Redis is never asked."""
    read = read_as_of(
        args.session,
        user_id=args.user,
        as_of=args.as_of,
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.topic,
        policy=wiring.policy(settings),
        codec=wiring.codec(settings),
        config=settings.kafka,
        count_tokens=wiring.token_counter(settings),
        timeout=args.timeout if args.timeout is not None else _METADATA_TIMEOUT_S,
    )
    through = read.through
    source = {
        "source": "log",
        "requested": _as_of_text(args.as_of),
        # The last position of the log prefix folded (of any session on the partition).
        "through": str(through) if through is not None else None,
        "skipped": read.skipped,
    }
    return _show_context(read.context, args, as_of=source)


def _show_context(
    ctx: Context, args: argparse.Namespace, *, as_of: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    messages = ctx.to_openai(system=args.system, max_tokens=args.max_tokens)
    if not args.json:
        lines = context_lines(ctx, messages, system=args.system)
        if as_of is not None:
            lines[0] += f"  as of {as_of['requested']} (from the log, through {as_of['through']})"
        for line in lines:
            print(line)
        return None
    shown: dict[str, Any] = {
        "session_id": ctx.session_id,
        "user_id": ctx.user_id,
        "position": str(ctx.position),
        "message_count": ctx.message_count,
        "summary": ctx.summary,
        "messages": messages,
    }
    if as_of is not None:
        shown["as_of"] = as_of
    return shown


_POSITION = re.compile(r"[0-9]+:[0-9]+")
_EPOCH_MS = re.compile(r"[0-9]+")


def parse_as_of(text: str) -> AsOf:
    """An ``--as-of`` value: ``P:O`` (a position), epoch milliseconds, or an ISO 8601 time.

    A time without a timezone is taken as UTC. Raises `InvalidInput` naming the forms.
    """
    text = text.strip()
    if _POSITION.fullmatch(text):
        return Position.parse(text)
    try:
        if _EPOCH_MS.fullmatch(text):
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(text))
        at = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise InvalidInput(
            f"{text!r} is neither a time (ISO 8601 such as 2025-06-01T12:30:00Z, or "
            f"epoch milliseconds such as 1748781000000) nor a position (PARTITION:OFFSET "
            f"such as 3:1042)"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def as_of_argument(text: str) -> AsOf:
    """`parse_as_of` for argparse: a bad value is a usage error (exit status 2)."""
    try:
        return parse_as_of(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _as_of_text(as_of: AsOf) -> str:
    if isinstance(as_of, Position):
        return str(as_of)
    return as_of.astimezone(UTC).isoformat(timespec="milliseconds")


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
    if ctx.title:
        header.append(f"title {ctx.title!r}")
    return ["  ".join(header), *(_message_line(m, ctx) for m in messages)]


def _is_summary(message: dict[str, Any], ctx: Context) -> bool:
    return bool(ctx.summary) and message.get("content") == SUMMARY_PREAMBLE + (ctx.summary or "")


def _message_line(message: dict[str, Any], ctx: Context) -> str:
    if _is_summary(message, ctx):
        return f"[summary] {_one_line(ctx.summary or '')}"
    label = message["role"]
    if message.get("name"):
        label += f":{message['name']}"
    parts = [f"[{label}]"]
    if message.get("content"):
        parts.append(_one_line(message["content"]))
    for call in message.get("tool_calls", ()):
        function = call["function"]
        parts.append(f"-> {function['name']}({_one_line(function['arguments'])})")
    return " ".join(parts)


def _one_line(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", " ⏎ ")


# -- sessions -----------------------------------------------------------------------


def sessions(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]] | None:
    """`chatlog sessions`: the user's sessions, most recently active first."""
    reader = wiring.reader(settings)
    try:
        entries = reader.sessions(args.user, limit=args.limit)
    finally:
        reader.client.close()
    if args.json:
        return [_session_json(e) for e in entries]
    if not entries:
        print(f"no sessions for user {args.user}")
    for line in session_rows(entries):
        print(line)
    return None


def _session_json(entry: SessionEntry) -> dict[str, Any]:
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


# -- tail ---------------------------------------------------------------------------


def tail(args: argparse.Namespace, settings: Settings) -> None:
    """`chatlog tail`: print the session's events from the log, then follow new ones."""
    validate_id(args.session, field="session_id")
    consumer = log_consumer(settings.kafka_bootstrap, settings.kafka)
    try:
        partition, low, high = _locate(consumer, settings, args.session)
        if not args.json:
            span = f"offsets {low}..{high - 1}" if high > low else "empty"
            until = "following; Ctrl-C to stop" if args.follow else "up to its end"
            print(f"session {args.session}: {settings.topic}[{partition}] ({span}), {until}")
        shown = _read(
            consumer, settings, args, TopicPartition(settings.topic, partition, low), high
        )
        if not args.json and not args.follow:
            print(f"{shown} events of session {args.session}")
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep the interpreter's final
        # flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        consumer.close()


def _read(
    consumer: Consumer,
    settings: Settings,
    args: argparse.Namespace,
    start: TopicPartition,
    high: int,
) -> int:
    """Print the session's events from `start`; returns how many were shown."""
    if not args.follow and high <= start.offset:
        return 0
    key = args.session.encode("utf-8")
    codec = wiring.codec(settings)
    emit = _emit_json if args.json else _emit_text
    shown = 0
    consumer.assign([start])
    with stop_on_signals() as stop:
        while not stop.is_set():
            for message in consumer.consume(500, timeout=0.2):
                if usable(message, start) and message.key() == key:
                    shown += _show(message, codec.decode, emit, args.session)
            if not args.follow and _reached(consumer, start, high):
                break
    return shown


def _locate(consumer: Consumer, settings: Settings, session_id: str) -> tuple[int, int, int]:
    """The session's partition and that partition's low and high watermarks."""
    partition = partition_for(session_id, partition_count(consumer, settings))
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(settings.topic, partition), timeout=_METADATA_TIMEOUT_S
        )
    except KafkaException as exc:
        raise _no_broker(settings, exc) from exc
    return partition, low, high


def partition_count(client: Consumer | AdminClient, settings: Settings) -> int:
    """The events topic's partition count; a missing topic or broker is a one-line error."""
    return topic_partitions(
        client,
        settings.topic,
        bootstrap_servers=settings.kafka_bootstrap,
        timeout=_METADATA_TIMEOUT_S,
    )


def _no_broker(settings: Settings, exc: KafkaException) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"no Kafka broker answered at {settings.kafka_bootstrap} within "
        f"{_METADATA_TIMEOUT_S:g} s ({exc.args[0]}); start one (`make services`) or set "
        f"CHATLOG_KAFKA_BOOTSTRAP",
        bootstrap_servers=settings.kafka_bootstrap,
    )


def _reached(consumer: Consumer, start: TopicPartition, high: int) -> bool:
    [position] = consumer.position([TopicPartition(start.topic, start.partition)])
    # Before the first fetch the position is a negative sentinel (OFFSET_INVALID).
    return position.offset >= high


def _show(
    message: Message,
    decode: Callable[[bytes], ConversationEvent],
    emit: Callable[[Message, ConversationEvent], None],
    session_id: str,
) -> bool:
    where = f"{message.partition()}:{message.offset()}"
    try:
        event = decode(message.value() or b"")
    except DecodeError as exc:
        _warn(f"{where}: skipped an undecodable record: {exc.message}")
        return False
    if event.session_id != session_id:
        _warn(f"{where}: keyed {session_id} but the event names session {event.session_id}")
        return False
    emit(message, event)
    return True


def _emit_text(message: Message, event: ConversationEvent) -> None:
    payload = event.payload
    at = event.occurred_at.isoformat(timespec="milliseconds")
    line = f"{message.offset():>8}  {at}  {type(payload).__name__:<15}"
    if isinstance(payload, MessageAppended):
        label = payload.role.value + (f":{payload.name}" if payload.name else "")
        parts = [f"[{label}]", _one_line(payload.content)]
        parts += [f"-> {c.name}({c.arguments})" for c in payload.tool_calls]
        line += "  " + " ".join(part for part in parts if part)
    elif isinstance(payload, SummaryUpdated):
        line += f"  through offset {payload.through_offset} by {payload.model}"
    else:
        details = payload.model_dump(exclude_defaults=True)
        if details:
            line += "  " + " ".join(f"{k}={v}" for k, v in details.items())
    print(line.rstrip(), flush=True)


def _emit_json(message: Message, event: ConversationEvent) -> None:
    record = {
        "position": f"{message.partition()}:{message.offset()}",
        "offset": message.offset(),
        "occurred_at": event.occurred_at.isoformat(timespec="milliseconds"),
        "type": type(event.payload).__name__,
        "event_id": event.event_id,
        "session_id": event.session_id,
        "user_id": event.user_id,
        "payload": event.payload.model_dump(mode="json"),
    }
    print(json.dumps(record), flush=True)


def _warn(text: str) -> None:
    print(f"chatlog: warning: {text}", file=sys.stderr, flush=True)


# -- shared -------------------------------------------------------------------------


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT while the block runs; handlers restored after.

    The first signal asks for a clean stop; a second one gets the previous behaviour
    back (Ctrl-C twice interrupts a stop that hangs).
    """
    stop = threading.Event()
    watched = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.getsignal(signum) for signum in watched}

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        for each, handler in previous.items():
            signal.signal(each, handler)

    for signum in watched:
        signal.signal(signum, request_stop)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
