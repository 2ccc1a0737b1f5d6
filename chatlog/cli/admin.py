"""The CLI's set-up and privacy commands: `topics create`, `topics check`, `keys
new-master-key`, `keys rotate`, `erase` and `config`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from chatlog import wiring
from chatlog.schemas.master_keys import new_master_key
from chatlog.settings import Settings

if TYPE_CHECKING:
    from chatlog.cli.common import Commands

__all__ = ["add_commands"]


def add_commands(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `topics`, `keys`, `erase` and `config` to the parser's `commands`."""
    topics = commands.add_parser("topics", help="manage chatlog's Kafka topics")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True)
    create = topic_commands.add_parser(
        "create",
        parents=[common],
        help="create the events, dead-letter and keys topics, and set their configuration "
        "(retention, compaction) to the settings",
    )
    create.add_argument("--partitions", type=int, help="overrides CHATLOG_PARTITIONS")
    create.add_argument(
        "--replication-factor", type=int, help="overrides CHATLOG_REPLICATION_FACTOR"
    )
    create.set_defaults(handler=_topics_create)
    check = topic_commands.add_parser(
        "check",
        parents=[common],
        help="show how the topics' configuration differs from the settings; exit 1 if it does",
    )
    check.set_defaults(handler=_topics_check)

    keys = commands.add_parser("keys", help="manage the keys that seal each user's data")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    master = key_commands.add_parser(
        "new-master-key",
        help="print a new random master key, as CHATLOG_MASTER_KEY takes it",
    )
    master.add_argument(
        "--id", default="k1", help="its id, which names it in every key it wraps (default k1)"
    )
    master.set_defaults(handler=lambda args, settings: new_master_key(args.id), json=False)
    rotate = key_commands.add_parser(
        "rotate",
        parents=[common],
        help="re-wrap every data key under the current (first) master key of "
        "CHATLOG_MASTER_KEY; events are not touched",
    )
    rotate.set_defaults(handler=lambda args, settings: asdict(wiring.rotate_keys(settings)))

    erase = commands.add_parser(
        "erase",
        parents=[common],
        help="erase a user: destroy their data keys (what the log holds of them can never be "
        "read again) and remove their sessions from Redis",
    )
    erase.add_argument("--user", required=True, help="the user id to erase")
    erase.add_argument("--tenant", default="default", help="their tenant (default: default)")
    erase.set_defaults(
        handler=lambda args, settings: wiring.erase_user(
            settings, args.user, tenant=args.tenant
        ).as_dict()
    )

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


def _topics_check(args: argparse.Namespace, settings: Settings) -> str | list[Any]:
    drift = wiring.topic_drift(settings)
    if not drift:
        return [] if args.json else "the topics are configured as the settings say"
    if args.json:
        print(json.dumps([asdict(item) for item in drift]))
    else:
        for item in drift:
            print(item)
        print("set them to the settings with `chatlog topics create`")
    raise SystemExit(1)
