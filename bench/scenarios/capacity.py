"""Capacity (`capacity`): the measured figures the capacity model of docs/operations.md uses.

What the model needs is what one unit of work costs, in CPU seconds, not how fast a run
went: on the two-core machine the numbers come from, three brokers, the projectors,
Redis and the benchmark share two cores, so a wall-clock rate says how much CPU each
process was given. Every figure here is therefore taken with the processes' CPU time
(`/proc/<pid>/stat`, `CpuMeter.seconds`) beside the rate, and with the load average at
the time (1 min, `os.getloadavg`, as `uptime` prints it).

1. Projectors draining a backlog: one topic of `capacity_partitions` partitions (on
   a three-broker stack, replication 3), pre-filled; one projector process, then three in
   one consumer group (each its own static member id), from the moment the group holds
   every partition until every session holds its last event. Events/s, and CPU µs per
   event of the projectors, Redis and the brokers.
2. Projectors live: the same layouts while one publisher paces `producer.send` at fixed
   rates; publish→visible p50/p99 of a sample (as scenario 4) and CPU µs per event.
3. Summarizer slots (`bench.scenarios.capacity_llm`): the real `SummaryEngine` and its
   OpenAI client against a stand-in LLM of a fixed latency over HTTP.
4. Redis bytes (`bench.scenarios.capacity_memory`): typical sessions, sealed, summarized.

Then `bench.capacity_model.worked` turns the medians into the worked example for
10,000 messages/s. Three projectors and three brokers on two cores measure the
coordination (a consumer group sharing the partitions, replication), not scaling: the
table says so, and gives each process's CPU, `other` being the rest of the machine.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.capacity_model import Assumptions, Measured, worked
from bench.infra import (
    BenchStack,
    ProjectorProcess,
    ReadModelProbe,
    copy_key_directory,
    fresh_producer,
    publish_bulk,
)
from bench.measure import CpuMeter, frozen_heap, load_average, percentile
from bench.plan import Plan
from bench.projector_child import GO_ENV
from bench.report import Figure, Report, Table, say
from bench.scenarios.capacity_llm import SlotRun, summarizer_slots
from bench.scenarios.capacity_memory import MemoryRun, redis_bytes
from bench.scenarios.latency import paced_run
from bench.workload import chat_events, last_positions
from chatlog import wiring
from chatlog.schemas.position import Position
from chatlog.settings import Settings

__all__ = ["ProjectorGroup", "capacity"]

_ATTEMPTS = 3  # drains per repetition, should the group form too late


@dataclass
class _Layout:
    """The figures of one projector layout (1 or 3 processes in the group)."""

    projectors: int
    drain_rate: Figure
    drain_cpu: Figure
    drain_redis: Figure
    drain_kafka: Figure
    live: dict[float, dict[str, Figure]] = field(default_factory=dict)
    held: list[int] = field(default_factory=list)
    other: list[float] = field(default_factory=list)
    idle: dict[str, float] = field(default_factory=dict)  # cores used with nothing to do


class ProjectorGroup:
    """`count` projector processes in one consumer group, each its own static member.

    They are started together and join the group at once (`GO_ENV`): each builds its
    projector, says it is ready, and waits for the go.
    """

    def __init__(self, settings: Settings, stack: BenchStack, count: int, go: Path) -> None:
        self.go = go
        self.members = [
            ProjectorProcess(
                settings.model_copy(update={"instance_id": f"bench-{stack.run_id}-{n}"}),
                stack,
                env={GO_ENV: str(go)},
            )
            for n in range(count)
        ]

    def start(self, *, timeout: float = 120.0) -> None:
        """Start them all, wait until each is ready, then let them join together."""
        for member in self.members:
            member.start()
        ready = [Path(f"{self.go}.{m.settings.instance_id}.ready") for m in self.members]
        deadline = time.monotonic() + timeout
        while not all(path.exists() for path in ready):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the projectors were not ready within {timeout:g} s")
            time.sleep(0.02)
        self.go.touch()

    def check_alive(self) -> None:
        """Raise if any of them has exited."""
        for member in self.members:
            member.check_alive()

    def pids(self) -> dict[str, int]:
        """`projector-1`... : their process ids, for `CpuMeter`."""
        return {f"projector-{n}": p.pid for n, p in enumerate(self.members, 1)}


@contextlib.contextmanager
def _group(settings: Settings, stack: BenchStack, count: int) -> Iterator[ProjectorGroup]:
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as folder:
        group = ProjectorGroup(settings, stack, count, Path(folder) / "go")
        try:
            group.start()
            yield group
        finally:
            for member in group.members:
                member.stop()


def _cpu_per_event(used: Mapping[str, float], events: int, prefix: str) -> float:
    """µs of CPU per event of the processes whose name starts with `prefix`."""
    seconds = sum(v for name, v in used.items() if name.startswith(prefix))
    return seconds / max(1, events) * 1e6


def _net(used: Mapping[str, float], idle: Mapping[str, float], wall: float) -> dict[str, float]:
    """CPU seconds beyond what each process burns idle over `wall` seconds."""
    return {name: max(0.0, v - idle.get(name, 0.0) * wall) for name, v in used.items()}


def _remaining(probe: ReadModelProbe, last: Mapping[int, int]) -> int:
    """Events not projected yet, from the progress marks (written with every batch)."""
    marks = {int(p): int(o) for p, o in probe.client.hgetall(probe.keys().progress).items()}
    return sum(offset - marks.get(partition, -1) for partition, offset in last.items())


def capacity(stack: BenchStack, plan: Plan, report: Report) -> None:
    """The capacity figures and the worked example for 10,000 messages/s."""
    brokers = len(stack.admin.list_topics(timeout=30).brokers)
    settings = stack.scenario("capacity", partitions=plan.capacity_partitions)
    layouts = _projectors(stack, plan, settings, report)
    slots = summarizer_slots(stack, plan)
    memory = redis_bytes(stack, plan)
    _tables(report, plan, settings, brokers, stack.replication, layouts, slots, memory)


def _projectors(stack: BenchStack, plan: Plan, settings: Settings, report: Report) -> list[_Layout]:
    """Drain a backlog, then run live, with each layout of projectors."""
    with fresh_producer(settings) as producer:
        say(
            f"capacity: publishing {plan.capacity_events:,} events over "
            f"{plan.capacity_sessions:,} sessions, {plan.capacity_partitions} partitions"
        )
        traffic = chat_events(
            sessions=plan.capacity_sessions,
            count=plan.capacity_events,
            record_bytes=plan.record_bytes,
            codec=producer.codec,
            info=producer.info,
        )
        positions = publish_bulk(producer, traffic.events)
        sizes = [len(producer.encode(e)) for e in traffic.events[:1_000]]
        if not report.value_sizes:
            report.value_sizes += sizes
    expected = last_positions(traffic.events, positions)
    tails: dict[int, int] = {}
    for position in positions:
        tails[position.partition] = max(position.offset, tails.get(position.partition, -1))
    layouts = []
    first_session = plan.capacity_sessions
    for count in plan.capacity_projectors:
        name = f"{count} projector{'s' if count > 1 else ''}"
        layout = _Layout(
            count,
            Figure(f"{name}: backlog drained", "events/s"),
            Figure(f"{name}: projector CPU per event (drain)", "µs"),
            Figure(f"{name}: Redis CPU per event (drain)", "µs"),
            Figure(f"{name}: brokers' CPU per event (drain: fetch only)", "µs"),
        )
        layouts.append(layout)
        for rep in ["warmup", *(f"r{n}" for n in range(1, plan.repeat + 1))]:
            # A quick run's backlog is gone before three projectors have formed a group:
            # its figures are not the point, one attempt shows it runs.
            for attempt in range(1, 2 if plan.quick else _ATTEMPTS + 1):
                if _drain(stack, plan, settings, layout, f"{rep}-{attempt}", expected, tails):
                    break
    for layout in layouts:
        first_session = _live(stack, plan, layout, first_session)
    return layouts


def _drain(
    stack: BenchStack,
    plan: Plan,
    settings: Settings,
    layout: _Layout,
    rep: str,
    expected: Mapping[str, Position],
    tails: Mapping[int, int],
) -> bool:
    """One repetition: `layout.projectors` processes drain the pre-filled topic.

    Returns False, recording nothing, when the group took so long to form (a rebalance
    of static members on a loaded machine) that less than half the backlog was left.
    """
    rep_settings = stack.repetition(settings, f"p{layout.projectors}-{rep}")
    copy_key_directory(stack.redis, settings.redis_prefix, rep_settings.redis_prefix)
    probe = ReadModelProbe(stack.redis, rep_settings.redis_prefix)
    with _group(rep_settings, stack, layout.projectors) as group:
        meter = CpuMeter.for_stack(stack, **group.pids())
        leader = group.members[0]
        leader.wait_assigned(
            partitions=plan.capacity_partitions, members=layout.projectors, timeout=120
        )
        load = load_average()
        meter.start()
        assigned = time.perf_counter()
        # The first member may have started on the backlog before the others joined:
        # what is left when the whole group holds the partitions is what the clock sees.
        left = _remaining(probe, tails)
        done = probe.wait_applied(expected, group, timeout=max(120.0, plan.capacity_events / 500))
        used = meter.seconds()
        held = leader.assignment()
    stack.forget_keys(rep_settings.redis_prefix)
    rate = left / (done - assigned)
    say(
        f"capacity {layout.projectors} projector(s) {rep}: {rate:,.0f} events/s over "
        f"{left:,} events, partitions held {held}, load {load:.2f}; CPU s "
        + ", ".join(f"{k} {v:.2f}" for k, v in used.items())
    )
    if left < plan.capacity_events / 2:
        say(f"capacity: only {left:,} events left once the group formed; once more")
        return False
    if rep.startswith("warmup"):
        return True
    layout.drain_rate.add(rate, load)
    layout.drain_cpu.add(_cpu_per_event(used, left, "projector"), load)
    layout.drain_redis.add(_cpu_per_event(used, left, "redis"), load)
    layout.drain_kafka.add(_cpu_per_event(used, left, "kafka"), load)
    layout.held = held
    layout.other.append(used.get("other", math.nan) / (done - assigned))
    return True


def _live(stack: BenchStack, plan: Plan, layout: _Layout, first_session: int) -> int:
    """Paced publishing at each rate with the layout's projectors running; returns the
    next unused session number (each rate and repetition writes sessions of its own).

    On a topic of its own, empty when the projectors start, so that they have no backlog
    to catch up with first (the drained one now also holds the other layout's traffic).
    """
    settings = stack.scenario(
        f"capacity_live{layout.projectors}", partitions=plan.capacity_partitions
    )
    name = f"{layout.projectors} projector{'s' if layout.projectors > 1 else ''}"
    for rate, _ in plan.capacity_rates:
        at = f"{name} live at {rate:,.0f} events/s"
        layout.live[rate] = {
            "achieved": Figure(f"{at}: achieved send rate", "events/s"),
            "p50": Figure(f"{at}: publish→visible p50", "ms"),
            "p99": Figure(f"{at}: publish→visible p99", "ms"),
            "cpu": Figure(f"{at}: projector CPU per event, net of idle", "µs"),
            "redis": Figure(f"{at}: Redis CPU per event, net of idle", "µs"),
            "kafka": Figure(
                f"{at}: brokers' CPU per event (produce, replicate, fetch), net of idle", "µs"
            ),
        }
    with (
        _group(settings, stack, layout.projectors) as group,
        fresh_producer(settings) as producer,
    ):
        group.members[0].wait_assigned(
            partitions=plan.capacity_partitions, members=layout.projectors, timeout=120
        )
        meter = CpuMeter.for_stack(stack, **group.pids())
        # What the processes burn with nothing to do (heartbeats, polls, the brokers'
        # replication fetches): charged per event at a low rate, it would swamp the rest.
        meter.start()
        time.sleep(plan.capacity_idle_s)
        idle = {name: used / plan.capacity_idle_s for name, used in meter.seconds().items()}
        layout.idle = idle
        reader = wiring.reader(settings)
        try:
            for n in range(1, plan.repeat + 1):
                for rate, every in plan.capacity_rates:
                    count = math.ceil(rate * (plan.warmup_s + plan.capacity_live_s))
                    sessions = max(100, count // 10)
                    traffic = chat_events(
                        sessions=sessions,
                        count=count,
                        record_bytes=plan.record_bytes,
                        codec=producer.codec,
                        info=producer.info,
                        seed=1_000 + 10 * n,
                        first_session=first_session,
                    )
                    first_session += sessions
                    with frozen_heap():
                        load = load_average()
                        meter.start()
                        began = time.perf_counter()
                        achieved, samples = paced_run(
                            producer,
                            reader,
                            traffic.events,
                            rate=rate,
                            every=every,
                            warmup_s=plan.warmup_s,
                            publishers=1,
                        )
                        used = _net(meter.seconds(), idle, time.perf_counter() - began)
                    group.check_alive()
                    visible = [s.visible_s * 1000 for s in samples if s.visible_s is not None]
                    rows = layout.live[rate]
                    rows["achieved"].add(achieved, load)
                    rows["p50"].add(percentile(visible, 50), load)
                    rows["p99"].add(percentile(visible, 99), load)
                    rows["cpu"].add(_cpu_per_event(used, count, "projector"), load)
                    rows["redis"].add(_cpu_per_event(used, count, "redis"), load)
                    rows["kafka"].add(_cpu_per_event(used, count, "kafka"), load)
                    say(
                        f"capacity {layout.projectors} projector(s) at {rate:,.0f}/s r{n}: "
                        f"achieved {achieved:,.0f}/s, "
                        f"p50 {rows['p50'].values[-1]:.1f} ms, p99 {rows['p99'].values[-1]:.1f} "
                        f"ms ({len(visible)} of {len(samples)} samples visible), projector "
                        f"{rows['cpu'].values[-1]:.0f} µs/event, load {load:.2f}"
                    )
        finally:
            reader.client.close()
    stack.forget_keys(settings.redis_prefix)
    return first_session


def _per_core(us_per_event: float) -> str:
    """Events a second one core keeps up with, at `us_per_event` µs of CPU each."""
    return f"{1e6 / us_per_event:,.0f}" if us_per_event > 0 else "n/a"


def _tables(
    report: Report,
    plan: Plan,
    settings: Settings,
    brokers: int,
    replication: int,
    layouts: Sequence[_Layout],
    slots: SlotRun,
    memory: MemoryRun,
) -> None:
    """The measured table and the worked example."""
    measured = Table(
        title="capacity: measured",
        columns=["figure", "median (range)", "load average, 1 min: median (range)"],
    )
    for layout in layouts:
        for figure in (layout.drain_rate, layout.drain_cpu, layout.drain_redis, layout.drain_kafka):
            measured.rows.append(figure.row())
        for rows in layout.live.values():
            measured.rows += [figure.row() for figure in rows.values()]
    measured.rows += [figure.row() for figure in slots.figures]
    measured.rows += [figure.row() for figure in memory.figures]
    per_core = "; ".join(
        f"{layout.projectors} projector(s): {1e6 / layout.drain_cpu.median:,.0f} events/s "
        f"per core draining a backlog, "
        + ", ".join(
            f"{_per_core(rows['cpu'].median)} live at {rate:,.0f}/s"
            for rate, rows in layout.live.items()
        )
        for layout in layouts
        if layout.drain_cpu.values
    )
    measured.notes += [
        f"{brokers} broker(s); the topic: {plan.capacity_partitions} partitions, replication "
        f"{replication}; {plan.capacity_events:,} events over {plan.capacity_sessions:,} "
        f"sessions to drain; live: one publisher thread, every n-th event sampled for "
        f"publish→visible (as the latency scenario), {plan.capacity_live_s:g} s after a "
        f"{plan.warmup_s:g} s warm-up per rate",
        f"per core (1 / CPU per event): {per_core}",
        "partitions held per projector (broker's view): "
        + "; ".join(f"{layout.projectors}: {layout.held}" for layout in layouts),
        "idle, nothing published (cores, subtracted from the live figures): "
        + "; ".join(
            f"{layout.projectors} projector(s): "
            + ", ".join(f"{k} {v:.3f}" for k, v in layout.idle.items() if k != "bench")
            for layout in layouts
        ),
        "the rest of the machine (`other`, cores) while draining: "
        + "; ".join(
            f"{layout.projectors} projector(s) {statistics.median(layout.other):.2f}"
            for layout in layouts
            if layout.other
        ),
        "three projectors and three brokers on two cores measure the coordination (the group "
        "sharing the partitions, replication across brokers) and the CPU each event costs, "
        "not scaling: the processes take turns on the same two cores, so the wall-clock rate "
        "of three cannot be three times one's",
        *slots.notes,
        *memory.notes,
    ]
    report.tables.append(measured)
    # A projector's cost per event falls as its own rate grows (more events a batch, the
    # per-batch work shared): the live run with the most events per projector process is
    # the one nearest a deployment's share of 10,000/s, and the backlog's cost the floor.
    layout, costly = max(
        ((layout, rows) for layout in layouts for rows in layout.live.values()),
        key=lambda pair: pair[1]["achieved"].median / pair[0].projectors,
    )
    sizes = report.value_sizes
    model = Measured(
        projector_us=costly["cpu"].median,
        projector_drain_us=layout.drain_cpu.median,
        redis_us=costly["redis"].median,
        kafka_us=costly["kafka"].median,
        record_bytes=statistics.mean(sizes) if sizes else float(plan.record_bytes),
        replication=replication,
        brokers=brokers,
        summaries_per_slot=slots.per_slot,
        summarizer_us=slots.cpu_per_summary,
        threshold=settings.summary_threshold,
        session_bytes=memory.session_bytes,
        user_bytes=memory.user_bytes,
    )
    assumed = Assumptions()
    example = Table(
        title=f"capacity: worked example for {assumed.rate:,.0f} messages/s",
        columns=["what", "arithmetic", "result"],
        labels=2,
    )
    example.rows += [[line.what, line.arithmetic, line.result] for line in worked(model, assumed)]
    example.notes.append(
        f"from the medians above: the projector's, Redis's and the brokers' CPU per event "
        f"of the live run with the most events a second per projector process "
        f"({costly['cpu'].name}: a projector's cost per event falls as its batches grow), "
        f"and the same layout's CPU per event draining a backlog (large batches: the floor); "
        f"Redis's includes the benchmark's sampled reads (every n-th event read back until "
        f"visible, polling), as a chat back end reads a context per turn; assumed: "
        f"cores {assumed.busy:.0%} busy at the peak, {assumed.users:,} users with "
        f"{assumed.sessions_per_user} sessions each in Redis, {assumed.summarized_share:.0%} "
        f"of messages leaving the window; `bench.capacity_model` holds the arithmetic"
    )
    report.tables.append(example)
