"""The `chatlog` command line: publish, read, tail, run the processors, replay, manage topics.

Every command prints for people by default and JSON with ``--json`` (for scripts). On
error it prints one line naming the problem and exits non-zero: 75 when running it again
later may work as it is (Kafka, Redis or the LLM did not answer; a replay was stopped),
1 when a person must act (bad input or settings, a missing topic, lost data), 2 for a
usage error (`chatlog.cli.common.exit_status`). This module is the parser and the
dispatcher; each command group adds its own commands and handlers:

- `chatlog.cli.read`: `publish`, `redact`, `context`, `sessions`, `tail`
- `chatlog.cli.recall`: `recall` (semantic recall of a user's earlier turns)
- `chatlog.cli.run`: `run projector`, `run summarizer`
- `chatlog.cli.replay`: `replay` (rebuild, `--verify`)
- `chatlog.cli.admin`: `topics create`, `topics check`, `keys new-master-key`, `keys
  rotate`, `erase`, `config`
- `chatlog.cli.privacy`: `audit` (list and verify the trail), `export`
- `chatlog.cli.serve`: `serve` (the HTTP gateway), `token` (a development JWT)
- `chatlog.cli.health`: `health` (is a running process ready?)

`chatlog.cli.output` shows results (for people, or JSON); `chatlog.cli.common` holds the
rest they share (argument types, stopping on a signal, the topic check).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from chatlog.cli import admin, health, privacy, read, recall, replay, run, serve
from chatlog.cli.common import exit_status
from chatlog.cli.output import print_result
from chatlog.logs import LogFormat, setup_logging
from chatlog.schemas.errors import ChatlogError
from chatlog.settings import Settings

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(arguments)
    # A long-lived process (`run`, `serve`, `replay`) names itself and logs at INFO; a
    # one-shot command only warns. Plain until the settings say otherwise: an invalid
    # setting is reported before they could.
    process = getattr(args, "process", None) or args.command
    level = logging.INFO if hasattr(args, "process") else logging.WARNING
    # librdkafka reports transient retries (a coordinator still loading, a reconnect) as
    # warnings; the CLI's own errors say what matters, so those stay hidden by default.
    kafka_level = logging.DEBUG if args.verbose else logging.ERROR
    setup_logging(process, level=level, kafka_level=kafka_level)
    log_format: LogFormat = "plain"
    try:
        settings = Settings.from_env()
        log_format = settings.log_format
        if log_format != "plain":
            setup_logging(process, log_format=log_format, level=level, kafka_level=kafka_level)
        result = args.handler(args, settings)
    except ChatlogError as exc:
        if log_format == "json":  # a collector reads it as the process's last line
            logging.getLogger("chatlog.cli").error("chatlog: error: %s", exc.message)
        else:
            print(f"chatlog: error: {exc.message}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        return 130
    print_result(result, as_json=args.json)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatlog", description="Event-sourced conversation memory on Kafka and Redis."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show Kafka client logs")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for group in (read, recall, run, replay, admin, privacy, serve, health):
        group.add_commands(commands, common)
    return parser
