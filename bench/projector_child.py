"""The projector as the benchmark runs it: its own process, configured by CHATLOG_* variables.

Why a child process rather than a `KafkaProjector` thread in the benchmark? A deployed
projector is its own process, and in the benchmark's process it would share the GIL with
the publisher and with the threads that measure, so each would slow the other and the
numbers would describe neither. It is not ``chatlog run projector`` either, so that it
depends on nothing but `chatlog.wiring.projector(Settings.from_env())` (the same object
the CLI runs), adds no code to the projection path, and can hand its totals back.

On exit it prints the projector's running totals as one JSON line, so the benchmark can
check that nothing was dead-lettered and see how large the batches were, together with
the garbage collector's pauses (observed through `gc.callbacks`, which costs next to
nothing): a full collection stops the projector, and shows up as latency. It also gives
its peak resident memory, `VmHWM` (see `peak_rss_kib` for why not `ru_maxrss`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import resource
import signal
import statistics
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from chatlog import wiring
from chatlog.logs import setup_logging
from chatlog.processors.kafka_projector import tune_garbage_collector
from chatlog.settings import Settings

# Names a file: the projector is built, says so in `<file>.<instance id>.ready`, and
# joins its group once the file exists (`bench.scenarios.capacity` starts several).
GO_ENV = "BENCH_PROJECTOR_GO"


class GcPauses:
    """Counts and times the collector's passes (one callback before, one after each)."""

    def __init__(self) -> None:
        self.full = 0
        self.total_s = 0.0
        self.longest_s = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.total_s += pause
        self.longest_s = max(self.longest_s, pause)
        if info.get("generation") == 2:
            self.full += 1

    def totals(self) -> dict[str, float]:
        """The pauses as the benchmark reads them."""
        return {
            "gc_full_collections": self.full,
            "gc_pause_total_ms": round(self.total_s * 1000, 1),
            "gc_pause_max_ms": round(self.longest_s * 1000, 1),
        }

    @staticmethod
    def describe(runs: Sequence[Mapping[str, Any]]) -> str:
        """`N full collections, pauses X ms in all, longest Y ms`: medians of runs' totals."""
        runs = [run for run in runs if "gc_pause_max_ms" in run]

        def median(key: str) -> float:
            return statistics.median(float(run[key]) for run in runs) if runs else math.nan

        return (
            f"{median('gc_full_collections'):.0f} full collections, pauses "
            f"{median('gc_pause_total_ms'):,.0f} ms in all, longest "
            f"{median('gc_pause_max_ms'):,.0f} ms"
        )


def gc_note(runs: Sequence[Mapping[str, Any]]) -> str:
    """The projector's collector pauses for a note (medians over runs; whole process life)."""
    if not any("gc_pause_max_ms" in run for run in runs):
        return ""
    return (
        f"; the projector's garbage collector (whole process life, start-up included): "
        f"{GcPauses.describe(runs)}"
    )


def main() -> int:
    """Project until SIGTERM or SIGINT, then print the totals."""
    # librdkafka's transient warnings (a coordinator still loading) are noise here
    # (setup_logging keeps them out); the benchmark notices real trouble by the
    # read-model not advancing.
    setup_logging("bench-projector", level=logging.WARNING)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    settings = Settings.from_env()
    projector = wiring.projector(settings)
    tune_garbage_collector()  # as `chatlog run projector` does
    go = os.environ.get(GO_ENV)
    if go:
        # Several projectors of one group join it together, so that none drains the
        # backlog alone while the others are still starting (Python takes seconds).
        Path(f"{go}.{settings.instance_id}.ready").touch()
        while not Path(go).exists() and not stop.wait(0.005):
            pass
    projector.run(stop=stop, report_every_s=3600.0)
    totals = {**dataclasses.asdict(projector.stats), **pauses.totals()}
    print(json.dumps({**totals, "peak_rss_kib": peak_rss_kib()}), flush=True)
    return 0


def peak_rss_kib() -> int:
    """This process's peak resident memory in KiB: VmHWM, else ru_maxrss.

    Why not `getrusage().ru_maxrss`? On Linux, exec saves the high-water mark of the
    address space it replaces into the process's `ru_maxrss`, and a child spawned by fork
    or vfork replaces a copy of its parent's: a child of a benchmark process that holds
    500 MB reports at least 500 MB (measured), whatever it uses itself. `VmHWM` belongs to
    the address space exec created.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    sys.exit(main())
