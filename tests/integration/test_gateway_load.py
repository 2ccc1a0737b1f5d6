"""100 concurrent HTTP users through one real gateway: no cross-talk, read-your-writes kept.

Each user (a task on one `httpx.AsyncClient`, so the requests of all users interleave on
the gateway) starts a session and appends messages carrying a canary of its own, and after
each append reads the context with ``after=`` the position the append returned. Every
read must hold the message just appended (read-your-writes), and no answer any user gets,
whatever the route, may hold another user's canary (every body is checked).

The load takes about 19 s on the 2-core development machine, 33 s with the start of the
gateway and projector (measured: 100 users, 4 messages each, 1,000 requests).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import httpx
import pytest

from tests.gateways import Gateway, new_user

pytestmark = pytest.mark.integration

USERS = 100
MESSAGES = 4
# Every canary has this shape, so any canary in any body is found, not only known ones.
CANARY = re.compile(r"canary-[0-9a-f]{12}-\d+")


async def chat(client: httpx.AsyncClient, gateway: Gateway, user: str) -> dict[str, object]:
    """One user's conversation; returns every body it got and what it stored."""
    auth = gateway.auth(user)
    tag = uuid.uuid4().hex[:12]
    bodies: list[str] = []

    async def call(
        method: str, path: str, expect: int, headers: dict[str, str] | None = None, **kwargs
    ) -> httpx.Response:
        answer = await client.request(method, path, headers={**auth, **(headers or {})}, **kwargs)
        bodies.append(answer.text)
        assert answer.status_code == expect, f"{user} {method} {path}: {answer.text}"
        return answer

    created = await call("POST", "/v1/sessions", 201, json={"title": f"load {tag}"})
    session = created.json()["session_id"]
    mine: list[str] = []
    for n in range(MESSAGES):
        canary = f"canary-{tag}-{n}"
        posted = await call(
            "POST",
            f"/v1/sessions/{session}/messages",
            201,
            json={"role": "user", "content": f"order status, {canary}"},
            headers={"Idempotency-Key": f"m-{tag}-{n}"},
        )
        mine.append(canary)
        read = await call(
            "GET",
            f"/v1/sessions/{session}/context",
            200,
            params={"after": posted.json()["position"]},
        )
        contents = [m["content"] for m in read.json()["messages"]]
        # Read-your-writes: the append just made, and every one before it, in order.
        assert contents == [f"order status, {c}" for c in mine], f"{user}: {contents}"
    listed = await call("GET", "/v1/sessions", 200)
    assert [s["session_id"] for s in listed.json()["sessions"]] == [session]
    return {"user": user, "session": session, "canaries": set(mine), "bodies": bodies}


async def everyone(gateway: Gateway) -> list[dict[str, object]]:
    limits = httpx.Limits(max_connections=USERS, max_keepalive_connections=USERS)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=120, limits=limits) as client:
        return await asyncio.gather(*(chat(client, gateway, new_user()) for _ in range(USERS)))


def test_a_hundred_concurrent_users_read_their_writes_and_nothing_of_each_other(gateway):
    started = time.monotonic()
    results = asyncio.run(everyone(gateway))
    took = time.monotonic() - started

    requests = sum(len(r["bodies"]) for r in results)
    assert requests == USERS * (2 + 2 * MESSAGES)
    assert len({r["session"] for r in results}) == USERS
    for result in results:
        seen = {c for body in result["bodies"] for c in CANARY.findall(body)}
        # Its own canaries only, and all of them (so the pattern does find canaries).
        assert seen == result["canaries"], f"{result['user']} saw {seen - result['canaries']}"
    print(f"{USERS} users, {requests} requests in {took:.1f} s ({requests / took:.0f}/s)")
