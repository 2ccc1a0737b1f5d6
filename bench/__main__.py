"""``python -m bench`` : run every scenario, write the tables and chart.

    python -m bench                  # the full run (about ten minutes), then the docs' table
    python -m bench --quick          # everything shrunk: checks that it runs (about a minute)
    python -m bench --repeat 5       # more repetitions for a tighter median
    python -m bench --update-readme  # only copy results/latest.md's table into the docs

Kafka and Redis come from the usual settings (``CHATLOG_*``, else the local stack that
``make services`` started). Whatever the run creates (topics, consumer groups, Redis keys
under ``bench:<run id>``) is deleted at the end, also when a scenario fails. A full run of
every scenario into the default results file also regenerates the performance table of
docs/performance.md (`bench.readme`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import confluent_kafka

from bench.goals import goals_table
from bench.infra import PARTITIONS, REPO, BenchStack, Versions, source_digest
from bench.plan import Plan
from bench.readme import update_readme
from bench.regression import THRESHOLD, compare, drift_table, rows_of
from bench.report import Report, comparison_lines, say
from bench.scenarios.append import append
from bench.scenarios.capacity import capacity
from bench.scenarios.checkpoints import checkpoints
from bench.scenarios.gateway import gateway
from bench.scenarios.gateway_sse import gateway_sse
from bench.scenarios.latency import visibility
from bench.scenarios.pii import pii
from bench.scenarios.projection import projection
from bench.scenarios.projection_core import projection_core
from bench.scenarios.reads import context_reads
from bench.scenarios.recall_cost import recall_cost
from bench.scenarios.recall_quality import recall_quality
from bench.scenarios.replay import replay
from bench.scenarios.sealing import sealing
from bench.scenarios.summary_cost import summary_cost
from bench.scenarios.summary_throughput import summary_throughput
from bench.workload import session_name
from chatlog.schemas.errors import ChatlogError
from chatlog.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"
CHART = RESULTS.with_name("latency.png")
QUICK = Path(tempfile.gettempdir()) / "chatlog-bench-quick.md"
# The performance table lives in docs/performance.md, between its bench:start/end markers.
README = REPO / "docs" / "performance.md"
SCENARIOS = (
    "append",
    "reads",
    "memory",
    "latency",
    "projection",
    "summary_cost",
    "summary_throughput",
    "replay",
    "sealing",
    "pii",
    "recall_quality",
    "recall_cost",
    "gateway_sse",
    "gateway",
    "capacity",
    "checkpoints",
)
# The order of the first table, whatever order the scenarios ran in.
TABLE_ORDER = (
    "append",
    "context read",
    "publish→visible",
    "projection",
    "replay",
    "memory",
    "sealing",
    "pii",
    "recall_quality",
    "recall_cost",
    "gateway",
    "checkpoint",
)


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m bench") -> int:
    """Run the benchmark; returns the exit status."""
    args = _parser(prog).parse_args(argv)
    if args.update_readme:
        return _update_readme(Path(args.output or RESULTS))
    # A CI job that times out sends SIGTERM: exit through the `finally` below, so the
    # projector processes, topics, groups and keys of the run are cleaned up even then.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    plan = Plan.quick_plan() if args.quick else Plan.full()
    if args.repeat is not None:
        plan = dataclasses.replace(plan, repeat=args.repeat)
    if args.events is not None:
        plan = dataclasses.replace(plan, events=args.events)
    plan = dataclasses.replace(plan, sealing=args.sealing)
    # Read before the run: a full run rewrites the file.
    baseline = _baseline(args.baseline)
    try:
        stack = BenchStack(Settings.from_env())
    except ChatlogError as exc:
        print(f"bench: error: {exc.message}", file=sys.stderr)
        return 1
    report = Report(title="chatlog benchmark", order=TABLE_ORDER)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    code = source_digest()
    started = time.perf_counter()
    took: dict[str, float] = {}
    try:
        versions = stack.versions()
        say(f"run {stack.run_id} ({'quick' if plan.quick else 'full'}, {plan.repeat} repetitions)")
        steps: list[tuple[str, Callable[[], None]]] = [
            ("append", lambda: append(stack, plan, report)),
            (
                "reads",
                lambda: context_reads(
                    stack, plan, report, timed="reads" in args.only, memory="memory" in args.only
                ),
            ),
            ("latency", lambda: visibility(stack, plan, report)),
            ("projection", lambda: _projection(stack, plan, report)),
            ("summary_cost", lambda: summary_cost(plan, report)),
            ("summary_throughput", lambda: summary_throughput(stack, plan, report)),
            ("replay", lambda: replay(stack, plan, report)),
            ("sealing", lambda: sealing(stack, plan, report)),
            ("pii", lambda: pii(stack, plan, report)),
            ("recall_quality", lambda: recall_quality(plan, report)),
            ("recall_cost", lambda: recall_cost(stack, plan, report)),
            ("gateway_sse", lambda: gateway_sse(stack, plan, report)),
            ("gateway", lambda: gateway(stack, plan, report)),
            ("capacity", lambda: capacity(stack, plan, report)),
            ("checkpoints", lambda: checkpoints(stack, plan, report)),
        ]
        for name, run in steps:
            if name in args.only or (name == "reads" and "memory" in args.only):
                begun = time.perf_counter()
                run()
                took[name] = time.perf_counter() - begun
    finally:
        problems = stack.cleanup()
        for problem in problems:
            say(f"clean-up: {problem}")
    elapsed = time.perf_counter() - started
    report.header = _header(plan, stack, versions, report, elapsed, load)
    report.header.insert(
        1, "time per scenario: " + ", ".join(f"{k} {v:.0f} s" for k, v in took.items())
    )
    report.summary = _summary(plan, versions, report)
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
    _guard(report, baseline, plan)
    report.goals = goals_table(report)
    # A quick run's numbers mean nothing: by default they never replace the real ones.
    output = Path(args.output) if args.output else (QUICK if plan.quick else RESULTS)
    chart = Path(args.chart) if args.chart else _chart_beside(output)
    drew = _draw(report, chart, plan)
    table = report.markdown(chart=os.path.relpath(chart, output.parent) if drew else None)
    print(table)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table, encoding="utf-8")
    say(f"wrote {output}{f' and {chart}' if drew else ''} ({elapsed:.0f} s)")
    if problems:
        return 1
    if not plan.quick and args.only == set(SCENARIOS) and output.resolve() == RESULTS:
        return _update_readme(output)
    return 0


def _projection(stack: BenchStack, plan: Plan, report: Report) -> None:
    published = projection(stack, plan, report)
    # The same records through the core; then they go (100,000 events: not to be carried
    # through the other scenarios).
    projection_core(stack, plan, report, published)


def _baseline(path: str | None) -> tuple[str, str] | None:
    """What to compare this run with (`bench.regression`), and how to name it: `path`,
    else the results as last committed (``git show HEAD:bench/results/latest.md``), else
    the file as it is now; None if there is none."""
    if path is not None:
        return Path(path).read_text(encoding="utf-8"), path
    committed = RESULTS.relative_to(REPO).as_posix()
    try:
        shown = subprocess.run(
            ["git", "show", f"HEAD:{committed}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        head = subprocess.run(
            ["git", "log", "-1", "--format=%h, %cs", "--", committed],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        if not RESULTS.exists():
            return None
        return RESULTS.read_text(encoding="utf-8"), f"{committed} as it was before this run"
    return shown.stdout, f"{committed} as last committed ({head.stdout.strip()})"


def _guard(report: Report, baseline: tuple[str, str] | None, plan: Plan) -> None:
    """The regression guard's section: what moved beside `baseline` (a report only)."""
    if plan.quick:
        return  # a quick run's numbers are not the numbers: nothing to compare
    if baseline is None:
        say("regression guard: no committed results to compare with")
        return
    text, name = baseline
    rows = report.comparisons + report.sealing_twins
    drift = compare(
        rows_of(text),
        rows_of("\n".join(comparison_lines(rows))),
        more_is_better={(r.scenario, r.metric, r.peer) for r in rows if r.words()[0] == "more"},
    )
    report.tables.append(drift_table(drift, baseline=name))
    say(
        f"regression guard: {drift.compared} ratios compared with {name}, "
        f"{len(drift.moved)} moved by more than {THRESHOLD:.0%}"
        + "".join(
            f"; {m.now.scenario}, {m.now.metric} beside {m.now.peer}: {m.then.ratio} -> "
            f"{m.now.ratio}"
            for m in drift.moved
        )
    )


