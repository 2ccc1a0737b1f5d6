"""Kafka's own performance tools, run as the limits chatlog's numbers are read against.

What are they? `kafka-tools` (the jar behind bin/kafka-*-perf-test.sh) holds three
classes that time the broker with Kafka's Java clients, no application code around them:

* `ProducerPerformance`: records/s a producer pushes with the given settings (the limit
  for appending);
* `EndToEndLatency`: one record at a time, sent (acknowledged) and then polled back by a
  consumer; the time of that round trip through the broker (the limit for
  publish-to-visible);
* `ConsumerPerformance`: records/s a consumer reads (the limit for projection and replay).

`dev.services.kafka_local.ensure_tool_jars` fetches the jars from Maven Central on
first use. Each tool runs in a JVM of its own with the heap and the default JVM options
of Kafka's scripts, through `run_process`, which also records the CPU each process of the
stack used meanwhile. Their summary lines are parsed here; a tool that printed none (or
read fewer records than asked) fails the scenario rather than leave a blank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.infra import REPO, BenchStack
from bench.measure import CpuMeter
from bench.report import say
from chatlog.schemas.errors import ChatlogError
from chatlog.settings import Settings
from dev.services.kafka_local import ensure_tool_jars

__all__ = [
    "CONSUMER_PERFORMANCE",
    "END_TO_END_LATENCY",
    "JVM_OPTIONS",
    "PRODUCER_PERFORMANCE",
    "ConsumerPerformanceResult",
    "EndToEndResult",
    "Finished",
    "KafkaTools",
    "ProducerPerformanceResult",
    "cp_peer",
    "find_tools",
    "parse_consumer_performance",
    "parse_end_to_end_latency",
    "parse_producer_performance",
    "run_process",
]

CONSUMER_PERFORMANCE = "org.apache.kafka.tools.ConsumerPerformance"
PRODUCER_PERFORMANCE = "org.apache.kafka.tools.ProducerPerformance"
END_TO_END_LATENCY = "org.apache.kafka.tools.EndToEndLatency"
_CP_PEER = "Kafka ConsumerPerformance (limit; reading only)"
# What bin/kafka-*-perf-test.sh and kafka-e2e-latency.sh run the tools with: a heap of
# 512 MB (-Xmx512M), and kafka-run-class.sh's default KAFKA_JVM_PERFORMANCE_OPTS.
JVM_OPTIONS = (
    "-Xmx512M",
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
)


@dataclass
class Finished:
    """A child process that ran to its end."""

    spawned: float  # time.monotonic() just before the spawn
    stdout: str
    stderr: str
    busy: dict[str, float] = field(default_factory=dict)

    def totals(self) -> dict[str, Any]:
        """The JSON line a bench child process printed last."""
        lines = self.stdout.strip().splitlines()
        try:
            return dict(json.loads(lines[-1]))
        except (IndexError, ValueError) as exc:
            raise RuntimeError(f"the child printed no totals:\n{self.stderr[-2000:]}") from exc


def run_process(
    argv: Sequence[str], *, env: Mapping[str, str], stack: BenchStack, name: str, timeout: float
) -> Finished:
    """Run `argv` to its end; the CPU each process used meanwhile, the child included.

    The child is waited for without being reaped (WNOWAIT), so that its CPU time can still
    be read from /proc before it is; it is killed if it outlives `timeout`, or if the
    benchmark is interrupted.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        spawned = time.monotonic()
        process = subprocess.Popen(
            list(argv), cwd=REPO, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        try:
            meter = CpuMeter.for_stack(stack, **{name: process.pid})
            meter.start()
            deadline = time.monotonic() + timeout
            while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} still running after {timeout:g} s")
                time.sleep(0.02)
            busy = meter.busy()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        out.seek(0)
        err.seek(0)
        finished = Finished(
            spawned,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            busy,
        )
    if process.returncode != 0:
        raise RuntimeError(
            f"{name} exited with {process.returncode}:\n{finished.stderr[-3000:]}"
            f"\n{finished.stdout[-1000:]}"
        )
    return finished


# -- parsing what the tools print ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsumerPerformanceResult:
    """ConsumerPerformance's summary line, by the names of its header."""

    fields: dict[str, str]

    def number(self, name: str) -> float:
        """One field as a number (e.g. `fetch.nMsg.sec`)."""
        return float(self.fields[name])


