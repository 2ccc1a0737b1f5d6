"""LangGraph checkpoints (`checkpoints`): `put` and `get_tuple` of `ChatlogCheckpointSaver`,
beside LangGraph's `InMemorySaver` and the Redis saver (`langgraph-checkpoint-redis`).

What is measured? The calls LangGraph makes: `put` of a checkpoint (a graph's step), and
`get_tuple` of a thread's newest checkpoint (what `invoke` and `get_state` read first),
for a small (2 KB) and a large (200 KB) state. Per saver, size and repetition: puts
round-robin over threads of their own, each checkpoint the child of its thread's previous
one, then reads of each thread's newest checkpoint, round-robin; each after a tenth as
many warm-up calls, from one thread; p50 and p99 of the calls.

* chatlog: `put` publishes a `CheckpointSaved` event, sealed under the owner's key, and
  returns once the broker has acknowledged it; `get_tuple` reads the projector's copy
  in Redis (the projector runs in a process of its own) and opens it. Every thread is
  read once before the timed reads, so they do not wait for the projector; that wait
  (read-your-writes) is a detail row of its own: `get_tuple` right after a `put` to the
  same thread. And `get_tuple` of an older checkpoint by its id (time travel), which
  chatlog reads from the log, is set beside the Redis saver's.
* the Redis saver (`RedisSaver`): `put` stores the checkpoint as a RedisJSON document
  indexed by RediSearch; `get_tuple` of the newest follows its pointer to the latest.
* `InMemorySaver`: dicts in this process, serialized by the same serializer; the floor of
  what a checkpoint call costs, with no network and no durability.

Every Redis row runs on one server, one with the JSON and search modules the Redis saver
needs (the local stack's Redis Stack): chatlog's projector keeps this scenario's
read-model there too. Without such a Redis, the Redis saver's rows say blocked and why,
and chatlog runs on its usual Redis.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from bench.infra import BenchStack, running
from bench.measure import frozen_heap, percentile
from bench.plan import Plan
from bench.report import Metric, Report, say
from bench.workload import chat_text
from chatlog.client import ChatLog
from chatlog.settings import Settings

__all__ = ["checkpoints"]

SCENARIO = "checkpoint"
SAVERS = ("chatlog", "memory", "redis")
_LABELS = {"chatlog": "chatlog", "memory": "InMemorySaver", "redis": "Redis saver"}
_PEERS = {
    "memory": "LangGraph InMemorySaver (in process, no network: the floor)",
    "redis": "RedisSaver (langgraph-checkpoint-redis)",
}
_CALLS = ("put", "get_tuple")
_THREADS = 10
_MESSAGE_CHARS = 200  # the state: chat-like messages of this many characters
_OLDER_SHARE = 0.03  # older-checkpoint reads (chatlog reads the log): this share of calls
_MODULES = ("rejson", "search")


@dataclass(frozen=True)
class _Pair:
    """p50 and p99 of one call."""

    p50: Metric
    p99: Metric

    def add(self, timings: Sequence[float]) -> None:
        self.p50.add(percentile(timings, 50))
        self.p99.add(percentile(timings, 99))


class _Chains:
    """Threads of one saver, size and repetition: each one's configs in the order put."""

    def __init__(self, prefix: str) -> None:
        self.threads = [f"{prefix}-{t}" for t in range(_THREADS)]
        self.configs: list[list[dict[str, Any]]] = [[self.thread(t)] for t in range(_THREADS)]

    def thread(self, t: int) -> dict[str, Any]:
        return {"configurable": {"thread_id": self.threads[t], "checkpoint_ns": ""}}

    def put(self, saver: Any, t: int, state: list[str]) -> None:
        """A checkpoint of `state`, the child of thread `t`'s last one."""
        from langgraph.checkpoint.base import empty_checkpoint  # noqa: PLC0415 - the extra

        step = len(self.configs[t])
        checkpoint = empty_checkpoint()  # a new, time-ordered id
        checkpoint["channel_values"] = {"messages": state}
        checkpoint["channel_versions"] = {"messages": step}
        metadata = {"source": "loop", "step": step, "parents": {}}
        config = saver.put(self.configs[t][-1], checkpoint, metadata, {"messages": step})
        self.configs[t].append(config)

    def older(self, t: int) -> dict[str, Any]:
        """The config of the checkpoint halfway along thread `t`."""
        return self.configs[t][len(self.configs[t]) // 2]


def checkpoints(stack: BenchStack, plan: Plan, report: Report) -> None:
    """The checkpoints scenario: see the module docstring."""
    from langgraph.checkpoint.memory import InMemorySaver  # noqa: PLC0415 - the extra

    from chatlog.integrations.langgraph import ChatlogCheckpointSaver  # noqa: PLC0415

    url, blocked = _redis_with_modules(stack.base)
    settings = stack.scenario("checkpoints").model_copy(update={"redis_url": url})
    client = redis.Redis.from_url(url)
    log = ChatLog.from_settings(settings, flush_on_sigterm=False)
    savers: dict[str, Any] = {
        "chatlog": ChatlogCheckpointSaver(log, user_id=f"bench-{stack.run_id}"),
        "memory": InMemorySaver(),
    }
    lg_prefix = f"{settings.redis_prefix}:lg"
    if blocked is None:
        savers["redis"] = _redis_saver(client, lg_prefix)
    sizes = dict(plan.checkpoint_calls)
    rows = _rows(report, sizes, blocked)
    after_put = {
        size: report.metric(
            SCENARIO, f"chatlog get_tuple right after its own put, p50, {_kb(size)}", "ms"
        )
        for size in sizes
    }
    serialized: dict[int, int] = {}
    version = client.info("server").get("redis_version", "?")
    what = ", ".join(f"{c:,} puts and reads of {_kb(s)}" for s, c in sizes.items())
    say(f"checkpoint: {what} per saver, on {_host(url)}")
    try:
        with running(settings, stack) as projector, frozen_heap():
            projector.wait_assigned()
            for n in range(1, plan.repeat + 1):
                # Alternate the order, so that a warming cache or a busy neighbour
                # favours no saver.
                order = list(savers) if n % 2 else list(reversed(savers))
                for size, calls in sizes.items():
                    state = _state(size, seed=n)
                    serialized[size] = _serialized(savers["chatlog"], state)
                    for name in order:
                        chains = _Chains(f"b{stack.run_id}-{n}-{size // 1000}k-{name}")
                        _measure(
                            name, savers[name], chains, state, size, calls, rows, after_put[size]
                        )
                        projector.check_alive()
                        say(
                            f"checkpoint r{n}, {_kb(size)}, {_LABELS[name]}: put p50 "
                            f"{rows[name, size, 'put'].p50.values[-1]:.3f} ms, get_tuple p50 "
                            f"{rows[name, size, 'get_tuple'].p50.values[-1]:.3f} ms"
                        )
    finally:
        log.close()
        stack.forget_keys(settings.redis_prefix, client=client)
        if "redis" in savers:
            _drop_redis_saver(client, lg_prefix, stack.run_id)
        client.close()
    report.notes.append(
        "checkpoint: per saver, size and repetition, "
        + ", ".join(
            f"{c:,} puts and {c:,} get_tuple of a {_kb(s)} state ({serialized.get(s, 0):,} B "
            f"serialized)"
            for s, c in sizes.items()
        )
        + f", round-robin over {_THREADS} threads after a tenth as many warm-up calls, one "
        f"thread; the state: one channel of {_MESSAGE_CHARS}-character chat messages, "
        f"serialized by LangGraph's `JsonPlusSerializer` (every saver's default), each "
        f"checkpoint the child of its thread's previous one. chatlog: `put` returns once "
        f"the broker has the sealed event; `get_tuple` of the newest reads the projector's "
        f"copy in Redis; every thread is read once before the timed reads, so they do not "
        f"wait for the projector (that wait is the `right after its own put` row: a put, "
        f"then a get_tuple of its thread, timed). An older checkpoint: chatlog reads the "
        f"log from its offset to the partition's end (the thread's later checkpoints and "
        f"the partition's other records included), the Redis saver its JSON document. "
        f"Every Redis call on one server, {_host(url)} (Redis {version})"
        + (f"; the Redis saver blocked: {blocked}" if blocked else "")
    )


def _rows(
    report: Report, sizes: dict[int, int], blocked: str | None
) -> dict[tuple[str, int, str], _Pair]:
    """Every saver's p50 and p99 per size and call, and the first table's comparisons."""
    rows: dict[tuple[str, int, str], _Pair] = {}
    for size in sizes:
        for call in (*_CALLS, "older"):
            for name in SAVERS:
                metric = f"{_LABELS[name]} {call} {{}}, {_kb(size)}"
                rows[name, size, call] = _Pair(
                    *(report.measure(SCENARIO, metric.format(q), "ms") for q in ("p50", "p99"))
                )
            for q in ("p50", "p99") if call != "older" else ("p50",):
                what = f"{call} {q}, {_kb(size)} state"
                if call == "older":
                    what = f"get_tuple of an older checkpoint (time travel) p50, {_kb(size)} state"
                ours = getattr(rows["chatlog", size, call], q)
                for name in ("memory", "redis") if call != "older" else ("redis",):
                    peer = _PEERS[name]
                    theirs: Metric | None = getattr(rows[name, size, call], q)
                    if name == "redis" and blocked is not None:
                        peer, theirs = f"{peer}: blocked, {blocked}", None
                    report.compare(SCENARIO, what, ours, peer, theirs, better="lower")
    return rows


def _measure(
    name: str,
    saver: Any,
    chains: _Chains,
    state: list[str],
    size: int,
    calls: int,
    rows: dict[tuple[str, int, str], _Pair],
    after_put: Metric,
) -> None:
    """One saver's calls on a state of `size`, into its rows: puts, then reads."""
    warmup = max(5, calls // 10)
    rows[name, size, "put"].add(
        _timed(lambda i: chains.put(saver, i % _THREADS, state), calls, warmup)
    )
    for t in range(_THREADS):  # read-your-writes waits here, untimed
        _check(name, saver.get_tuple(chains.thread(t)), chains.configs[t][-1], state)
    rows[name, size, "get_tuple"].add(
        _timed(lambda i: saver.get_tuple(chains.thread(i % _THREADS)), calls, warmup)
    )
    if name in ("chatlog", "redis"):
        older = _timed(
            lambda i: saver.get_tuple(chains.older(i % _THREADS)),
            max(3, int(calls * _OLDER_SHARE)),
            1,
        )
        rows[name, size, "older"].p50.add(percentile(older, 50))
    if name == "chatlog":
        after_put.add(percentile(_put_then_get(saver, chains, state, warmup), 50))


def _check(name: str, found: Any, expected: dict[str, Any], state: list[str]) -> None:
    """The newest checkpoint read is the one last put, with its state."""
    wanted = expected["configurable"]["checkpoint_id"]
    if found is None or found.config["configurable"]["checkpoint_id"] != wanted:
        raise AssertionError(f"{name}: get_tuple did not return checkpoint {wanted}")
    if found.checkpoint["channel_values"]["messages"] != state:
        raise AssertionError(f"{name}: checkpoint {wanted} read back with another state")


def _timed(call: Callable[[int], object], count: int, warmup: int) -> list[float]:
    """`call(i)` for i in 0..warmup+count; the last `count` calls' times in ms."""
    timings = []
    for i in range(warmup + count):
        started = time.perf_counter()
        call(i)
        if i >= warmup:
            timings.append((time.perf_counter() - started) * 1000)
    return timings


def _put_then_get(saver: Any, chains: _Chains, state: list[str], count: int) -> list[float]:
    """A put, then the get_tuple of its thread's newest, timed: what a process that reads
    what it has just written waits for the projector."""
    timings = []
    for i in range(count):
        chains.put(saver, i % _THREADS, state)
        started = time.perf_counter()
        saver.get_tuple(chains.thread(i % _THREADS))
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def _state(size: int, *, seed: int) -> list[str]:
    """About `size` bytes of chat messages."""
    rng = random.Random(seed)
    return [chat_text(rng, _MESSAGE_CHARS) for _ in range(max(1, size // _MESSAGE_CHARS))]


def _serialized(saver: Any, state: list[str]) -> int:
    """The serialized size of a checkpoint of `state` (what the rows call its size)."""
    from langgraph.checkpoint.base import empty_checkpoint  # noqa: PLC0415 - the extra

    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"messages": state}
    return len(saver.serde.dumps_typed(checkpoint)[1])


def _redis_with_modules(base: Settings) -> tuple[str, str | None]:
    """The Redis every row runs on: the first of the recall Redis and the read-model's
    with the JSON and search modules (None: found), else the read-model's and why not."""
    seen = []
    for url in dict.fromkeys(u for u in (base.recall_redis_url, base.redis_url) if u):
        client = redis.Redis.from_url(url)
        try:
            loaded = {str(m[b"name"], "utf-8").lower() for m in client.module_list()}
        except redis.RedisError as exc:
            seen.append(f"{_host(url)}: {exc}")
            continue
        finally:
            client.close()
        if all(module in loaded for module in _MODULES):
            return url, None
        seen.append(f"{_host(url)} has {', '.join(sorted(loaded)) or 'no modules'}")
    return base.redis_url, (
        f"it needs Redis's JSON and search modules ({'; '.join(seen)}); `make services` "
        f"runs a Redis Stack with both (CHATLOG_RECALL_REDIS_URL)"
    )


def _redis_saver(client: redis.Redis, prefix: str) -> Any:
    """The Redis saver, its keys and indexes under `prefix`, its indexes made."""
    from langgraph.checkpoint.redis import RedisSaver  # noqa: PLC0415 - a peer (dev extra)

    saver = RedisSaver(
        redis_client=client,
        checkpoint_prefix=f"{prefix}:checkpoint",
        checkpoint_write_prefix=f"{prefix}:checkpoint_write",
    )
    saver.setup()
    return saver


def _drop_redis_saver(client: redis.Redis, prefix: str, run_id: str) -> None:
    """The Redis saver's indexes (its keys went with the prefix), and the registry keys
    it keeps outside any prefix (named after the threads, which hold the run id)."""
    for index in client.execute_command("FT._LIST"):
        if str(index, "utf-8").startswith(prefix):
            client.execute_command("FT.DROPINDEX", index)
    stray = list(client.scan_iter(match=f"*b{run_id}-*", count=1000))
    if stray:
        client.unlink(*stray)


def _kb(size: int) -> str:
    return f"{size / 1000:g} KB"


def _host(url: str) -> str:
    return url.rsplit("@", 1)[-1]