def _chart_beside(output: Path) -> Path:
    """results/latency.png for the default results file, else <output>.png beside it."""
    return CHART if output.resolve() == RESULTS else output.with_suffix(".png")


def _draw(report: Report, chart: Path, plan: Plan) -> bool:
    try:
        from bench.chart import latency_chart  # noqa: PLC0415 - needs matplotlib
    except ImportError as exc:
        say(f"no chart: {exc} (matplotlib is in the dev extra: pip install -e '.[dev]')")
        return False
    mode = "quick run, not the numbers" if plan.quick else f"median of {plan.repeat} repetitions"
    return latency_chart(
        report.points, chart, title=f"chatlog beside its peers: latency percentiles ({mode})"
    )


def _update_readme(results: Path) -> int:
    try:
        changed = update_readme(results, README)
    except (OSError, ValueError) as exc:
        print(f"bench: error: cannot regenerate the README: {exc}", file=sys.stderr)
        return 1
    say(f"{README.relative_to(REPO)} table {'regenerated' if changed else 'already up to date'}")
    return 0


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
        f"Avro single-object encoding, sealed as published), key {key} B"
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
        f"clients: {_clients()}",
        f"load average (1 min) at the start: {load:.2f}; the notes give each scenario's CPU "
        f"use per process, `other` being the rest of the (shared) machine",
        "each value: median and range (min - max) over the repetitions, every peer measured "
        "in the same run; the ratio says how many times faster (or smaller) chatlog is than "
        "the peer, or slower (larger); Kafka's tools are limits, not competitors: the "
        "broker's own rate or round trip on this machine, from Java clients doing nothing "
        "else. In the details, targets are earlier issues', printed for comparison, never "
        "asserted; the summary throughput rows give the ideal rate instead (max_in_flight / "
        "LLM latency); the summary cost table is counted, not timed, and the same on every run",
    ]


