"""Memory (`memory`): the Redis memory each store keeps for one 1,000-message session.

Measured on the sessions the read scenario wrote (`bench.scenarios.reads` calls it):
`MEMORY USAGE ... SAMPLES 0` summed over each store's keys, chatlog's meta hash and
message list beside LangChain's `RedisChatMessageHistory` list and a plain Redis list.
The memory rows of the projector's and the replay's peak resident memory (`peak_memory`)
are filled by those scenarios; no peer runs such a process.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from bench.peers import LangChainHistory, PlainRedisList, langchain_peer
from bench.report import Metric, Report
from bench.workload import Traffic
from chatlog.projections.redis_reader import RedisReader

__all__ = ["peak_memory", "redis_memory"]


def redis_memory(
    report: Report,
    reader: RedisReader,
    langchain: LangChainHistory | None,
    plain: PlainRedisList,
    traffic: Traffic,
    by_size: dict[int, list[int]],
    blocked: str | None,
) -> None:
    """Redis bytes per session of the largest size (MEMORY USAGE ... SAMPLES 0)."""
    size = max(by_size)
    sessions = [traffic.sessions[i] for i in by_size[size]]
    keys = reader.keys()

    def usage(names: Sequence[str]) -> float:
        return float(sum(int(reader.client.memory_usage(k, samples=0) or 0) for k in names))

    ours = report.measure("memory", "chatlog", "KB")
    ours.add(statistics.median(usage([keys.meta(s), keys.messages(s)]) for s in sessions) / 1024)
    theirs = report.measure("memory", "plain", "KB")
    theirs.add(statistics.median(usage(plain.keys(s)) for s in sessions) / 1024)
    metric = f"Redis memory per {size:,}-message session (MEMORY USAGE of its keys)"
    lc: Metric | None = None
    if langchain is not None:
        lc = report.measure("memory", "LangChain", "KB")
        lc.add(statistics.median(usage(langchain.keys(s)) for s in sessions) / 1024)
    peer = langchain_peer("LangChain RedisChatMessageHistory", blocked)
    report.compare("memory", metric, ours, peer, lc, better="lower")
    report.compare("memory", metric, ours, "plain Redis list", theirs, better="lower")
    report.notes.append(
        f"memory: `MEMORY USAGE <key> SAMPLES 0` (every element counted) summed over the keys "
        f"of each of the {len(sessions)} sessions of {size:,} messages, median: chatlog's "
        f"meta hash and message list (its window and unsummarized overflow; the per-user "
        f"index entry, shared by a user's sessions, is left out; every message also stays "
        f"in Kafka's log, on disk, not in Redis), LangChain's list and the plain list (every "
        f"message, as JSON)"
    )


def peak_memory(report: Report, process: str, *, events: int, sessions: int) -> Metric:
    """The memory row of a process's peak resident memory (`VmHWM`), for it to fill."""
    rss = report.measure("memory", f"{process} peak RSS", "MB")
    report.compare(
        "memory",
        f"{process} process peak resident memory (VmHWM), {events:,} events over "
        f"{sessions:,} sessions",
        rss,
        better="lower",
    )
    return rss
