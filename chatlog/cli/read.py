"""The CLI's session commands: `publish`, `redact`, and the reads `context`, `sessions`
and `tail`.

`context` and `sessions` read the Redis read-model, exactly as a chat back end does
(ownership checked, read-your-writes with ``--after``). `tail` reads the log itself: the
one partition of the events topic that holds the session, from its start, so it shows
what was published even when no projector runs. So does `context --as-of`, which folds
the session's events up to a past time or position (`chatlog.processors.kafka_history`): what the
bot saw then, with no projector and no Redis. `chatlog.cli` owns the exit codes; the
functions here take parsed arguments and either return what to print as JSON or print as
they go (`tail`). The text formatting is in `chatlog.cli.output`, shared with the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from chatlog import wiring
from chatlog.cli.common import (
    METADATA_TIMEOUT_S,
    partition_count,
    positive_float,
    positive_int,
    stop_on_signals,
)
from chatlog.cli.output import context_lines, one_line, session_json, session_rows
from chatlog.client import ChatLog
from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.processors.kafka_history import AsOf, usable
from chatlog.producers.partitioning import partition_for
from chatlog.projections.context import Context
from chatlog.projections.opening import ERASED
from chatlog.schemas.audit import AuditAction
from chatlog.schemas.errors import (
    BrokerUnavailable,
    DecodeError,
    Erased,
    InvalidInput,
    SessionNotFound,
    Undecryptable,
)
from chatlog.schemas.events import ConversationEvent, MessageAppended, Role, SummaryUpdated
from chatlog.schemas.ids import validate_id
from chatlog.schemas.keyring import KeyEntries
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope
from chatlog.settings import Settings
from chatlog.task_commands import listed, now_ms

if TYPE_CHECKING:
    from chatlog.cli.common import Commands

__all__ = [
    "add_commands",
    "add_tenant",
    "as_of_argument",
    "audit_read",
    "context",
    "parse_as_of",
    "publish",
    "redact",
    "sessions",
    "tail",
    "tasks",
]


def add_commands(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `publish`, `redact`, `context`, `sessions`, `tasks` and `tail` to the parser's
    `commands`."""
    publish_command = commands.add_parser(
        "publish", parents=[common], help="append one message to a session"
    )
    publish_command.add_argument("session", help="session id")
    publish_command.add_argument("--user", required=True, help="user id (the session's owner)")
    publish_command.add_argument("--role", required=True, choices=[r.value for r in Role])
    publish_command.add_argument("--content", required=True, help="the message text")
    publish_command.add_argument("--name", help="author name (for tool or multi-agent messages)")
    add_tenant(publish_command)
    publish_command.set_defaults(handler=publish)

    redact_command = commands.add_parser(
        "redact",
        parents=[common],
        help="redact one message of a session (and withhold a summary that may hold it)",
    )
    redact_command.add_argument("--session", required=True, help="session id")
    redact_command.add_argument("--message", required=True, help="the message id to redact")
    redact_command.add_argument("--user", required=True, help="user id (the session's owner)")
    redact_command.add_argument("--reason", help="why (kept sealed in the log)")
    add_tenant(redact_command)
    redact_command.set_defaults(handler=redact)

    context_command = commands.add_parser(
        "context", parents=[common], help="a session's context, as a chat back end reads it"
    )
    context_command.add_argument("session", help="session id")
    context_command.add_argument("--user", required=True, help="the reading user (must own it)")
    add_tenant(context_command)
    when = context_command.add_mutually_exclusive_group()
    when.add_argument(
        "--after", metavar="P:O", help="wait until the projection has applied this position"
    )
    when.add_argument(
        "--as-of",
        type=as_of_argument,
        metavar="TIME|P:O",
        help="the context as it was at TIME (ISO 8601; no timezone means UTC; or epoch "
        "milliseconds) or right after the event at P:O, folded from the log itself "
        "(no projector or Redis needed)",
    )
    context_command.add_argument(
        "--max-tokens", type=positive_int, metavar="N", help="trim the oldest turns to fit"
    )
    context_command.add_argument("--system", metavar="TEXT", help="a system prompt to put first")
    context_command.add_argument(
        "--timeout",
        type=positive_float,
        metavar="S",
        help="how long --after may wait (default CHATLOG_READ_TIMEOUT_S); with --as-of, how "
        "long Kafka may stay silent (default 10)",
    )
    context_command.set_defaults(handler=context)

    sessions_command = commands.add_parser(
        "sessions", parents=[common], help="a user's sessions, most recently active first"
    )
    sessions_command.add_argument("user", help="user id")
    sessions_command.add_argument("--limit", type=positive_int, default=50, metavar="N")
    add_tenant(sessions_command)
    sessions_command.set_defaults(handler=sessions)

    tasks_command = commands.add_parser(
        "tasks",
        parents=[common],
        help="a user's long-running tasks (of one session with --session), newest first",
    )
    tasks_command.add_argument("--user", required=True, help="user id (the tasks' owner)")
    tasks_command.add_argument("--session", help="only this session's tasks")
    tasks_command.add_argument(
        "--limit", type=positive_int, default=50, metavar="N", help="sessions looked at"
    )
    add_tenant(tasks_command)
    tasks_command.set_defaults(handler=tasks)

    tail_command = commands.add_parser(
        "tail", parents=[common], help="a session's events from the log, then new ones"
    )
    tail_command.add_argument("session", help="session id")
    reader = tail_command.add_mutually_exclusive_group(required=True)
    reader.add_argument(
        "--user", metavar="U", help="show the session only if it is U's (else: not found)"
    )
    reader.add_argument(
        "--operator",
        action="store_true",
        help="show the session whoever owns it: an operator's read, recorded as such",
    )
    add_tenant(tail_command)
    tail_command.add_argument(
        "--no-follow",
        dest="follow",
        action="store_false",
        help="stop at the end of the log as it was at start",
    )
    tail_command.set_defaults(handler=tail)