def _summary(plan: Plan, versions: Versions, report: Report) -> str:
    """One sentence for the README: what the table was measured on."""
    sizes = report.value_sizes
    record = f"{statistics.mean(sizes):.0f}-byte records" if sizes else "records"
    runs = (
        "a quick run (shrunk: these numbers only show that it runs)"
        if plan.quick
        else f"the median of {plan.repeat} repetitions after a warm-up, range in brackets"
    )
    return (
        f"Measured by `make bench` on {time.strftime('%Y-%m-%d', time.gmtime())}: "
        f"{versions.cores} cores, Kafka {versions.kafka.split(' (')[0]} (one broker) and Redis "
        f"{versions.redis} on loopback, Python {versions.python}, {record}, topics of "
        f"{PARTITIONS} partitions; {runs}. Peers: {_clients()}."
    )


def _clients() -> str:
    """The client libraries' versions (chatlog's and the peers')."""
    found = []
    for package in ("confluent-kafka", "redis", "langchain-community", "langchain-core"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{package} {importlib.metadata.version(package)}")
            if package == "confluent-kafka":
                found[-1] += f" (librdkafka {confluent_kafka.libversion()[0]})"
    return ", ".join(found)


def _scenarios(text: str) -> set[str]:
    chosen = {name.strip() for name in text.split(",") if name.strip()}
    unknown = chosen - set(SCENARIOS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(sorted(unknown)) or '(none given)'}; "
            f"choose from {', '.join(SCENARIOS)}"
        )
    return chosen


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="chatlog beside its peers (LangChain's Redis history, a plain Redis list) "
        "and Kafka's own tools: append, read, publish-to-visible, projection, replay, memory, "
        "summaries; and sealing, beside the same path unsealed.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="shrink everything (about a minute; for CI)"
    )
    parser.add_argument("--repeat", type=int, help="repetitions per scenario (default 3, quick 1)")
    parser.add_argument("--events", type=int, help="events in the projection scenario")
    parser.add_argument(
        "--output",
        help=f"where to write the table (default {RESULTS.relative_to(REPO)}; with --quick "
        f"{QUICK}, so that a quick run never replaces the real numbers)",
    )
    parser.add_argument(
        "--chart",
        help="where to draw the latency chart (default: results/latency.png beside the "
        "default output, else the output's name with .png)",
    )
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="run nothing: copy the table of --output into docs/performance.md "
        "(a full run of every scenario into the default output does it by itself)",
    )
    parser.add_argument(
        "--sealing",
        choices=("both", "on"),
        default="both",
        help="both (default): the headline rows also with sealing off, side by side; "
        "on: sealed only (as deployed), a shorter run",
    )
    parser.add_argument(
        "--baseline",
        help="the results file to compare the ratios with (default: "
        f"{RESULTS.relative_to(REPO)} as last committed); moves over 20%% are reported",
    )
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
