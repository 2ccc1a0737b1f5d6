"""Publish-to-visible over the gateway's event stream (`gateway_sse`).

What a browser sees: a front end appends a message with ``POST .../messages`` and the
message arrives on the live stream (``GET .../events``) of the same session. A real
`chatlog serve` process and a projector process run; the benchmark holds one stream on
each of a few sessions and appends to them in turn, one message at a time, timing from
just before the POST until its ``message`` event (found by its id, the position the
POST returned) is read from the stream. The path timed: HTTP in, the producer and the
broker, the projector's batch and Redis write, its notice (SPUBLISH), the gateway's
pub/sub connection, the stream's read of the context, HTTP out. The POST's own answer
(the broker's acknowledgement) is timed beside it.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from collections.abc import AsyncIterator

import httpx
from pydantic import SecretStr

from bench.infra import GATEWAY_RATE, BenchStack, running
from bench.measure import percentile
from bench.plan import Plan
from bench.report import Report, say
from chatlog import wiring
from chatlog.gateway.tokens import TokenIssuer
from tests.processes import running_gateway

__all__ = ["gateway_sse", "sse_latency"]

_STREAMS = 4  # sessions, each with its own stream, appended to in turn
_TIMEOUT_S = 30.0


def gateway_sse(stack: BenchStack, plan: Plan, report: Report) -> None:
    """Scenario: POST a message, time until its event arrives on the session's stream."""
    scenario = "gateway sse"
    rows = {
        name: report.metric(scenario, f"POST message → its SSE event, {name}", "ms")
        for name in ("p50", "p99", "mean")
    }
    acks = {
        name: report.metric(scenario, f"of which POST answered (broker ack), {name}", "ms")
        for name in ("p50", "p99")
    }
    streamed = {
        name: report.metric(scenario, f"of which POST answered → SSE event, {name}", "ms")
        for name in ("p50", "p99")
    }
    for name in ("p50", "p99"):
        report.compare(scenario, f"POST → SSE event {name}", rows[name], better="lower")
    count = 50 if plan.quick else 200
    settings = stack.scenario("gateway_sse")
    settings = settings.model_copy(
        update={
            "auth_secret": SecretStr(secrets.token_urlsafe(32)),
            "audit_topic": f"{settings.topic}.audit",
            "rate_user": GATEWAY_RATE,
        }
    )
    stack.topics.append(settings.audit_topic)
    wiring.create_topics(settings)  # the audit topic: the gateway records sessions started
    token = TokenIssuer.from_settings(settings).mint("bench-sse", ttl_s=3600)
    with running(settings, stack) as projector, running_gateway(settings) as url:
        projector.wait_assigned()
        for n in range(1, plan.repeat + 1):
            visible, acked = asyncio.run(sse_latency(url, token, count=count))
            after_ack = [v - a for v, a in zip(visible, acked, strict=True)]
            for name, q in (("p50", 50), ("p99", 99)):
                rows[name].add(percentile(visible, q) * 1000)
                acks[name].add(percentile(acked, q) * 1000)
                streamed[name].add(percentile(after_ack, q) * 1000)
            rows["mean"].add(statistics.mean(visible) * 1000)
            p50, p99 = (percentile(visible, q) * 1000 for q in (50, 99))
            say(
                f"gateway_sse {n}/{plan.repeat}: {count} messages, POST → SSE event "
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
            )
    report.notes.append(
        f"gateway sse: {count} messages per repetition over {_STREAMS} sessions, each with "
        f"one open stream, appended one at a time (no queueing); a real `chatlog serve` "
        f"and projector process on the same machine as the client."
    )


async def sse_latency(url: str, token: str, *, count: int) -> tuple[list[float], list[float]]:
    """Seconds from before each POST until its event is read from the stream, and until
    the POST answered, for `count` messages over `_STREAMS` sessions."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=_TIMEOUT_S) as client:
        sessions = []
        for n in range(_STREAMS):
            answer = await client.post("/v1/sessions", json={"title": f"sse {n}"})
            answer.raise_for_status()
            sessions.append(answer.json()["session_id"])
        async with _Streams(client, sessions) as streams:
            visible, acked = [], []
            for n in range(count):
                session = sessions[n % _STREAMS]
                started = time.perf_counter()
                posted = await client.post(
                    f"/v1/sessions/{session}/messages",
                    json={"role": "user", "content": f"message {n}"},
                )
                posted.raise_for_status()
                acked.append(time.perf_counter() - started)
                await streams.wait_for(session, posted.json()["position"])
                visible.append(time.perf_counter() - started)
            return visible, acked


class _Streams:
    """One open event stream per session, each read by a task into a queue of ids."""

    def __init__(self, client: httpx.AsyncClient, sessions: list[str]) -> None:
        self.client = client
        self.sessions = sessions
        self.ids: dict[str, asyncio.Queue[tuple[str, float]]] = {
            s: asyncio.Queue() for s in sessions
        }
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> _Streams:
        ready = [asyncio.Event() for _ in self.sessions]
        for session, started in zip(self.sessions, ready, strict=True):
            self.tasks.append(asyncio.create_task(self._read(session, started)))
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), _TIMEOUT_S)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def wait_for(self, session: str, position: str) -> None:
        """Until the message event with id `position` has been read."""
        while True:
            event_id, _ = await asyncio.wait_for(self.ids[session].get(), _TIMEOUT_S)
            if event_id == position:
                return

    async def _read(self, session: str, started: asyncio.Event) -> None:
        async with self.client.stream("GET", f"/v1/sessions/{session}/events") as response:
            response.raise_for_status()
            async for event, event_id in _events(response.aiter_lines()):
                if event == "reset":
                    started.set()
                elif event == "message":
                    self.ids[session].put_nowait((event_id, time.perf_counter()))


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event, id) of each Server-Sent Event (comments and data skipped)."""
    fields: dict[str, str] = {}
    async for line in lines:
        if not line:
            if "event" in fields:
                yield fields["event"], fields.get("id", "")
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
