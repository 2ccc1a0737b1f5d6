"""One reading of the replay scenario's topic, in a process of its own, configured by CHATLOG_*.

    python -m bench.replay_child rebuild   # chatlog.processors.replay.rebuild into a fresh prefix
    python -m bench.replay_child rebuild 2 # the same with 2 worker processes (`--workers 2`)
    python -m bench.replay_child memory    # the same pieces, views kept in memory
    python -m bench.replay_child read      # a bare confluent-kafka consumer, no decoding

Why a process each? A replay is its own process (`chatlog replay`), and its peak
resident memory is only its own in a process that did nothing else. The three modes
share one clock: the rebuild phase starts when the partitions are assigned and the end
offsets known (where `rebuild` creates its `ReplayProgress`), and ends when the last
record up to those offsets is applied. Consumer start-up (imports, metadata, end
offsets) comes before it and is reported apart. ConsumerPerformance's `fetch.nMsg.sec`
covers the same span: from the partitions assigned to the last record.

- `rebuild` calls `chatlog.processors.replay.rebuild` with `wiring.replay_parts(settings)`,
  `handover_s=0, keep_old=False` and the workers named (1 by default): the code
  `chatlog replay --workers N` runs; it takes the rebuild phase from its progress reports.
  The worker processes' peak resident memory is sampled from /proc while they run
  (`WorkerPeaks`). The prefix is fresh, so nothing is live: no catch-up,
  and the flip is one command.
- `memory` runs the same `rebuild` call with one change: the parts' `store_for` gives an
  `InMemoryViewStore` per generation. So the `KafkaReplay` and `ProjectionCore` are
  exactly those `rebuild` makes, batch size, view cache and collector settings included,
  whatever they become: reading, decoding and folding without the Redis writes. (The
  generation pointer and the flip still go to Redis, outside the rebuild phase.)
- `read` assigns every partition to a confluent-kafka consumer with the replay's fetch
  settings and counts the records and their bytes: what reading alone costs in Python.
  It then decodes a sample of the values it read, off the clock of the reading.

On exit it prints one JSON line: counts, monotonic timestamps (CLOCK_MONOTONIC, shared
with the parent on Linux), the peak resident memory, also as it was before the reading
started and that of each worker process a rebuild may have started, CPU seconds (its
own and its workers'), and the garbage collector's pauses.

Why is the peak `VmHWM` (/proc/self/status) rather than `getrusage().ru_maxrss`? On
Linux, exec saves the high-water mark of the address space it replaces into the
process's `ru_maxrss`, and a child spawned by fork or vfork replaces a copy of its
parent's: a child of a benchmark process that holds 500 MB reports at least 500 MB
(measured), whatever it uses itself. `VmHWM` belongs to the address space exec created.
`ru_maxrss` is printed too, and used where /proc is missing (`projector_child.peak_rss_kib`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from bench.projector_child import GcPauses, peak_rss_kib
from chatlog import wiring
from chatlog.cli.replay import ProgressPrinter
from chatlog.logs import setup_logging
from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.processors.kafka_replay import REPLAY_FETCH, REPLAY_QUEUE, ReplayProgress
from chatlog.processors.replay import ReplayParts, rebuild
from chatlog.projections.store import InMemoryViewStore
from chatlog.settings import Settings

MODES = ("rebuild", "memory", "read")
_DECODE_SAMPLE = 100_000


class PhaseClock:
    """Takes the rebuild phase's start and end from a replay's progress reports.

    `ReplayProgress.started` is set when the replay has its partitions and end offsets;
    the end is the last report, in the rebuild phase, after which no more records came.
    The reports are also passed on to `ProgressPrinter`, as `chatlog replay` shows them.
    """

    def __init__(self) -> None:
        self.started: float | None = None
        self.first: float | None = None  # the first batch applied
        self.done_at: float | None = None
        self.done = 0
        self.total = 0
        self.cpu_first = 0.0
        self.cpu_done = 0.0
        self.printer = ProgressPrinter(sys.stderr, every_s=5.0)

    def __call__(self, progress: ReplayProgress) -> None:
        if progress.phase == "rebuild" and progress.done > self.done:
            now = time.monotonic()
            if self.first is None:
                self.first, self.cpu_first = now, time.process_time()
            self.started = progress.started
            self.done_at, self.done, self.total = now, progress.done, progress.total
            self.cpu_done = time.process_time()
        self.printer(progress)


class WorkerPeaks:
    """Samples the peak resident memory (`VmHWM`) of this process's children while they
    run: a spawned replay worker's own, which its `ru_maxrss` is not (see the module
    docstring). `VmHWM` only grows, so the last sample before a worker exits is its peak
    give or take what it allocated in its last `every_s`."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s = every_s
        self.peaks_kib: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="worker-peaks", daemon=True)

    def __enter__(self) -> WorkerPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = str(os.getpid())
        while not self._stop.wait(self.every_s):
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    # The parent pid is the 2nd field after the command name's ")".
                    if stat.read_text().rpartition(")")[2].split()[1] != me:
                        continue
                    pid = int(stat.parent.name)
                    kib = _vm_hwm_kib(stat.parent / "status")
                except (OSError, IndexError, ValueError, StopIteration):
                    continue  # it exited meanwhile
                self.peaks_kib[pid] = max(kib, self.peaks_kib.get(pid, 0))


