"""The capacity model: from measured per-event costs to what a target rate needs.

Pure arithmetic, no I/O, so that the worked example printed by ``python -m bench --only
capacity`` and the one in docs/operations.md are the same computation. The inputs are
what the capacity scenario measured (`Measured`); the assumptions a deployment must
choose for itself (`Assumptions`: the target rate, how busy a core may run, the user
base, how much of the traffic outlives the window) are stated beside every result.

Why CPU seconds per event and not events per second: on the two-core machine the
figures come from, the projectors, three brokers, Redis and the benchmark share two
cores, so a wall-clock rate says how much CPU a process was given; its CPU time per
event says how much it needs, and that is what a core count is made of.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Assumptions", "Line", "Measured", "worked"]


@dataclass(frozen=True, slots=True)
class Measured:
    """The per-unit costs measured (medians)."""

    projector_us: float  # projector CPU per event, live (paced publishing)
    projector_drain_us: float  # the same draining a backlog: large batches, the floor
    redis_us: float  # Redis CPU per event, same runs
    kafka_us: float  # every broker's CPU per event together, same runs (produce + fetch)
    record_bytes: float  # an event as published (sealed, Avro)
    replication: int  # the replication factor of the measured topic
    brokers: int
    summaries_per_slot: dict[float, float]  # LLM latency (s) -> summaries/s per slot
    summarizer_us: float  # summarizer CPU per summary (engine, HTTP client, producer)
    threshold: int  # turns per summary (CHATLOG_SUMMARY_THRESHOLD)
    session_bytes: float  # Redis memory of one typical session's keys
    user_bytes: float  # Redis memory of one user's own keys (index, key directory, claims)


@dataclass(frozen=True, slots=True)
class Assumptions:
    """What the worked example assumes; every line of it names the ones it uses."""

    rate: float = 10_000.0  # messages (events) per second, sustained at the peak
    busy: float = 0.5  # how busy a core may run: the rest is for catching up after a stop
    users: int = 1_000_000  # users with sessions in Redis (within the session TTL)
    sessions_per_user: int = 4
    summarized_share: float = 0.5  # messages that leave the window (40-turn sessions, window 20)
    llm_latency_s: float = 1.0
    partitions_per_instance: int = 2  # room to double the projectors on the same topic


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the worked example: what, how it is computed, the result."""

    what: str
    arithmetic: str
    result: str


def worked(m: Measured, a: Assumptions = Assumptions()) -> list[Line]:
    """The worked example for `a.rate` events/s, line by line."""
    lines: list[Line] = []
    cores = a.rate * m.projector_us / 1e6
    instances = max(1, math.ceil(cores / a.busy))
    lines.append(
        Line(
            "projector CPU",
            f"{a.rate:,.0f}/s x {m.projector_us:,.0f} µs (live; draining a backlog "
            f"{m.projector_drain_us:,.0f} µs)",
            f"{cores:.2f} cores at 100% busy ({a.rate * m.projector_drain_us / 1e6:.2f} at the "
            f"backlog's cost)",
        )
    )
    lines.append(
        Line(
            "projector processes (one core each)",
            f"{cores:.2f} cores ÷ {a.busy:.0%} busy, rounded up",
            f"{instances}",
        )
    )
    partitions = _round_up(instances * a.partitions_per_instance, 6)
    lines.append(
        Line(
            "partitions of the events topic (the ceiling on projector processes)",
            f"{instances} x {a.partitions_per_instance}, rounded up to a multiple of 6",
            f"{partitions}",
        )
    )
    redis_cores = a.rate * m.redis_us / 1e6
    lines.append(
        Line(
            "Redis CPU (single-threaded: one core per master)",
            f"{a.rate:,.0f}/s x {m.redis_us:,.0f} µs",
            f"{redis_cores:.2f} cores: "
            + (
                "one master"
                if redis_cores <= a.busy
                else f"{math.ceil(redis_cores / a.busy)} Redis Cluster masters at {a.busy:.0%}"
            ),
        )
    )
    kafka_cores = a.rate * m.kafka_us / 1e6
    written = a.rate * m.record_bytes * 3 / 1e6
    lines.append(
        Line(
            "Kafka brokers' CPU (all brokers together)",
            f"{a.rate:,.0f}/s x {m.kafka_us:,.0f} µs (measured at replication {m.replication}, "
            f"{m.brokers} broker(s))",
            f"{kafka_cores:.2f} cores",
        )
    )
    lines.append(
        Line(
            "Kafka bytes written (replication 3)",
            f"{a.rate:,.0f}/s x {m.record_bytes:,.0f} B x 3",
            f"{written:.1f} MB/s, {written * 86_400 / 1e6:.2f} TB a day: 3 brokers "
            f"(one per replica) suffice; more for disk, not for rate",
        )
    )
    memory = a.users * (m.user_bytes + a.sessions_per_user * m.session_bytes)
    lines.append(
        Line(
            "Redis memory (data, before the allocator's overhead)",
            f"{a.users:,} users x ({m.user_bytes / 1024:.1f} KB + {a.sessions_per_user} x "
            f"{m.session_bytes / 1024:.1f} KB)",
            f"{memory / 2**30:.1f} GiB",
        )
    )
    summaries = a.rate * a.summarized_share / m.threshold
    lines.append(
        Line(
            "summaries needed",
            f"{a.rate:,.0f}/s x {a.summarized_share:.0%} leaving the window ÷ "
            f"{m.threshold} turns a summary",
            f"{summaries:,.0f}/s",
        )
    )
    for latency, per_slot in sorted(m.summaries_per_slot.items()):
        lines.append(
            Line(
                f"LLM slots at {latency:g} s a call (CHATLOG_SUMMARIZER_CONCURRENCY, summed "
                f"over summarizers)",
                f"{summaries:,.0f}/s ÷ {per_slot:.2f} summaries/s per slot (measured)",
                f"{math.ceil(summaries / per_slot):,}",
            )
        )
    summarizer_cores = summaries * m.summarizer_us / 1e6
    lines.append(
        Line(
            "summarizer CPU",
            f"{summaries:,.0f}/s x {m.summarizer_us:,.0f} µs a summary",
            f"{summarizer_cores:.2f} cores: {max(1, math.ceil(summarizer_cores / a.busy))} "
            f"summarizer process(es) at {a.busy:.0%}",
        )
    )
    return lines


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step
