"""The CLI's audit and export commands: `chatlog audit` and `chatlog export`.

`audit` reads the whole audit topic, verifies each partition's hash chain and lists the
records, oldest first; ``--user`` finds a user's records by their pseudonyms (under every
configured master key, so records made before a rotation are found too), ``--since``
keeps the recent ones, ``--verify`` exits 1 when a chain is broken, naming where.
`export` writes a user's export document (`ChatLog.export_user`) to a file or stdout.
Both are audited by what they call (the export), or read only the trail (the listing).
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatlog import wiring
from chatlog.cli.read import parse_as_of
from chatlog.processors.kafka_audit import AuditScan, read_audit
from chatlog.schemas.audit import AuditRecord
from chatlog.schemas.errors import InvalidInput
from chatlog.schemas.master_keys import user_pseudonyms
from chatlog.schemas.position import Position
from chatlog.settings import Settings

if TYPE_CHECKING:
    from chatlog.cli.common import Commands

__all__ = ["add_commands", "audit", "audit_lines", "export"]


def add_commands(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `audit` and `export` to the parser's `commands`."""
    audit_command = commands.add_parser(
        "audit",
        parents=[common],
        help="list the audit trail and verify its hash chains",
    )
    audit_command.add_argument("--user", help="only the records about this user")
    audit_command.add_argument("--tenant", default="default", help="their tenant (default)")
    audit_command.add_argument(
        "--since", type=_since, metavar="TIME", help="only records at or after TIME (ISO 8601)"
    )
    audit_command.add_argument(
        "--verify",
        action="store_true",
        help="verify every partition's chain; exit 1 if one is broken, naming where",
    )
    audit_command.set_defaults(handler=audit)

    export_command = commands.add_parser(
        "export",
        parents=[common],
        help="write every session of a user, from the log, as a JSON document",
    )
    export_command.add_argument("--user", required=True, help="the user id to export")
    export_command.add_argument("--tenant", default="default", help="their tenant (default)")
    export_command.add_argument(
        "--output", type=Path, metavar="FILE", help="write it to FILE (default: stdout)"
    )
    export_command.set_defaults(handler=export)


def _since(text: str) -> datetime:
    try:
        at = parse_as_of(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    if isinstance(at, Position):
        raise argparse.ArgumentTypeError("--since takes a time, not a position")
    return at


def audit(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | None:
    """`chatlog audit`: the records, and with --verify the chains' state."""
    scan = read_audit(
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.audit_topic,
        config=settings.kafka,
    )
    wanted: set[str] | None = None
    if args.user is not None:
        provider = wiring.key_provider(settings)
        wanted = {
            str(mac) for mac in user_pseudonyms(provider, tenant=args.tenant, user_id=args.user)
        }
    shown = [
        (position, record)
        for position, record in scan.records
        if (wanted is None or record.user in wanted)
        and (args.since is None or record.at >= args.since)
    ]
    broken = args.verify and not scan.intact
    if args.json:
        result: dict[str, Any] = {
            "topic": scan.topic,
            "records": [
                {"position": str(position), **record.as_dict()} for position, record in shown
            ],
        }
        if args.verify:
            result["chains"] = _chains(scan)
        if not broken:
            return result
        print(json.dumps(result))
        raise SystemExit(1)
    for line in audit_lines(shown):
        print(line)
    print(f"{len(shown)} of {len(scan.records)} records of {scan.topic}")
    if args.verify:
        for line in verify_lines(scan):
            print(line)
    if broken:
        raise SystemExit(1)
    return None


def audit_lines(records: list[tuple[Position, AuditRecord]]) -> list[str]:
    """One line a record, for people (the demo shows the same)."""
    lines = []
    for position, record in records:
        at = record.at.astimezone(UTC).isoformat(timespec="milliseconds")
        subject = [
            f"user={record.user[:20]}…" if record.user else "",
            f"session={record.session_id}" if record.session_id else "",
        ]
        details = " ".join(f"{k}={v}" for k, v in sorted(record.details.items()))
        parts = [
            f"{position!s:>7}",
            at,
            f"{record.action:<16}",
            f"{record.outcome:<7}",
            record.principal,
            *subject,
            details,
        ]
        lines.append("  ".join(part for part in parts if part))
    return lines


def verify_lines(scan: AuditScan) -> list[str]:
    """Each partition's chain: intact, or every place it breaks."""
    lines = []
    for chain in scan.chains:
        if chain.records == 0:
            lines.append(f"partition {chain.partition}: empty")
            continue
        span = f"offsets {chain.first_offset}..{chain.last_offset}, {chain.records} records"
        anchor = "" if chain.anchored else " (its start is past retention: anchored there)"
        if chain.intact:
            lines.append(f"partition {chain.partition}: chain intact ({span}){anchor}")
        for gap in chain.breaks:
            lines.append(f"chain BROKEN at {gap}")
    lines.append("verified: every chain intact" if scan.intact else "verified: chain broken")
    return lines


def _chains(scan: AuditScan) -> list[dict[str, Any]]:
    return [
        {
            "partition": chain.partition,
            "records": chain.records,
            "first_offset": chain.first_offset,
            "last_offset": chain.last_offset,
            "anchored": chain.anchored,
            "intact": chain.intact,
            "breaks": [{"offset": b.offset, "reason": b.reason} for b in chain.breaks],
        }
        for chain in scan.chains
    ]


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (mode 0600, an existing file's
    too): an export holds a person's every message in clear."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # O_CREAT's mode applies to a new file only
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(text)


def export(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | None:
    """`chatlog export`: the user's document, to --output or stdout."""
    trail = wiring.audit_trail(settings)
    try:
        document = wiring.exporter(settings).export(args.user, tenant=args.tenant, audit=trail)
    finally:
        trail.close()
    if args.output is None:
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return None
    _write_private(args.output, json.dumps(document, indent=2, ensure_ascii=False))
    summary = {
        "user_id": args.user,
        "tenant": args.tenant,
        "sessions": len(document["sessions"]),
        "messages": sum(len(s["messages"]) for s in document["sessions"]),
        "output": str(args.output),
    }
    return summary