def parse_consumer_performance(stdout: str) -> ConsumerPerformanceResult:
    """The fields of ConsumerPerformance's output (a header line, then one line of values).

    Kafka 4.x prints ``start.time, end.time, data.consumed.in.MB, MB.sec,
    data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec,
    fetch.nMsg.sec``. The dates hold no ", ", so the line splits on it. A run that timed
    out before reading every record says "WARNING: Exiting before consuming ...".
    """
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WARNING"):
            raise RuntimeError(f"ConsumerPerformance: {line}")
    for n, line in enumerate(lines[:-1]):
        if line.startswith("start.time,"):
            names = line.split(", ")
            values = lines[n + 1].split(", ")
            if len(names) == len(values):
                return ConsumerPerformanceResult(dict(zip(names, values, strict=True)))
    raise RuntimeError(f"ConsumerPerformance printed no result:\n{stdout[-2000:]}")


@dataclass(frozen=True, slots=True)
class ProducerPerformanceResult:
    """One summary line of ProducerPerformance (the steady-state one when there is one)."""

    records: int
    rate: float  # records/s
    mb_s: float
    avg_ms: float
    max_ms: float
    p50_ms: float
    p99_ms: float


_PP_LINE = re.compile(
    r"(?P<records>\d+) (?P<steady>steady state )?records sent, (?P<rate>[\d.]+) records/sec "
    r"\((?P<mb>[\d.]+) MB/sec\), (?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max "
    r"latency, (?P<p50>\d+) ms 50th, \d+ ms 95th, (?P<p99>\d+) ms 99th"
)


def parse_producer_performance(stdout: str) -> ProducerPerformanceResult:
    """The last summary line: ``N [steady state ]records sent, R records/sec (M MB/sec), ...``.

    With ``--warmup-records`` the tool prints the whole run's line, then the steady-state
    line (the records after the warm-up); the latter is the one taken.
    """
    found = [m for m in (_PP_LINE.search(line) for line in stdout.splitlines()) if m]
    if not found:
        raise RuntimeError(f"ProducerPerformance printed no summary:\n{stdout[-2000:]}")
    steady = [m for m in found if m.group("steady")]
    m = (steady or found)[-1]
    return ProducerPerformanceResult(
        records=int(m.group("records")),
        rate=float(m.group("rate")),
        mb_s=float(m.group("mb")),
        avg_ms=float(m.group("avg")),
        max_ms=float(m.group("max")),
        p50_ms=float(m.group("p50")),
        p99_ms=float(m.group("p99")),
    )


@dataclass(frozen=True, slots=True)
class EndToEndResult:
    """EndToEndLatency's result: the mean in ms, and percentiles in whole ms.

    The tool keeps each latency as whole milliseconds, truncated (`elapsed / 1000 / 1000`
    on nanoseconds), so its "p50 = 0" means under 1 ms, and "p99 = 6" means 6 to 7 ms.
    Only the mean is exact.
    """

    avg_ms: float
    p50_ms: int
    p99_ms: int
    p999_ms: int


_E2E_AVG = re.compile(r"Avg latency: ([\d.]+) ms")
_E2E_PERCENTILES = re.compile(r"Percentiles: 50th = (\d+), 99th = (\d+), 99\.9th = (\d+)")


def parse_end_to_end_latency(stdout: str) -> EndToEndResult:
    """``Avg latency: A ms`` and ``Percentiles: 50th = a, 99th = b, 99.9th = c``."""
    avg = _E2E_AVG.search(stdout)
    percentiles = _E2E_PERCENTILES.search(stdout)
    if avg is None or percentiles is None:
        raise RuntimeError(f"EndToEndLatency printed no result:\n{stdout[-2000:]}")
    p50, p99, p999 = (int(v) for v in percentiles.groups())
    return EndToEndResult(avg_ms=float(avg.group(1)), p50_ms=p50, p99_ms=p99, p999_ms=p999)


# -- running them ------------------------------------------------------------------------------


