"""The CLI's `recall` command: a user's earlier turns nearest in meaning to a query.

It recalls exactly as a chat back end does (`ChatLog.recall`: the live generation's
recall index, the hits opened with the owner's keys), for the user the operator names,
so it is an operator's read of that user's turns: recorded in the audit trail before
anything is read, as `chatlog context` is. Needs ``CHATLOG_RECALL=true`` and the index
`chatlog run embedder` fills.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from chatlog import wiring
from chatlog.cli.output import one_line
from chatlog.cli.read import add_tenant, audit_read
from chatlog.client import ChatLog
from chatlog.projections.recall import MAX_K, RecalledTurn
from chatlog.settings import Settings

if TYPE_CHECKING:
    from chatlog.cli.common import Commands

__all__ = ["add_commands", "recall", "recall_rows"]


def add_commands(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `recall` to the parser's `commands`."""
    command = commands.add_parser(
        "recall",
        parents=[common],
        help="a user's earlier turns nearest in meaning to a query (semantic recall)",
    )
    command.add_argument("query", help="what to recall: a question, or a message")
    command.add_argument("--user", required=True, help="whose turns (the reading user)")
    command.add_argument("--session", metavar="S", help="only this session of the user's")
    command.add_argument(
        "-k", type=int, default=5, metavar="N", help=f"how many turns, 1 to {MAX_K} (default 5)"
    )
    add_tenant(command)
    command.set_defaults(handler=recall)


def recall(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]] | None:
    """`chatlog recall`: the turns, most relevant first; JSON, or one line each."""
    audit_read(
        settings,
        session_id=args.session,
        user_id=args.user,
        details={"via": "recall", "k": args.k},
    )
    reader = wiring.reader(settings)
    with ChatLog(
        producer=wiring.producer(settings, flush_on_sigterm=False),
        reader=reader,
        read_timeout_s=settings.read_timeout_s,
        history=wiring.kafka_history(settings),
        recall=wiring.recall(settings, reader),
    ) as log:
        turns = log.recall(
            args.user, args.query, k=args.k, session_id=args.session, tenant=args.tenant
        )
    if args.json:
        return [turn.to_dict() for turn in turns]
    if not turns:
        print(f"nothing recalled for user {args.user}")
    for line in recall_rows(turns):
        print(line)
    return None


def recall_rows(turns: list[RecalledTurn]) -> list[str]:
    """One line per turn: score, time, session, role, then the content on one line."""
    return [
        f"{t.score:.3f}  {t.occurred_at.isoformat(timespec='seconds')}  {t.session_id}  "
        f"[{t.role}] {one_line(t.content)}"
        for t in turns
    ]