def add_tenant(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--tenant", default="default", metavar="T", help="the tenant of the user (default: default)"
    )


def publish(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """`chatlog publish`: append one message; its position."""
    with wiring.producer(settings) as producer:
        position = producer.append(
            args.session,
            user_id=args.user,
            role=args.role,
            content=args.content,
            name=args.name,
            tenant=args.tenant,
        )
    return {"session_id": args.session, "position": str(position)}


def redact(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """`chatlog redact`: redact one message of the user's session; its position.
    Recorded in the audit trail, a refusal too, as `ChatLog.redact` records it."""
    with ChatLog(
        producer=wiring.producer(settings),
        reader=wiring.reader(settings),
        read_timeout_s=settings.read_timeout_s,
        history=wiring.kafka_history(settings),
        audit=wiring.audit_trail(settings),
    ) as log:
        position = log.redact(
            args.session, args.message, user_id=args.user, tenant=args.tenant, reason=args.reason
        )
    return {"session_id": args.session, "message_id": args.message, "position": str(position)}


# -- context ------------------------------------------------------------------------


def context(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | None:
    """`chatlog context`: the session's context; JSON, or printed as a transcript.

    The operator names the user, so it shows any user's session: audited before it reads.
    """
    if getattr(args, "as_of", None) is not None:
        return _context_as_of(args, settings)
    after = Position.parse(args.after) if args.after is not None else None
    audit_read(settings, session_id=args.session, user_id=args.user, details={"via": "context"})
    reader = wiring.reader(settings)
    try:
        ctx = reader.context(
            args.session,
            user_id=args.user,
            tenant=args.tenant,
            after=after,
            timeout=args.timeout if args.timeout is not None else settings.read_timeout_s,
        )
    finally:
        reader.client.close()
    return _show_context(ctx, args)


def _context_as_of(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | None:
    """`chatlog context --as-of`: the context folded from the log; Redis is never asked.

    An operator's read of any user's past: audited before anything is read.
    """
    audit_read(
        settings,
        session_id=args.session,
        user_id=args.user,
        details={"via": "context --as-of", "as_of": _as_of_text(args.as_of)},
    )
    read = wiring.kafka_history(settings).read(
        args.session,
        user_id=args.user,
        tenant=args.tenant,
        as_of=args.as_of,
        timeout=args.timeout if args.timeout is not None else METADATA_TIMEOUT_S,
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
        "summary_withheld": ctx.summary_withheld,
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


# -- sessions -----------------------------------------------------------------------


def sessions(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]] | None:
    """`chatlog sessions`: the user's sessions, most recently active first (audited: the
    operator names any user)."""
    audit_read(settings, user_id=args.user, details={"via": "sessions"})
    reader = wiring.reader(settings)
    try:
        entries = reader.sessions(args.user, tenant=args.tenant, limit=args.limit)
    finally:
        reader.client.close()
    if args.json:
        return [session_json(e) for e in entries]
    if not entries:
        print(f"no sessions for user {args.user}")
    for line in session_rows(entries):
        print(line)
    return None


# -- tasks --------------------------------------------------------------------------


def tasks(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]] | None:
    """`chatlog tasks`: the user's tasks with their status now (`stalled` included),
    newest first (audited, as `sessions`)."""
    audit_read(settings, user_id=args.user, session_id=args.session, details={"via": "tasks"})
    reader = wiring.reader(settings)
    try:
        if args.session is not None:
            context = reader.context(
                args.session,
                user_id=args.user,
                tenant=args.tenant,
                timeout=settings.read_timeout_s,
            )
            by_session = [(args.session, context.tasks)]
        else:
            entries = reader.sessions(args.user, tenant=args.tenant, limit=args.limit)
            by_session = [(entry.session_id, entry.tasks) for entry in entries]
    finally:
        reader.client.close()
    found = listed(by_session, now_ms=now_ms(), stall_ms=int(settings.task_stall_s * 1000))
    if args.json:
        return [task.to_dict() for task in found]
    if not found:
        print(f"no tasks for user {args.user}")
    for task in found:
        progress = "" if task.progress is None else f"{task.progress:.0%}"
        print(f"{task.task_id}  {task.kind}  {task.status.value}  {progress}  {task.session_id}")
    return None


# -- tail ---------------------------------------------------------------------------


def audit_read(
    settings: Settings,
    *,
    details: dict[str, object],
    session_id: str | None = None,
    user_id: str | None = None,
) -> None:
    """Record an operator's read that bypasses ownership, before it reads: no record, no
    read (an audit trail that cannot be written refuses the read, never skips the record).

    Every read command is one: whoever runs it names the user (or none, for `tail`); the
    HTTP gateway will read as the authenticated principal instead."""
    if session_id is not None:
        validate_id(session_id, field="session_id")
    if user_id is not None:
        validate_id(user_id, field="user_id")
    trail = wiring.audit_trail(settings)
    try:
        trail.record(
            AuditAction.OPERATOR_READ, user_id=user_id, session_id=session_id, details=details
        )
    finally:
        trail.close()


def tail(args: argparse.Namespace, settings: Settings) -> None:
    """`chatlog tail`: print the session's events from the log, then follow new ones.

    For `--user` only if the session is theirs (another user's answers as a missing one
    does); with `--operator`, whoever owns it. Audited first either way."""
    audit_read(
        settings,
        session_id=args.session,
        user_id=args.user,
        details={"via": "tail", "follow": args.follow, "operator": args.operator},
    )
    consumer = groupless_consumer(settings.kafka_bootstrap, settings.kafka, purpose="tail")
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
    reader = None if args.operator else KeyScope(args.tenant, args.user)
    if not args.follow and high <= start.offset:
        if reader is not None:
            raise _not_theirs(args.session, reader)  # an empty partition holds no session
        return 0
    key = args.session.encode("utf-8")
    codec, opener = wiring.codec(settings), wiring.opener(settings)
    # The owner's keys, fetched once per poll: a follower sees an erasure within one.
    known: dict[KeyScope, KeyEntries] = {}
    owner: list[KeyScope] = []  # the session's first event names it

    def decode(value: bytes) -> ConversationEvent | None:
        event = codec.decode(value)
        if event.session_id == args.session and reader is not None:
            # Checked on the clear envelope, before anything of the event is opened.
            owner[:] = owner or [KeyScope.of(event)]
            if owner[0] != reader:
                raise _not_theirs(args.session, reader)
            if KeyScope.of(event) != reader:
                return None  # written into the session by someone else: refused by the projector
        [opened] = opener.open_batch([event], known=known)
        if opened is ERASED:
            raise Erased("erased: its owner's keys are destroyed")
        if isinstance(opened, Undecryptable):
            raise opened
        assert isinstance(opened, ConversationEvent)
        return opened

    emit = _emit_json if args.json else _emit_text
    shown = 0
    consumer.assign([start])
    with stop_on_signals() as stop:
        while not stop.is_set():
            known.clear()
            for message in consumer.consume(500, timeout=0.2):
                if usable(message, start) and message.key() == key:
                    shown += _show(message, decode, emit, args.session)
            if not args.follow and _reached(consumer, start, high):
                break
    if reader is not None and not owner:
        raise _not_theirs(args.session, reader)  # as for another user's: no existence oracle
    return shown


def _not_theirs(session_id: str, reader: KeyScope) -> SessionNotFound:
    return SessionNotFound(
        f"no session {session_id} of user {reader.user_id} (tenant {reader.tenant}) in the "
        f"log; an operator reads any session with --operator",
        session_id=session_id,
    )


def _locate(consumer: Consumer, settings: Settings, session_id: str) -> tuple[int, int, int]:
    """The session's partition and that partition's low and high watermarks."""
    partition = partition_for(session_id, partition_count(consumer, settings))
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(settings.topic, partition), timeout=METADATA_TIMEOUT_S
        )
    except KafkaException as exc:
        raise _no_broker(settings, exc) from exc
    return partition, low, high


def _no_broker(settings: Settings, exc: KafkaException) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"no Kafka broker answered at {settings.kafka_bootstrap} within "
        f"{METADATA_TIMEOUT_S:g} s ({exc.args[0]}); start one (`make services`) or set "
        f"CHATLOG_KAFKA_BOOTSTRAP",
        bootstrap_servers=settings.kafka_bootstrap,
    )


def _reached(consumer: Consumer, start: TopicPartition, high: int) -> bool:
    [position] = consumer.position([TopicPartition(start.topic, start.partition)])
    # Before the first fetch the position is a negative sentinel (OFFSET_INVALID).
    return position.offset >= high


def _show(
    message: Message,
    decode: Callable[[bytes], ConversationEvent | None],
    emit: Callable[[Message, ConversationEvent], None],
    session_id: str,
) -> bool:
    where = f"{message.partition()}:{message.offset()}"
    try:
        event = decode(message.value() or b"")
    except DecodeError as exc:
        _warn(f"{where}: skipped an undecodable record: {exc.message}")
        return False
    except Undecryptable as exc:
        _warn(f"{where}: skipped an undecryptable record: {exc.message}")
        return False
    except Erased as exc:
        _warn(f"{where}: {exc.message}")
        return False
    if event is None:
        return False  # not the reader's to see
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
        parts = [f"[{label}]", one_line(payload.content)]
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
