"""How the scenarios measure: percentiles, a quiet heap, and who used the CPU meanwhile."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from chatlog.local_stack import resolve_state_dir
from dev.services.state import read_state

if TYPE_CHECKING:
    from bench.infra import BenchStack

__all__ = ["CpuMeter", "frozen_heap", "load_average", "median_shares", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def load_average() -> float:
    """The 1-minute load average, as `uptime` prints it (NaN where unknown)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the garbage collector off the benchmark's own long-lived objects meanwhile.

    The benchmark holds its whole workload (up to 100,000 events and records), which a
    chat back end or the projector process would not; every full collection would walk
    it, and such pauses (tens of ms, measured) would be charged to the code under test.
    Frozen, they are skipped; what the measured code allocates is collected as usual.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class CpuMeter:
    """CPU time of the processes involved, from /proc, to see who was busy during a run.

    On two cores, "the projector used 95% of a core" says it is CPU-bound, and "the
    benchmark itself used 120%" says the measuring is in the way. Linux only; elsewhere
    it reports nothing.
    """

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start: dict[str, float] = {}
        self._started_at = 0.0

    @classmethod
    def for_stack(cls, stack: BenchStack, **more: int) -> CpuMeter:
        """The benchmark, the local Kafka and Redis (when they are the local stack), `more`."""
        pids = {"bench": os.getpid(), **more}
        state = read_state(state_dir=resolve_state_dir(stack.base.state_dir))
        if state is not None and state.kafka.bootstrap == stack.base.kafka_bootstrap:
            pids.update({f"kafka-{n}": pid for n, pid in enumerate(state.kafka.pids, 1)})
            if len(state.kafka.pids) == 1:
                pids["kafka"] = pids.pop("kafka-1")
            pids["redis"] = state.redis.pid
        return cls(pids)

    def start(self) -> None:
        """Take the starting point."""
        self._start = self._read()
        self._started_at = time.perf_counter()

    def busy(self) -> dict[str, float]:
        """Per process, the share of one core used since `start` (1.0 = one full core).

        `other` is what the rest of the machine used meanwhile (all cores busy, minus the
        processes named): on a shared machine, it says how noisy the run was.
        """
        wall = time.perf_counter() - self._started_at
        if wall <= 0:
            return {}
        return {name: seconds / wall for name, seconds in self.seconds().items()}

    def seconds(self) -> dict[str, float]:
        """Per process, the CPU seconds (user + system) used since `start`.

        What a core-count needs: on a busy two-core machine a process's wall-clock rate
        says how much CPU it got, its CPU seconds per unit of work what it needs. `other`
        is the rest of the machine, as in `busy`.
        """
        now = self._read()
        used = {name: now[name] - self._start[name] for name in now if name in self._start}
        machine = used.pop("machine", None)
        if machine is not None:
            used["other"] = max(0.0, machine - sum(used.values()))
        return used

    @staticmethod
    def describe(busy: Mapping[str, float]) -> str:
        """`bench 85%, projector 97%, ...` (percent of one core)."""
        return ", ".join(f"{name} {share:.0%}" for name, share in busy.items())

    def _read(self) -> dict[str, float]:
        seconds = {}
        for name, pid in self.pids.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            # utime and stime are fields 14 and 15 of stat(5); [0] here is field 3.
            seconds[name] = (int(fields[11]) + int(fields[12])) / self._tick
        with contextlib.suppress(OSError, IndexError, ValueError):
            # The first line of /proc/stat: every core's time, by state; idle and iowait
            # are the 4th and 5th numbers.
            ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
            seconds["machine"] = (sum(ticks[:8]) - ticks[3] - ticks[4]) / self._tick
        return seconds


def median_shares(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per process, the median CPU share over runs (processes seen in every run)."""
    names = [name for name in runs[0] if all(name in run for run in runs)] if runs else []
    return {name: statistics.median(run[name] for run in runs) for name in names}
