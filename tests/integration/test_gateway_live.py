"""Live updates over the gateway, as a front end meets them: a real `chatlog serve`, a real
projector, real Kafka and Redis, and the event stream read over HTTP with httpx.

The stream is read as a browser's fetch() reads it: one authenticated GET whose body is
text/event-stream, parsed here line by line.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from chatlog.processors.kafka_audit import read_audit
from chatlog.projections.keys import KeySpace
from tests.gateways import Gateway, gateway_stack
from tests.gateways import new_user as user
from tests.integration.test_gateway import create
from tests.processes import run_docs_block, wait_until

pytestmark = pytest.mark.integration

ARRIVES_WITHIN_S = 10.0  # a message appended elsewhere reaches the stream by then
# This module's gateway names its Redis connections, so that a test can kill its pub/sub
# connection and no other: tests of other modules run beside it (pytest-xdist).
CONNECTION_NAME = f"live-tests-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def gateway(kafka, redis_url, tmp_path_factory) -> Iterator[Gateway]:
    named = f"{redis_url}?client_name={CONNECTION_NAME}"
    with gateway_stack(kafka, named, tmp_path_factory.mktemp("live")) as gw:
        yield gw


@dataclass
class Event:
    id: str | None
    event: str
    data: Any


async def events_of(response: httpx.Response) -> AsyncIterator[Event]:
    """The Server-Sent Events of a streamed response (comments skipped)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields:
                yield Event(
                    fields.get("id"), fields.get("event", "message"), json.loads(fields["data"])
                )
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def next_event(events: AsyncIterator[Event], timeout: float = ARRIVES_WITHIN_S) -> Event:
    return await asyncio.wait_for(anext(events), timeout)


