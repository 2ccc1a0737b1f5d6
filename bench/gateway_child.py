"""The gateway scenario's load generator: open-loop requests at a fixed rate, in a process
of its own (``python -m bench.gateway_child``, the job as JSON on stdin).

Open loop: request *i* is due at start + *i*/rate and is sent then, as a task of its own,
whether or not the earlier ones have answered. A server that falls behind therefore builds
a queue, as it would under real traffic, and each latency is counted from the moment its
request was due, not from when it was sent, so the queueing (the server's and this
process's own lateness alike) is in it: no coordinated omission.

The same schedule drives either the gateway over HTTP (httpx, one connection pool) or the
library in this process (`AsyncChatLog`), so the two differ only in what is called:

- ``append``: ``POST /v1/sessions/{id}/messages`` beside ``AsyncChatLog.append``;
- ``context``: ``GET /v1/sessions/{id}/context`` beside ``AsyncChatLog.context``.

Why a process of its own: the gateway and the projector are processes; a generator in the
benchmark's process would share its GIL with whatever else the benchmark holds. The
protocol: the job on stdin, ``ready`` on stdout once imports and clients are set up, then
``go`` on stdin starts the clock, and one JSON line of results ends stdout.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from chatlog.client import AsyncChatLog
from chatlog.schemas.errors import ChatlogError
from chatlog.settings import Settings

# Requests in flight at most; the rest wait their turn in this process (FIFO), their
# latency still counted from when they were due. httpx's pool assigns requests to
# connections in time quadratic in the requests it holds: with thousands queued in it (an
# overloaded server at 1,000/s), the generator, not the server, was the bottleneck
# (py-spy). 64 connections are more than one gateway process answers at once.
_CONNECTIONS = 64
_CONTENT = "Where is my order 7731? It was due on Tuesday and the tracking page shows nothing. " * 2


def _operation(job: dict[str, Any], client: httpx.AsyncClient | None, log: AsyncChatLog | None):
    """The call for request `i`: one of the job's targets, round-robin."""
    targets = job["targets"]
    route = job["route"]

    async def over_http(i: int) -> None:
        assert client is not None
        session, _, token = targets[i % len(targets)]
        auth = {"Authorization": f"Bearer {token}"}
        if route == "append":
            answer = await client.post(
                f"/v1/sessions/{session}/messages",
                json={"role": "user", "content": _CONTENT},
                headers=auth,
            )
        else:
            answer = await client.get(f"/v1/sessions/{session}/context", headers=auth)
        if answer.status_code >= 300:
            raise RuntimeError(f"HTTP {answer.status_code}")

    async def in_process(i: int) -> None:
        assert log is not None
        session, user, _ = targets[i % len(targets)]
        if route == "append":
            await log.append(session, user_id=user, role="user", content=_CONTENT)
        else:
            await log.context(session, user_id=user)

    return over_http if job["mode"] == "gateway" else in_process


async def _run(job: dict[str, Any]) -> dict[str, Any]:
    rate, warmup, duration, drain = job["rate"], job["warmup_s"], job["duration_s"], job["drain_s"]
    count = math.ceil(rate * (warmup + duration))
    client = log = None
    if job["mode"] == "gateway":
        limits = httpx.Limits(max_connections=_CONNECTIONS, max_keepalive_connections=_CONNECTIONS)
        client = httpx.AsyncClient(base_url=job["url"], timeout=drain, limits=limits)
    else:
        log = AsyncChatLog.from_settings(Settings.from_env(), flush_on_sigterm=False)
    call: Callable[[int], Awaitable[None]] = _operation(job, client, log)
    # Warm the connections (or the library's clients) before the clock starts.
    await asyncio.gather(*(call(i) for i in range(min(50, len(job["targets"])))))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)

    due = [0.0] * count
    done = [math.nan] * count
    errors: dict[str, int] = {}

    slots = asyncio.Semaphore(_CONNECTIONS)

    async def one(i: int) -> None:
        try:
            async with slots:
                await call(i)
            done[i] = time.perf_counter()
        except (ChatlogError, httpx.HTTPError, RuntimeError) as exc:
            kind = str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__
            errors[kind] = errors.get(kind, 0) + 1

    cpu = time.process_time()
    start = time.perf_counter() + 0.05
    tasks = []
    lateness = []
    for i in range(count):
        due[i] = start + i / rate
        delay = due[i] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lateness.append(time.perf_counter() - due[i])
        tasks.append(asyncio.create_task(one(i)))
    _, pending = await asyncio.wait(tasks, timeout=drain)
    for task in pending:
        task.cancel()
    cpu = time.process_time() - cpu
    measured = [i for i in range(count) if due[i] >= start + warmup]
    finished = [i for i in measured if not math.isnan(done[i])]
    latencies = [(done[i] - due[i]) * 1000 for i in finished]
    span = max(done[i] for i in finished) - due[measured[0]] if finished else math.nan
    if client is not None:
        await client.aclose()
    if log is not None:
        await log.aclose()
    return {
        "latencies_ms": latencies,
        "achieved": len(finished) / span if finished else 0.0,
        "errors": errors,
        "unfinished": len(pending),
        "measured": len(measured),
        "late_p99_ms": sorted(lateness)[int(0.99 * (len(lateness) - 1))] * 1000,
        "cpu_s": cpu,
    }


def main() -> None:
    job = json.loads(sys.stdin.readline())
    result = asyncio.run(_run(job))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