class KafkaTools:
    """Runs the tools against one stack (`find` fails when Java or the jars are missing)."""

    def __init__(self, java: str, jars: Path, stack: BenchStack) -> None:
        self.java = java
        self.jars = jars
        self.stack = stack

    @classmethod
    def find(cls, stack: BenchStack) -> KafkaTools:
        """Java and the kafka-tools jars (fetched on first use).

        Raises ChatlogError when Java is missing or the jars cannot be fetched.
        """
        java = shutil.which("java") or shutil.which("java", path="/usr/bin")
        if java is None:
            raise ChatlogError("java is not installed (apt-get install -y openjdk-17-jre-headless)")
        return cls(java, ensure_tool_jars(), stack)

    def command(self, tool: str) -> list[str]:
        """`java <options> -cp <jars>/* <tool>`, without the tool's own arguments."""
        return [self.java, *JVM_OPTIONS, "-cp", f"{self.jars}/*", tool]

    def run(self, tool: str, args: Sequence[str], *, name: str, timeout: float) -> Finished:
        """Run `tool` with `args` to its end (see `run_process`)."""
        return run_process(
            [*self.command(tool), *args],
            env=os.environ,
            stack=self.stack,
            name=name,
            timeout=timeout,
        )

    def consumer_performance(
        self,
        settings: Settings,
        *,
        group: str,
        records: int,
        fetch: Mapping[str, int],
        timeout: float,
    ) -> tuple[ConsumerPerformanceResult, Finished]:
        """Read `records` records of `settings.topic` from its start, in group `group`.

        `fetch` gives `max.partition.fetch.bytes` and `fetch.max.bytes`, so the tool reads
        with the same fetch sizes as the Python consumer it is the bound of.
        """
        self.stack.groups.append(group)  # it subscribes, and commits its offsets
        finished = self.run(
            CONSUMER_PERFORMANCE,
            [
                *_reading(settings, records),
                "--group",
                group,
                "--timeout",
                "30000",
                "--fetch-size",
                str(fetch["max.partition.fetch.bytes"]),
                "--command-property",
                f"fetch.max.bytes={fetch['fetch.max.bytes']}",
            ],
            name="ConsumerPerformance",
            timeout=timeout,
        )
        result = parse_consumer_performance(finished.stdout)
        got = int(result.number("data.consumed.in.nMsg"))
        if got != records:
            raise RuntimeError(f"ConsumerPerformance read {got:,} records, not {records:,}")
        return result, finished

    def producer_performance(
        self,
        settings: Settings,
        *,
        records: int,
        warmup: int,
        record_size: int,
        timeout: float,
    ) -> tuple[ProducerPerformanceResult, Finished]:
        """Produce `records` records of `record_size` bytes to `settings.topic`, unthrottled.

        With chatlog's producer guarantees and batching: acks=all, idempotence, lz4,
        the same linger.ms. The first `warmup` records are left out of the rate.
        """
        finished = self.run(
            PRODUCER_PERFORMANCE,
            [
                "--topic",
                settings.topic,
                "--num-records",
                str(records),
                "--warmup-records",
                str(warmup),
                "--record-size",
                str(record_size),
                "--throughput",
                "-1",
                "--command-property",
                f"bootstrap.servers={settings.kafka_bootstrap}",
                "acks=all",
                "enable.idempotence=true",
                "compression.type=lz4",
                f"linger.ms={settings.linger_ms}",
            ],
            name="ProducerPerformance",
            timeout=timeout,
        )
        return parse_producer_performance(finished.stdout), finished

    def end_to_end_latency(
        self,
        settings: Settings,
        *,
        records: int,
        record_size: int,
        key_size: int,
        timeout: float,
    ) -> tuple[EndToEndResult, Finished]:
        """`records` round trips, one at a time: send (acks=all), then poll it back."""
        finished = self.run(
            END_TO_END_LATENCY,
            [
                *_reading(settings, records),
                "--producer-acks",
                "all",
                "--record-size",
                str(record_size),
                "--record-key-size",
                str(key_size),
            ],
            name="EndToEndLatency",
            timeout=timeout,
        )
        return parse_end_to_end_latency(finished.stdout), finished


def find_tools(stack: BenchStack, scenario: str) -> tuple[KafkaTools | None, str]:
    """Kafka's tools, or None and why not (no Java, no network): the rest still runs."""
    try:
        return KafkaTools.find(stack), ""
    except ChatlogError as exc:
        say(f"{scenario}: Kafka's tools left out: {exc.message}")
        return None, exc.message


def _reading(settings: Settings, records: int) -> list[str]:
    """The arguments by which ConsumerPerformance and EndToEndLatency name what they read."""
    return [
        "--bootstrap-server",
        settings.kafka_bootstrap,
        "--topic",
        settings.topic,
        "--num-records",
        str(records),
    ]


def cp_peer(missing: str) -> str:
    """How a row names ConsumerPerformance, its limit, or why it did not run (`find_tools`)."""
    return f"ConsumerPerformance not run: {missing}" if missing else _CP_PEER
