"""The HTTP gateway (`gateway`): what `chatlog serve` adds to an append and a context read.

A real `chatlog serve` (uvicorn, one process) and a projector process run on the
scenario's topics. A load generator in a process of its own (`bench.gateway_child`)
sends ``POST /v1/sessions/{id}/messages`` and ``GET /v1/sessions/{id}/context`` at
offered loads of 200, 500 and 1,000 requests/s, open loop (each request sent when due,
whatever the earlier ones are doing; latency counted from when it was due, so queueing is
in it). Beside each, the same operation through the library in the same kind of process at
the same offered rate (`AsyncChatLog.append`, `AsyncChatLog.context`): the overhead of the
gateway is the difference. Where the gateway cannot keep up, the rows say what it achieved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import httpx
from pydantic import SecretStr

from bench.infra import GATEWAY_RATE, REPO, BenchStack, child_env, running
from bench.measure import CpuMeter, median_shares, percentile
from bench.plan import Plan
from bench.report import Metric, Report, Table, say
from chatlog import wiring
from chatlog.gateway.tokens import TokenIssuer
from chatlog.settings import Settings

__all__ = ["gateway"]

ROUTES = {
    "append": ("POST /v1/sessions/{id}/messages", "AsyncChatLog.append"),
    "context": ("GET /v1/sessions/{id}/context", "AsyncChatLog.context"),
}
MODES = ("gateway", "library")


@dataclass
class _Rows:
    """One route at one offered rate: each mode's achieved rate, p50 and p99."""

    achieved: dict[str, Metric]
    p50: dict[str, Metric]
    p99: dict[str, Metric]
    errors: dict[str, int]


def gateway(stack: BenchStack, plan: Plan, report: Report) -> None:
    """Scenario: the gateway beside the library, per route and offered rate."""
    base = stack.scenario("gateway")
    settings = base.model_copy(
        update={
            "audit_topic": f"{base.topic}.audit",  # the gateway audits the sessions it starts
            # model_copy does not validate: the secret goes in as the type the field has.
            "auth_secret": SecretStr(secrets.token_urlsafe(32)),
            "rate_user": GATEWAY_RATE,
        }
    )
    wiring.create_topics(settings)
    stack.topics.append(settings.audit_topic)
    env = _env(settings)
    rows = {
        (route, rate): _Rows(
            *(
                {
                    mode: report.measure("gateway", f"{route} {what} {mode} {rate}", unit)
                    for mode in MODES
                }
                for what, unit in (("achieved", "events/s"), ("p50", "ms"), ("p99", "ms"))
            ),
            errors={mode: 0 for mode in MODES},
        )
        for route in ROUTES
        for rate in plan.gateway_rates
    }
    busy: dict[tuple[str, int], list[dict[str, float]]] = {key: [] for key in rows}
    with (
        tempfile.TemporaryDirectory(prefix="bench-gateway-") as logs,
        running(settings, stack) as projector,
        _serving(settings, env, os.path.join(logs, "serve.log")) as (url, serve),
    ):
        projector.wait_assigned()
        targets = asyncio.run(_prepare(settings, url, plan))
        for n in range(1, plan.repeat + 1):
            for rate in plan.gateway_rates:
                for route in ROUTES:
                    row = rows[(route, rate)]
                    for mode in MODES:
                        job = {
                            "mode": mode,
                            "route": route,
                            "rate": rate,
                            "warmup_s": plan.gateway_warmup_s,
                            "duration_s": plan.gateway_duration_s,
                            "drain_s": plan.gateway_drain_s,
                            "url": url,
                            "targets": targets[route],
                        }
                        pids = {"projector": projector.pid, "gateway": serve.pid}
                        result, shares = _load(stack, env, job, pids)
                        projector.check_alive()
                        if mode == "gateway":
                            busy[(route, rate)].append(shares)
                        latencies = result["latencies_ms"]
                        row.achieved[mode].add(result["achieved"])
                        row.p50[mode].add(percentile(latencies, 50))
                        row.p99[mode].add(percentile(latencies, 99))
                        row.errors[mode] += sum(result["errors"].values()) + result["unfinished"]
                        say(
                            f"gateway r{n} {route} {mode} offered {rate}/s: achieved "
                            f"{result['achieved']:,.0f}/s, p50 {row.p50[mode].values[-1]:.1f} ms, "
                            f"p99 {row.p99[mode].values[-1]:.1f} ms, errors {result['errors']} "
                            f"unfinished {result['unfinished']}; CPU {CpuMeter.describe(shares)}"
                        )
    _fill(report, plan, rows, busy)


