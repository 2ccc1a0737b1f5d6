"""The CLI's set-up commands: `topics create` and `config`."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from chatlog import wiring
from chatlog.settings import Settings

if TYPE_CHECKING:
    from chatlog.cli.common import Commands

__all__ = ["add_commands"]


def add_commands(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `topics create` and `config` to the parser's `commands`."""
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
