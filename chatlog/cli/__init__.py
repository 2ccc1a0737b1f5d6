"""The `chatlog` command line: publish, read, tail, run the projector, manage the stack.

Every command prints for people by default and JSON with ``--json`` (for scripts). On
error it prints one line naming the problem and exits non-zero: 1 for a chatlog error
(bad input, no broker, ...), 2 for a usage error. This module is the parser and the
dispatcher; the read commands (`context`, `sessions`, `tail`) live in `chatlog.cli.read`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from chatlog import wiring
from chatlog.cli import read as cli_read
from chatlog.cli import replay as cli_replay
from chatlog.processors.kafka_projector import tune_garbage_collector
from chatlog.schemas.errors import ChatlogError
from chatlog.schemas.events import Role
from chatlog.settings import Settings

__all__ = ["main"]

Handler = Callable[[argparse.Namespace, Settings], Any]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(arguments)
    # librdkafka reports transient retries (a coordinator still loading, a reconnect) as
    # warnings; the CLI's own errors say what matters, so those stay hidden by default.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("chatlog.kafka").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    try:
        settings = Settings.from_env()
        result = args.handler(args, settings)
    except ChatlogError as exc:
        print(f"chatlog: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    _print(result, as_json=args.json)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatlog", description="Event-sourced conversation memory on Kafka and Redis."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show Kafka client logs")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    publish = commands.add_parser(
        "publish", parents=[common], help="append one message to a session"
    )
    publish.add_argument("session", help="session id")
    publish.add_argument("--user", required=True, help="user id (the session's owner)")
    publish.add_argument("--role", required=True, choices=[r.value for r in Role])
    publish.add_argument("--content", required=True, help="the message text")
    publish.add_argument("--name", help="author name (for tool or multi-agent messages)")
    publish.set_defaults(handler=_publish)

    context = commands.add_parser(
        "context", parents=[common], help="a session's context, as a chat back end reads it"
    )
    context.add_argument("session", help="session id")
    context.add_argument("--user", required=True, help="the reading user (must own it)")
    when = context.add_mutually_exclusive_group()
    when.add_argument(
        "--after", metavar="P:O", help="wait until the projection has applied this position"
    )
    when.add_argument(
        "--as-of",
        type=cli_read.as_of_argument,
        metavar="TIME|P:O",
        help="the context as it was at TIME (ISO 8601; no timezone means UTC; or epoch "
        "milliseconds) or right after the event at P:O, folded from the log itself "
        "(no projector or Redis needed)",
    )
    context.add_argument(
        "--max-tokens", type=_positive_int, metavar="N", help="trim the oldest turns to fit"
    )
    context.add_argument("--system", metavar="TEXT", help="a system prompt to put first")
    context.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="how long --after may wait (default CHATLOG_READ_TIMEOUT_S); with --as-of, how "
        "long Kafka may stay silent (default 10)",
    )
    context.set_defaults(handler=cli_read.context)

    sessions = commands.add_parser(
        "sessions", parents=[common], help="a user's sessions, most recently active first"
    )
    sessions.add_argument("user", help="user id")
    sessions.add_argument("--limit", type=_positive_int, default=50, metavar="N")
    sessions.set_defaults(handler=cli_read.sessions)

    tail = commands.add_parser(
        "tail", parents=[common], help="a session's events from the log, then new ones"
    )
    tail.add_argument("session", help="session id")
    tail.add_argument(
        "--no-follow",
        dest="follow",
        action="store_false",
        help="stop at the end of the log as it was at start",
    )
    tail.set_defaults(handler=cli_read.tail)

    _add_run_commands(commands)
    _add_replay_command(commands, common)

    topics = commands.add_parser("topics", help="manage chatlog's Kafka topics")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True)
    create = topic_commands.add_parser(
        "create", parents=[common], help="create the events and dead-letter topics"
    )
    create.add_argument("--partitions", type=int, help="overrides CHATLOG_PARTITIONS")
    create.add_argument(
        "--replication-factor", type=int, help="overrides CHATLOG_REPLICATION_FACTOR"
    )
    create.set_defaults(handler=_topics_create)

    config = commands.add_parser("config", parents=[common], help="show the effective settings")
    config.set_defaults(handler=lambda args, settings: settings.describe())

    return parser


def _add_run_commands(commands: Any) -> None:
    run = commands.add_parser("run", help="run a long-lived processor")
    run_commands = run.add_subparsers(dest="run_command", required=True)
    projector = run_commands.add_parser(
        "projector", help="project the events topic into Redis until SIGTERM or Ctrl-C"
    )
    projector.set_defaults(handler=_run_projector, json=False)
    summarizer = run_commands.add_parser(
        "summarizer",
        help="keep every session's overflow folded into its rolling summary (faust agent)",
    )
    summarizer.set_defaults(handler=_run_summarizer, json=False)


def _add_replay_command(commands: Any, common: argparse.ArgumentParser) -> None:
    replay = commands.add_parser(
        "replay",
        parents=[common],
        help="rebuild the read-model from the log into a new generation, then switch to it",
    )
    replay.add_argument(
        "--verify",
        action="store_true",
        help="rebuild into a scratch generation, compare with the live one, exit 1 if they differ",
    )
    replay.add_argument(
        "--restart", action="store_true", help="start over instead of resuming an interrupted run"
    )
    replay.add_argument(
        "--keep-old", action="store_true", help="keep the replaced generation (default: delete it)"
    )
    replay.add_argument(
        "--handover",
        type=_positive_float,
        default=3.0,
        metavar="S",
        help="seconds to keep projecting after the switch, for the live projector to follow",
    )
    replay.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="processes rebuilding partitions in parallel (helps with cores to spare beyond "
        "Kafka's and Redis's; default 1)",
    )
    replay.set_defaults(handler=cli_replay.run)


def _publish(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    with wiring.producer(settings) as producer:
        position = producer.append(
            args.session, user_id=args.user, role=args.role, content=args.content, name=args.name
        )
    return {"session_id": args.session, "position": str(position)}


def _topics_create(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]]:
    overrides = {
        k: v
        for k, v in {
            "partitions": args.partitions,
            "replication_factor": args.replication_factor,
        }.items()
        if v is not None
    }
    settings = settings.model_copy(update=overrides)
    return [asdict(report) for report in wiring.create_topics(settings)]


def _run_projector(args: argparse.Namespace, settings: Settings) -> None:
    log = logging.getLogger("chatlog.projector")
    log.setLevel(logging.INFO)
    # A long-lived process: its log lines need times.
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Fail at start-up with the fix, rather than with a consumer error later.
    cli_read.partition_count(wiring.admin_client(settings), settings)
    projector = wiring.projector(settings)
    log.info(
        "projecting %s (group %s) into Redis prefix %s; dead letters to %s",
        settings.topic,
        settings.projector_group,
        settings.redis_prefix,
        settings.dlq_topic,
    )
    tune_garbage_collector()
    with cli_read.stop_on_signals() as stop:
        projector.run(stop=stop)
    log.info("stopped: %s", projector.stats)


def _run_summarizer(args: argparse.Namespace, settings: Settings) -> None:
    log = logging.getLogger("chatlog.summarizer")
    cli_read.partition_count(wiring.admin_client(settings), settings)
    which = (
        f"{settings.llm_model} at {settings.llm_base_url}"
        if settings.llm_base_url
        else "the offline extractive summarizer (set CHATLOG_LLM_BASE_URL for an LLM)"
    )
    worker = wiring.summarizer_worker(settings)
    log.info(
        "summarizing %s (group %s) with %s: every %d overflow turns, %d in flight at most",
        settings.topic,
        settings.summarizer_group,
        which,
        settings.summary_threshold,
        settings.summarizer_concurrency,
    )
    status = worker.run()
    if status:
        raise SystemExit(status)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _print(result: Any, *, as_json: bool) -> None:
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