def _fill(
    report: Report,
    plan: Plan,
    rows: dict[tuple[str, int], _Rows],
    busy: dict[tuple[str, int], list[dict[str, float]]],
) -> None:
    """The comparison rows (named after the rates achieved) and the overhead table."""
    table = Table(
        title="gateway overhead (chatlog serve beside the library, same offered rate)",
        columns=[
            "route",
            "offered",
            "gateway achieved",
            "library achieved",
            "gateway p50",
            "library p50",
            "overhead p50",
            "gateway p99",
            "library p99",
            "overhead p99",
        ],
        labels=2,
    )
    for (route, rate), row in rows.items():
        http, call = ROUTES[route]
        achieved = {mode: row.achieved[mode].median for mode in MODES}
        for q in ("p50", "p99"):
            metrics = getattr(row, q)
            report.compare(
                "gateway",
                f"{http} {q}, offered {rate:,}/s (achieved {achieved['gateway']:,.0f}/s)",
                metrics["gateway"],
                f"{call} in process (achieved {achieved['library']:,.0f}/s)",
                metrics["library"],
                better="lower",
                itself=True,
            )
        table.rows.append(
            [
                http,
                f"{rate:,}/s",
                f"{achieved['gateway']:,.0f}/s",
                f"{achieved['library']:,.0f}/s",
                row.p50["gateway"].cell(),
                row.p50["library"].cell(),
                _ms(row.p50["gateway"].median - row.p50["library"].median),
                row.p99["gateway"].cell(),
                row.p99["library"].cell(),
                _ms(row.p99["gateway"].median - row.p99["library"].median),
            ]
        )
    errors = ", ".join(
        f"{route} {rate}/s {mode} {row.errors[mode]}"
        for (route, rate), row in rows.items()
        for mode in MODES
        if row.errors[mode]
    )
    cpu = "; ".join(
        f"{route} {rate:,}/s: {CpuMeter.describe(median_shares(runs))}"
        for (route, rate), runs in busy.items()
        if runs
    )
    table.notes += [
        f"open loop: request i is due at start + i/rate and sent then, whatever the earlier "
        f"ones are doing; each latency runs from when its request was due to its answer, so "
        f"queueing (the server's and the generator's) is in it; a warm-up of "
        f"{plan.gateway_warmup_s:g} s, then {plan.gateway_duration_s:g} s measured, per "
        f"route, rate, mode and repetition; median (range) of {plan.repeat} repetition(s); "
        f"achieved = requests answered 2xx ÷ (last answer - first measured due time)",
        f"gateway: one `chatlog serve` process (uvicorn, one worker, its access log on), "
        f"a bearer JWT checked per request, the append after an ownership read (the "
        f"gateway refuses another user's session before publishing); library: "
        f"`AsyncChatLog` in the load generator's process; both on {plan.gateway_users} "
        f"users' sessions (one to append to and one of {plan.gateway_messages} messages to "
        f"read, each), one projector process",
        f"n/a: none of the measured requests was answered before the drain ended. "
        f"requests that failed (HTTP errors, dropped connections) or did not finish within "
        f"{plan.gateway_drain_s:g} s of the last one due: {errors or 'none'}",
        f"CPU during the gateway runs (median, 100% = one core): {cpu}",
    ]
    report.tables.append(table)


def _ms(value: float) -> str:
    return f"{value:+.2f} ms" if abs(value) < 10 else f"{value:+.1f} ms"


def _env(settings: Settings) -> dict[str, str]:
    secret = settings.auth_secret
    assert secret is not None
    return {
        **child_env(settings),
        "CHATLOG_AUDIT_TOPIC": settings.audit_topic,
        "CHATLOG_AUTH_SECRET": secret.get_secret_value(),
        "CHATLOG_RATE_USER": str(settings.rate_user),
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _serving(
    settings: Settings, env: dict[str, str], log: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`chatlog serve` on a free port until the block ends (SIGTERM, then kill)."""
    port = _free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatlog.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"chatlog serve exited with {process.returncode}: see {log}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("chatlog serve did not answer /healthz within 60 s")
            time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _prepare(settings: Settings, url: str, plan: Plan) -> dict[str, list[list[str]]]:
    """Per user, a session to append to and one of `gateway_messages` messages to read,
    made through the gateway; returns [session, user, token] per route."""
    issuer = TokenIssuer.from_settings(settings)
    users = [f"bench-user-{n}" for n in range(plan.gateway_users)]
    tokens = {user: issuer.mint(user, ttl_s=24 * 3600) for user in users}
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def send(method: str, path: str, **kwargs: Any) -> httpx.Response:
            # A kept-alive connection the server closes as it is reused fails the request
            # (more often on a loaded machine); the messages carry an Idempotency-Key, so
            # sending again stores them once.
            for attempt in range(3):
                try:
                    answer = await client.request(method, path, **kwargs)
                    return answer.raise_for_status()
                except httpx.TransportError:
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        async def session(user: str, fill: int) -> list[str]:
            auth = {"Authorization": f"Bearer {tokens[user]}"}
            created = await send("POST", "/v1/sessions", json={"title": "bench"}, headers=auth)
            session_id = created.json()["session_id"]
            position = None
            for n in range(fill):
                posted = await send(
                    "POST",
                    f"/v1/sessions/{session_id}/messages",
                    json={"role": "user" if n % 2 == 0 else "assistant", "content": f"turn {n}"},
                    headers={**auth, "Idempotency-Key": f"turn-{n}"},
                )
                position = posted.json()["position"]
            if position is not None:  # readable before the clock starts
                await send(
                    "GET",
                    f"/v1/sessions/{session_id}/context",
                    params={"after": position},
                    headers=auth,
                )
            return [session_id, user, tokens[user]]

        say(f"gateway: {len(users)} users, a session to append to and one to read each")
        appends = await asyncio.gather(*(session(user, 0) for user in users))
        reads = await asyncio.gather(*(session(user, plan.gateway_messages) for user in users))
    return {"append": list(appends), "context": list(reads)}


def _load(
    stack: BenchStack, env: dict[str, str], job: dict[str, Any], pids: dict[str, int]
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run one job in a load generator process; its results and the CPU shares meanwhile."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.gateway_child"],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stdin: IO[str] | None = child.stdin
    stdout: IO[str] | None = child.stdout
    assert stdin is not None
    assert stdout is not None
    try:
        stdin.write(json.dumps(job) + "\n")
        stdin.flush()
        if stdout.readline().strip() != "ready":
            raise RuntimeError(f"the load generator did not start (exit {child.wait()})")
        meter = CpuMeter.for_stack(stack, **pids, loadgen=child.pid)
        meter.start()
        stdin.write("go\n")
        stdin.flush()
        line = stdout.readline()
        shares = meter.busy()
        if child.wait(120) != 0 or not line:
            raise RuntimeError(f"the load generator failed (exit {child.returncode})")
        return json.loads(line), shares
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
