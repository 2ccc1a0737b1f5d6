"""The caller's own data over the gateway: ``GET /v1/me/export`` and ``DELETE /v1/me``, on
a real `chatlog serve`, a real projector, real Kafka and Redis, each call checked in the
audit trail with the caller as the actor."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from chatlog.processors.kafka_audit import read_audit
from tests.gateways import Gateway, gateway_stack
from tests.gateways import new_user as user
from tests.integration.test_gateway import create, post
from tests.integration.test_gateway_live import applied, client_of, events_of, next_event, stream

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(kafka, redis_url, tmp_path_factory) -> Iterator[Gateway]:
    # Tokenized personal data: the owner's export reveals it, the bot never sees it.
    logs = tmp_path_factory.mktemp("me")
    with gateway_stack(kafka, redis_url, logs, pii_mode="tokenize") as gw:
        yield gw


def audited(gw: Gateway, action: str) -> list[tuple[str, str]]:
    scan = read_audit(bootstrap_servers=gw.settings.kafka_bootstrap, topic=gw.settings.audit_topic)
    return [(r.outcome, r.principal) for _, r in scan.records if r.action == action]


def test_export_gives_the_caller_their_sessions_with_their_personal_data_revealed(gateway):
    alice, bob = user(), user()
    session = create(gateway, alice, "Orders")
    create(gateway, bob, "Not alice's")
    posted = post(gateway, alice, session, "mail me at alice.smith@example.com")
    assert posted.status_code == 201
    # What the bot reads has a placeholder (CHATLOG_PII_MODE=tokenize)...
    read = httpx.get(
        f"{gateway.url}/v1/sessions/{session}/context",
        params={"after": posted.json()["position"]},
        headers=gateway.auth(alice),
        timeout=60,
    )
    assert read.json()["messages"][0]["content"] == "mail me at [EMAIL#1]"
    # ... the owner's export has what they wrote.
    answer = httpx.get(f"{gateway.url}/v1/me/export", headers=gateway.auth(alice), timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["cache-control"] == "no-store"
    document = answer.json()
    assert document["user_id"] == alice
    assert [s["session_id"] for s in document["sessions"]] == [session]
    assert [m["content"] for m in document["sessions"][0]["messages"]] == [
        "mail me at alice.smith@example.com"
    ]
    assert ("ok", f"jwt:default/{alice}") in audited(gateway, "user_exported")

    # Someone chatlog holds nothing of is told so (404), not handed an empty document.
    nobody = httpx.get(f"{gateway.url}/v1/me/export", headers=gateway.auth(user()), timeout=120)
    assert nobody.status_code == 404
    assert nobody.json()["error"]["code"] == "unknown_user"
    assert httpx.get(f"{gateway.url}/v1/me/export", timeout=30).status_code == 401


def test_erasing_me_ends_my_streams_and_every_read_of_mine_answers_404(gateway):
    alice, bob = user(), user()
    sessions = [create(gateway, alice, f"Chat {n}") for n in range(2)]
    others = create(gateway, bob, "Bob's")

    async def scenario() -> dict:
        async with client_of(gateway) as client:
            for session in sessions:
                # Applied before the stream opens: its first event after the reset is the end.
                await applied(client, gateway, alice, session, "something personal")
            async with stream(client, gateway, alice, sessions[0]) as response:
                events = events_of(response)
                assert (await next_event(events)).event == "reset"
                erased = await client.delete("/v1/me", headers=gateway.auth(alice))
                assert erased.status_code == 200, erased.text
                # The erasure sends no notice: the stream finds it at its next recheck.
                last = await next_event(events)
                assert last.event == "session"
                assert last.data == {"status": "erased", "title": None}
                with pytest.raises(StopAsyncIteration):
                    await next_event(events)
            return erased.json()

    erasure = asyncio.run(scenario())
    assert erasure["user_id"] == alice
    assert erasure["already_erased"] is False
    assert erasure["sessions_removed"] == 2
    assert erasure["key_ids"]

    def answer(method: str, path: str, **kwargs) -> httpx.Response:
        return httpx.request(
            method, f"{gateway.url}{path}", headers=gateway.auth(alice), timeout=60, **kwargs
        )

    for session in sessions:
        for method, path in (
            ("GET", f"/v1/sessions/{session}/context"),
            ("GET", f"/v1/sessions/{session}/events"),
            ("POST", f"/v1/sessions/{session}/close"),
            ("DELETE", f"/v1/sessions/{session}"),
        ):
            got = answer(method, path)
            assert got.status_code == 404, (method, path, got.text)
            assert got.json()["error"]["code"] == "not_found"
        appended = answer(
            "POST", f"/v1/sessions/{session}/messages", json={"role": "user", "content": "hi"}
        )
        assert appended.status_code == 404
    assert answer("GET", "/v1/sessions").json()["sessions"] == []
    # The export says why there is nothing.
    export = answer("GET", "/v1/me/export")
    assert export.status_code == 410
    assert export.json()["error"]["code"] == "erased"
    assert "erased" in export.json()["error"]["message"]
    # Again: harmless, and says so.
    again = answer("DELETE", "/v1/me")
    assert again.status_code == 200
    assert again.json()["already_erased"] is True
    assert again.json()["erased_at"] == erasure["erased_at"]
    # Bob is untouched.
    bobs = httpx.get(
        f"{gateway.url}/v1/sessions/{others}/context", headers=gateway.auth(bob), timeout=60
    )
    assert bobs.status_code == 200
    assert audited(gateway, "user_erased").count(("ok", f"jwt:default/{alice}")) == 2
