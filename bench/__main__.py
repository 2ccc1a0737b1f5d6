"""``python -m bench``: run every scenario, print the tables, write bench/results/latest.md.

    python -m bench              # the full run (about five minutes)
    python -m bench --quick      # everything shrunk: checks that it runs (under a minute)
    python -m bench --repeat 5   # more repetitions for a tighter median

Kafka and Redis come from the usual settings (``CHATLOG_*``, else the local stack that
``make services`` started). Whatever the run creates (topics, consumer groups, Redis keys
under ``bench:<run id>``) is deleted at the end, also when a scenario fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.infra import PARTITIONS, BenchStack, Versions, source_digest
from bench.replay import replay
from bench.report import Report
from bench.scenarios import (
    Plan,
    context_reads,
    projection,
    projection_core,
    say,
    visibility,
)
from bench.summaries import summary_cost, summary_throughput
from bench.workload import session_name
from chatlog.settings import Settings
from schemas.errors import ChatlogError

RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"
SCENARIOS = ("projection", "latency", "reads", "summary_cost", "summary_throughput", "replay")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = _parser().parse_args(argv)
    # A CI job that times out sends SIGTERM: exit through the `finally` below, so the
    # projector processes, topics, groups and keys of the run are cleaned up even then.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    plan = Plan.quick_plan() if args.quick else Plan.full()
    if args.repeat is not None:
        plan = dataclasses.replace(plan, repeat=args.repeat)
    if args.events is not None:
        plan = dataclasses.replace(plan, events=args.events)
    try:
        stack = BenchStack(Settings.from_env())
    except ChatlogError as exc:
        print(f"bench: error: {exc.message}", file=sys.stderr)
        return 1
    report = Report(title="chatlog benchmark")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    code = source_digest()
    started = time.perf_counter()
    try:
        versions = stack.versions()
        say(f"run {stack.run_id} ({'quick' if plan.quick else 'full'}, {plan.repeat} repetitions)")
        if "projection" in args.only:
            published = projection(stack, plan, report)
            projection_core(stack, plan, report, published)
            del published  # 100,000 events: not to be carried through the other scenarios
        if "latency" in args.only:
            visibility(stack, plan, report)
        if "reads" in args.only:
            context_reads(stack, plan, report)
        if "summary_cost" in args.only:
            summary_cost(plan, report)
        if "summary_throughput" in args.only:
            summary_throughput(stack, plan, report)
        if "replay" in args.only:
            replay(stack, plan, report)
    finally:
        problems = stack.cleanup()
        for problem in problems:
            say(f"clean-up: {problem}")
    elapsed = time.perf_counter() - started
    report.header = _header(plan, stack, versions, report, elapsed, load)
    code_now = source_digest()
    if code_now == code:
        report.header.insert(1, f"code under test: sources {code} (sha256 of the packages' files)")
    else:
        report.header.insert(
            1,
            f"code under test CHANGED during the run (sources {code} at the start, "
            f"{code_now} at the end): the rows mix two versions; run it again",
        )
        say(f"warning: the code under test changed during the run ({code} -> {code_now})")
    table = report.markdown()
    print(table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table, encoding="utf-8")
    say(f"wrote {output} ({elapsed:.0f} s)")
    return 1 if problems else 0


def _header(
    plan: Plan,
    stack: BenchStack,
    versions: Versions,
    report: Report,
    elapsed: float,
    load: float,
) -> list[str]:
    sizes = report.value_sizes
    key = len(session_name(0))
    mode = "quick (shrunk: checks that it runs, not the numbers)" if plan.quick else "full"
    record = (
        f"record: value {statistics.mean(sizes):.0f} B mean ({min(sizes)}-{max(sizes)} B, "
        f"Avro single-object encoding), key {key} B"
        if sizes
        else "record: no chat events published by the scenarios run"
    )
    return [
        f"mode: {mode}; {plan.repeat} repetition(s) after a warm-up; the run took "
        f"{elapsed:.0f} s; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"{record}; topics of {PARTITIONS} partitions, "
        f"replication factor {stack.replication or '?'}; producer lz4, linger.ms "
        f"{stack.base.linger_ms}",
        f"machine: {versions.cores} cores (os.cpu_count), {platform.machine()} "
        f"{platform.system()} {platform.release()}; Kafka {versions.kafka}; "
        f"Redis {versions.redis}; Python {versions.python}",
        f"load average (1 min) at the start: {load:.2f}; the notes give each scenario's CPU "
        f"use per process, `other` being the rest of the (shared) machine",
        "each row: median and range (min - max) over the repetitions; targets are the projection "
        "and replay issues', printed for comparison, never asserted; the summary throughput "
        "rows give the ideal rate instead (max_in_flight / LLM latency), the replay rows "
        "Kafka's own ConsumerPerformance as the bound; the summary cost table is counted, "
        "not timed, and the same on every run",
    ]


def _scenarios(text: str) -> set[str]:
    chosen = {name.strip() for name in text.split(",") if name.strip()}
    unknown = chosen - set(SCENARIOS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(sorted(unknown)) or '(none given)'}; "
            f"choose from {', '.join(SCENARIOS)}"
        )
    return chosen


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="chatlog's projection, read, summary and replay benchmark.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="shrink everything (under a minute; for CI)"
    )
    parser.add_argument("--repeat", type=int, help="repetitions per scenario (default 3, quick 1)")
    parser.add_argument("--events", type=int, help="events in the projection scenario")
    parser.add_argument("--output", default=str(RESULTS), help="where to write the table")
    parser.add_argument(
        "--only",
        type=_scenarios,
        default=set(SCENARIOS),
        metavar="LIST",
        help=f"comma-separated scenarios to run (default all: {','.join(SCENARIOS)})",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
