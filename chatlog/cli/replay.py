"""The CLI's `replay` command: rebuild the read-model, or verify the live one (`--verify`).

Both are recorded in the audit trail: `replay_started`, then `replay_finished` with its
outcome (a verification's differences are counted in it).

Progress goes to stderr (rewritten in place on a terminal); the result to stdout, as
text or JSON. `--verify` exits with 1 when the live generation differs from the log.
SIGTERM or Ctrl-C stops a rebuild cleanly: the live generation stays untouched, and the
next run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TextIO

from chatlog import wiring
from chatlog.cli.common import partition_count, positive_float, positive_int, stop_on_signals
from chatlog.processors.kafka_replay import ReplayProgress
from chatlog.processors.replay import (
    RebuildReport,
    ReplayParts,
    VerifyReport,
    rebuild,
    verify,
)
from chatlog.schemas.audit import AuditAction
from chatlog.schemas.errors import Interrupted
from chatlog.settings import Settings

if TYPE_CHECKING:
    from chatlog.cli.common import Commands
    from chatlog.prom_metrics import MetricsServer

__all__ = ["ProgressPrinter", "add_commands", "run"]

log = logging.getLogger("chatlog.replay")


def add_commands(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `replay` to the parser's `commands`."""
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
        type=positive_float,
        default=3.0,
        metavar="S",
        help="seconds to keep projecting after the switch, for the live projector to follow",
    )
    replay.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="processes rebuilding partitions in parallel (helps with cores to spare beyond "
        "Kafka's and Redis's; default 1)",
    )
    replay.set_defaults(handler=run, process="replay")


class ProgressPrinter:
    """Shows a replay's progress: rewritten in place on a terminal (`in_place`, by default
    when `out` is one), else a log line every few seconds (`chatlog.logs`' format)."""

    def __init__(
        self,
        out: TextIO = sys.stderr,
        *,
        every_s: float | None = None,
        in_place: bool | None = None,
    ) -> None:
        self.out = out
        # Also handed every report, not only those shown (the metrics).
        self.also: Callable[[ReplayProgress], None] | None = None
        self.tty = out.isatty() if in_place is None else in_place
        self.every_s = every_s if every_s is not None else (0.2 if self.tty else 5.0)
        self._last = 0.0

    def __call__(self, progress: ReplayProgress) -> None:
        if self.also is not None:
            self.also(progress)
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        eta = progress.eta_s
        share = f" {100 * progress.done / progress.total:3.0f}%" if progress.total else ""
        line = (
            f"{progress.phase}: {progress.done:,} / {progress.total:,} events{share}, "
            f"{progress.rate:,.0f} events/s, ETA {'-' if eta is None else f'{eta:,.0f} s'}"
        )
        if self.tty:
            self.out.write(f"\r\033[K{line}")
            self.out.flush()
        else:
            log.info("%s", line)

    def done(self) -> None:
        """End the line a terminal display was rewriting."""
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | None:
    """`chatlog replay [--verify]`, recorded in the audit trail (started, then finished
    with its outcome)."""
    partition_count(wiring.admin_client(settings), settings)
    # A line rewritten in place would break JSON lines (CHATLOG_LOG_FORMAT=json).
    printer = ProgressPrinter(
        sys.stderr, in_place=sys.stderr.isatty() and settings.log_format == "plain"
    )
    parts = wiring.replay_parts(settings)
    trail = wiring.audit_trail(settings)
    metrics, printer = _replay_metrics(settings, printer)
    mode = {"mode": "verify" if args.verify else "rebuild"}
    checked: VerifyReport | None = None
    try:
        trail.record(AuditAction.REPLAY_STARTED, details={**mode, "workers": args.workers})
        with stop_on_signals() as stop, trail.operation(AuditAction.REPLAY_FINISHED) as details:
            details.update(mode)
            if args.verify:
                # Differences are a finding, not a failure: recorded as such, then exit 1.
                checked = verify(parts, stop=stop, on_progress=printer)
                details.update(generation=checked.live, differences=len(checked.differences))
            else:
                report = _rebuild(args, parts, printer, stop)
                details.update(generation=report.generation, events=report.events)
    finally:
        trail.close()
        if metrics is not None:
            metrics.close()
    printer.done()
    if checked is not None:
        return _verified(args, checked)
    result = asdict(report)
    result["events_per_s"] = round(report.events / report.seconds) if report.seconds else 0
    return result


def _replay_metrics(
    settings: Settings, printer: ProgressPrinter
) -> tuple[MetricsServer | None, ProgressPrinter]:
    """The replay's metrics server (CHATLOG_METRICS_PORT), fed by the progress reports
    the printer gets; (None, `printer`) when unset."""
    if not settings.metrics_port:
        return None, printer
    from chatlog.prom_metrics import ReplayCollector  # noqa: PLC0415 - the metrics extra

    collector = ReplayCollector()
    server = wiring.metrics_server(settings, collector, live=lambda: None, ready=lambda: None)
    printer.also = collector
    return server, printer


def _rebuild(
    args: argparse.Namespace, parts: ReplayParts, printer: ProgressPrinter, stop: Any
) -> RebuildReport:
    try:
        return rebuild(
            parts,
            restart=args.restart,
            handover_s=args.handover,
            keep_old=args.keep_old,
            workers=args.workers,
            stop=stop,
            on_progress=printer,
        )
    except Interrupted:
        printer.done()
        raise Interrupted(
            "replay interrupted; the live generation is untouched. Run `chatlog replay` "
            "again to resume, or `chatlog replay --restart` to start over"
        ) from None


def _verified(args: argparse.Namespace, report: VerifyReport) -> dict[str, Any] | None:
    """The result of `--verify`; exit status 1 when the live generation differs."""
    result = asdict(report)
    if not report.differences:
        return result
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(
            f"generation {report.live} differs from the log in "
            f"{len(report.differences)} keys (of {report.sessions} sessions, "
            f"{report.users} users):"
        )
        for difference in report.differences:
            print(f"  {difference.kind} {difference.name}: {difference.detail}")
        print("rebuild it with `chatlog replay`")
    raise SystemExit(1)