async def append(client: httpx.AsyncClient, gw: Gateway, who: str, session: str, text: str) -> dict:
    answer = await client.post(
        f"/v1/sessions/{session}/messages",
        json={"role": "user", "content": text},
        headers=gw.auth(who),
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


async def applied(
    client: httpx.AsyncClient, gw: Gateway, who: str, session: str, text: str
) -> dict:
    """`append`, then its read-your-write: a stream opened next has it in its reset."""
    posted = await append(client, gw, who, session, text)
    read = await client.get(
        f"/v1/sessions/{session}/context",
        params={"after": posted["position"]},
        headers=gw.auth(who),
    )
    assert read.status_code == 200, read.text
    return posted


def stream(client: httpx.AsyncClient, gw: Gateway, who: str, session: str, **headers: str):
    return client.stream(
        "GET", f"/v1/sessions/{session}/events", headers={**gw.auth(who), **headers}
    )


def client_of(gw: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gw.url, timeout=60)


def test_the_stream_starts_with_the_context_and_sends_each_message_as_applied(gateway):
    alice = user()
    session = create(gateway, alice, "Live")

    async def scenario() -> None:
        async with client_of(gateway) as client:
            await applied(client, gateway, alice, session, "before the stream")
            async with stream(client, gateway, alice, session) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                events = events_of(response)
                reset = await next_event(events)
                assert reset.event == "reset"
                assert reset.data["title"] == "Live"
                assert [m["content"] for m in reset.data["messages"]] == ["before the stream"]
                assert reset.id == reset.data["position"]
                for n in range(3):
                    posted = await append(client, gateway, alice, session, f"live {n}")
                    started = time.monotonic()
                    event = await next_event(events)
                    assert event.event == "message"
                    assert event.id == posted["position"]
                    assert event.data["content"] == f"live {n}"
                    assert event.data["message_id"] == posted["message_id"]
                    assert time.monotonic() - started < ARRIVES_WITHIN_S
                # One subscription for the stream, on the gateway's one connection.
                assert listeners(channel) == 1
            # The client went away: the gateway unsubscribes.
            wait_until(lambda: listeners(channel) == 0, timeout=10, what="the unsubscribe")

    channel = KeySpace(gateway.settings.redis_prefix).applied(session)
    client = redis.Redis.from_url(gateway.settings.redis_url)

    def listeners(channel: str) -> int:
        reply = client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
        return int(reply[1])  # [channel, count]

    try:
        asyncio.run(scenario())
    finally:
        client.close()


def test_a_stream_resumed_from_last_event_id_gets_exactly_what_it_missed(gateway):
    alice = user()
    session = create(gateway, alice)

    async def scenario() -> None:
        async with client_of(gateway) as client:
            async with stream(client, gateway, alice, session) as response:
                events = events_of(response)
                assert (await next_event(events)).event == "reset"
                first = await append(client, gateway, alice, session, "seen")
                seen = await next_event(events)
                assert (seen.event, seen.id) == ("message", first["position"])
            # Disconnected: three messages are appended meanwhile.
            missed = [
                await append(client, gateway, alice, session, f"missed {n}") for n in range(3)
            ]
            read = await client.get(
                f"/v1/sessions/{session}/context",
                params={"after": missed[-1]["position"]},
                headers=gateway.auth(alice),
            )
            assert read.status_code == 200
            expected = [(m["position"], f"missed {n}") for n, m in enumerate(missed)]
            # Resumed by the header a browser's EventSource would send...
            later = await resumed(client, {"Last-Event-ID": seen.id}, {}, expected)
            # ... and by ?after=, from the first missed one.
            expected = [*expected[1:], (later["position"], "after resuming")]
            await resumed(client, {}, {"after": missed[0]["position"]}, expected)

    async def resumed(client, headers: dict, params: dict, expected: list) -> dict:
        path = f"/v1/sessions/{session}/events"
        async with client.stream(
            "GET", path, params=params, headers={**gateway.auth(alice), **headers}
        ) as response:
            assert response.status_code == 200
            events = events_of(response)
            got = [await next_event(events) for _ in expected]
            assert [(e.event, e.id, e.data["content"]) for e in got] == [
                ("message", position, content) for position, content in expected
            ]
            # Then the state as it is now (a snapshot), and nothing more.
            state = await next_event(events)
            assert (state.event, state.id) == ("session", expected[-1][0])
            assert state.data == {"status": "open", "title": None}
            # Live again: the next message comes once, right after.
            later = await append(client, gateway, alice, session, "after resuming")
            event = await next_event(events)
            assert (event.event, event.id) == ("message", later["position"])
            return later

    asyncio.run(scenario())


def test_another_users_or_a_missing_session_answers_404_and_no_token_401(gateway):
    alice, bob = user(), user()
    session = create(gateway, alice)

    async def scenario() -> None:
        async with client_of(gateway) as client:
            answers = []
            for who, target in ((bob, session), (alice, "no-such-session-here")):
                async with stream(client, gateway, who, target) as response:
                    await response.aread()
                    answers.append((response.status_code, response.json()))
            assert answers[0] == answers[1]
            assert answers[0][0] == 404
            assert answers[0][1]["error"]["code"] == "not_found"
            # Another tenant's same user id is another caller too.
            other = {"Authorization": f"Bearer {gateway.issuer.mint(alice, tenant='acme')}"}
            response = await client.get(f"/v1/sessions/{session}/events", headers=other)
            assert response.status_code == 404
            response = await client.get(f"/v1/sessions/{session}/events")
            assert response.status_code == 401

    asyncio.run(scenario())


def test_a_bad_last_event_id_is_refused_with_422(gateway):
    alice = user()
    session = create(gateway, alice)
    response = httpx.get(
        f"{gateway.url}/v1/sessions/{session}/events",
        headers={**gateway.auth(alice), "Last-Event-ID": "yesterday"},
        timeout=30,
    )
    assert response.status_code == 422
    assert "PARTITION:OFFSET" in response.json()["error"]["message"]


def test_the_projector_publishes_a_notice_on_the_sessions_shard_channel(gateway, redis_url):
    alice = user()
    session = create(gateway, alice)
    client = redis.Redis.from_url(redis_url)
    listener = client.pubsub()
    try:
        channel = KeySpace(gateway.settings.redis_prefix).applied(session)
        assert channel.endswith(f"{{{session}}}")  # the session's hash tag: its shard
        listener.ssubscribe(channel)
        confirmed = listener.get_sharded_message(timeout=10)
        assert confirmed is not None
        assert confirmed["type"] == "ssubscribe"
        posted = httpx.post(
            f"{gateway.url}/v1/sessions/{session}/messages",
            json={"role": "user", "content": "notify me"},
            headers=gateway.auth(alice),
            timeout=60,
        )
        assert posted.status_code == 201
        notice = listener.get_sharded_message(timeout=ARRIVES_WITHIN_S)
        assert notice is not None
        assert notice["type"] == "smessage"
        assert notice["data"].decode() == f"{session} {posted.json()['position']}"
    finally:
        listener.close()
        client.close()


def test_closing_the_session_ends_its_stream_and_it_stays_readable(gateway):
    alice = user()
    session = create(gateway, alice, "Closing")

    async def scenario() -> None:
        async with client_of(gateway) as client:
            async with stream(client, gateway, alice, session) as response:
                events = events_of(response)
                assert (await next_event(events)).event == "reset"
                bob = user()
                refused = await client.post(
                    f"/v1/sessions/{session}/close", headers=gateway.auth(bob)
                )
                assert refused.status_code == 404
                closed = await client.post(
                    f"/v1/sessions/{session}/close", headers=gateway.auth(alice)
                )
                assert closed.status_code == 200, closed.text
                assert closed.json()["status"] == "closed"
                last = await next_event(events)
                assert (last.event, last.id) == ("session", closed.json()["position"])
                assert last.data == {"status": "closed", "title": "Closing"}
                with pytest.raises(StopAsyncIteration):
                    await next_event(events)  # the stream has ended
            read = await client.get(f"/v1/sessions/{session}/context", headers=gateway.auth(alice))
            assert read.status_code == 200
            assert read.json()["status"] == "closed"
            # A stream opened on a closed session says so and ends.
            async with stream(client, gateway, alice, session) as response:
                got = [e async for e in events_of(response)]
            assert [e.event for e in got] == ["reset", "session"]
            assert got[-1].data["status"] == "closed"

    asyncio.run(scenario())


def test_deleting_the_session_ends_its_stream_and_every_read_answers_404(gateway):
    alice, bob = user(), user()
    session = create(gateway, alice)

    async def scenario() -> None:
        async with client_of(gateway) as client:
            await applied(client, gateway, alice, session, "to be deleted")
            async with stream(client, gateway, alice, session) as response:
                events = events_of(response)
                reset = await next_event(events)
                assert [m["content"] for m in reset.data["messages"]] == ["to be deleted"]
                refused = await client.delete(f"/v1/sessions/{session}", headers=gateway.auth(bob))
                assert refused.status_code == 404
                deleted = await client.delete(
                    f"/v1/sessions/{session}", headers=gateway.auth(alice)
                )
                assert deleted.status_code == 200, deleted.text
                assert deleted.json()["status"] == "erased"
                last = await next_event(events)
                assert last.event == "session"
                assert last.data == {"status": "erased", "title": None}
                with pytest.raises(StopAsyncIteration):
                    await next_event(events)
            for method, path in (
                ("GET", f"/v1/sessions/{session}/context"),
                ("GET", f"/v1/sessions/{session}/events"),
                ("POST", f"/v1/sessions/{session}/close"),
                ("DELETE", f"/v1/sessions/{session}"),
            ):
                answer = await client.request(method, path, headers=gateway.auth(alice))
                assert answer.status_code == 404, (method, path, answer.text)
            listed = await client.get("/v1/sessions", headers=gateway.auth(alice))
            assert listed.json()["sessions"] == []

    asyncio.run(scenario())
    records = [
        r
        for _, r in read_audit(
            bootstrap_servers=gateway.settings.kafka_bootstrap, topic=gateway.settings.audit_topic
        ).records
    ]
    erased = [r for r in records if r.action == "session_erased"]
    # The refused attempt of bob's never reached the library (the gateway answered 404
    # first); alice's erasure is recorded with her as the actor.
    assert [(r.outcome, r.principal, r.session_id) for r in erased] == [
        ("ok", f"jwt:default/{alice}", session)
    ]


def test_the_curl_example_of_the_live_stream_runs(gateway):
    # The session of the first block, then the stream, its close and the export.
    lines = run_docs_block(
        "http.md", "## With curl", gateway.settings, gateway=gateway.url, count=2
    )
    out = "\n".join(lines)
    assert "event: reset" in out
    assert '"content":"Where is my order 7731?"' in out.split("event: reset", 1)[1]
    assert 'event: session\ndata: {"status":"closed","title":"Refund"}' in out
    # The close's own answer (the stream and the close share stdout: no line order).
    assert re.search(r'\{"session_id":"[\w-]+","position":"\d+:\d+","status":"closed"\}', out)
    assert out.splitlines()[-1] == "1 session(s)"


def test_a_lost_notice_connection_delays_updates_but_drops_none(gateway):
    alice = user()
    session = create(gateway, alice)
    channel = KeySpace(gateway.settings.redis_prefix).applied(session)
    client = redis.Redis.from_url(gateway.settings.redis_url)

    def listeners() -> int:
        return int(client.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1])

    async def scenario() -> None:
        async with client_of(gateway) as http:
            async with stream(http, gateway, alice, session) as response:
                events = events_of(response)
                assert (await next_event(events)).event == "reset"
                assert listeners() == 1
                # The gateway's pub/sub connection dies: notices sent meanwhile are lost.
                assert kill_pubsub_connections(client, CONNECTION_NAME) >= 1
                for n in range(3):
                    posted = await append(http, gateway, alice, session, f"after the kill {n}")
                    event = await next_event(events)  # from a recheck, or a new notice
                    assert (event.event, event.id) == ("message", posted["position"])
                # The connection comes back, subscribed again.
                wait_until(lambda: listeners() == 1, timeout=10, what="the resubscription")
                posted = await append(http, gateway, alice, session, "notified again")
                event = await next_event(events)
                assert (event.event, event.id) == ("message", posted["position"])
            wait_until(lambda: listeners() == 0, timeout=10, what="the unsubscribe")

    try:
        asyncio.run(scenario())
    finally:
        client.close()


def kill_pubsub_connections(client: redis.Redis, name: str) -> int:
    """Kill the pub/sub connections named `name`; how many there were."""
    ids = [c["id"] for c in client.client_list(_type="pubsub") if c["name"] == name]
    return sum(client.client_kill_filter(_id=i) for i in ids)