def _vm_hwm_kib(status: Path) -> int:
    line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1])


def main() -> int:
    """Run the mode named on the command line; print its totals as one JSON line."""
    setup_logging("bench-replay", level=logging.WARNING)
    logging.getLogger("chatlog.replay").setLevel(logging.INFO)  # its progress lines
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode not in MODES or not all(arg.isdigit() for arg in sys.argv[2:3]):
        print(f"usage: python -m bench.replay_child {'|'.join(MODES)} [WORKERS]", file=sys.stderr)
        return 2
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    pauses = GcPauses()
    settings = Settings.from_env()
    before = peak_rss_kib()
    began = time.monotonic()
    gc.callbacks.append(pauses)
    with WorkerPeaks() as peaks:
        if mode == "read":
            totals = _read(settings)
        else:
            totals = _replay(settings, in_memory=mode == "memory", workers=workers)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    totals |= {
        "mode": mode,
        "began": began,
        "ended": time.monotonic(),
        "peak_rss_kib": peak_rss_kib(),
        "peak_rss_before_kib": before,
        "ru_maxrss_kib": usage.ru_maxrss,
        # Worker processes (`rebuild(workers=n)`): the largest one's ru_maxrss, which on
        # Linux is at least this process's resident size when it started them.
        "workers_ru_maxrss_kib": children.ru_maxrss,
        "workers": workers,
        "workers_peak_rss_kib": sorted(peaks.peaks_kib.values()),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "workers_cpu_s": children.ru_utime + children.ru_stime,
        **pauses.totals(),
    }
    print(json.dumps(totals), flush=True)
    return 0


def _replay(settings: Settings, *, in_memory: bool, workers: int) -> dict[str, Any]:
    clock = PhaseClock()
    called = time.monotonic()
    parts = wiring.replay_parts(settings)
    if in_memory:
        parts = _views_in_memory(parts)
    report = rebuild(parts, handover_s=0.0, keep_old=False, workers=workers, on_progress=clock)
    returned = time.monotonic()
    if clock.started is None or clock.done_at is None:
        raise RuntimeError(f"the replay reported no records (events {report.events})")
    return {
        "events": clock.done,
        "total": clock.total,
        "dead_letters": report.dead_letters,
        "generation": report.generation,
        "called": called,
        "assigned": clock.started,
        "first_batch": clock.first,
        "done": clock.done_at,
        "returned": returned,
        # CPU from the first batch applied to the last (the share of a core it used).
        "cpu_share": _share(clock.cpu_done - clock.cpu_first, clock.done_at - (clock.first or 0)),
    }


def _views_in_memory(parts: ReplayParts) -> ReplayParts:
    """`parts` that fold into an `InMemoryViewStore` (see the module docstring)."""
    stores: dict[str, InMemoryViewStore] = {}

    def store(generation: str) -> InMemoryViewStore:
        return stores.setdefault(generation, InMemoryViewStore())

    return dataclasses.replace(parts, store_for=store)


def _read(settings: Settings) -> dict[str, Any]:
    """Every record of the topic through a bare consumer; then decode a sample, apart."""
    called = time.monotonic()
    # Built as the replay builds its own: no group, the replay's fetch sizes.
    consumer = groupless_consumer(
        settings.kafka_bootstrap,
        settings.kafka,
        purpose="bench-read",
        tuning={**REPLAY_FETCH, **REPLAY_QUEUE},
    )
    try:
        topic = settings.topic
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        total = 0
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        assigned = time.monotonic()
        count = size = 0
        first: float | None = None
        cpu_first = 0.0
        sample: list[bytes] = []
        while count < total:
            messages = consumer.consume(20_000, timeout=0.2)
            for message in messages:
                if message.error() is not None:
                    raise RuntimeError(f"reading {topic}: {message.error()}")
                size += len(message.key() or b"") + len(message.value() or b"")
            if messages and first is None:
                first, cpu_first = time.monotonic(), time.process_time()
            if len(sample) < _DECODE_SAMPLE:
                sample += [m.value() or b"" for m in messages[: _DECODE_SAMPLE - len(sample)]]
            count += len(messages)
        done = time.monotonic()
        cpu_s = time.process_time() - cpu_first
    finally:
        consumer.close()
    codec = wiring.codec(settings)
    started = time.perf_counter()
    for value in sample:
        codec.decode(value)
    decode_s = time.perf_counter() - started
    return {
        "events": count,
        "total": total,
        "bytes": size,
        "called": called,
        "assigned": assigned,
        "first_batch": first,
        "done": done,
        "cpu_share": _share(cpu_s, done - (first or done)),
        "decoded": len(sample),
        "decode_s": decode_s,
    }


def _share(cpu_s: float, wall_s: float) -> float | None:
    return round(cpu_s / wall_s, 3) if wall_s > 0 else None


if __name__ == "__main__":
    sys.exit(main())
