"""The HTTP gateway as a front end meets it: a real `chatlog serve` process (uvicorn) on a
free port, a real projector, real Kafka and Redis, and requests over HTTP with httpx.

One gateway and projector serve the whole module (starting them costs seconds); each
test uses users of its own, so the tests do not see each other's sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from chatlog.gateway.fastapi_app import MAX_BODY_BYTES
from chatlog.gateway.tokens import TokenIssuer, TokenSettings
from chatlog.schemas.ids import validate_id
from chatlog.settings import Settings
from tests.processes import (
    delete_prefix,
    run_docs_block,
    running_gateway,
    running_projector,
    unique_settings,
)

pytestmark = pytest.mark.integration

SECRET = "gateway-tests-" + uuid.uuid4().hex  # 46 characters, fresh each run


@dataclass
class Gateway:
    url: str
    settings: Settings
    issuer: TokenIssuer

    def auth(self, user: str, **claims) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.mint(user, **claims)}"}


@pytest.fixture(scope="module")
def gateway(kafka, redis_url, tmp_path_factory) -> Iterator[Gateway]:
    with gateway_stack(kafka, redis_url, tmp_path_factory.mktemp("gateway")) as gw:
        yield gw


@contextlib.contextmanager
def gateway_stack(kafka, redis_url: str, logs: Path, **overrides) -> Iterator[Gateway]:
    """A projector and a gateway on fresh topics and prefix (`overrides`: settings)."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    # Reads wait up to 30 s: a loaded test machine can take longer than 5 s to project.
    overrides = {"read_timeout_s": 30.0, **overrides}
    settings = unique_settings(kafka, redis_url, prefix, auth_secret=SECRET, **overrides)
    try:
        with (
            running_projector(settings, log=logs / "projector.log"),
            running_gateway(settings, log=logs / "serve.log") as url,
        ):
            yield Gateway(url, settings, TokenIssuer.from_settings(settings))
    finally:
        delete_prefix(redis_url, prefix)


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def create(gw: Gateway, who: str, title: str | None = None) -> str:
    answer = httpx.post(
        f"{gw.url}/v1/sessions", json={"title": title}, headers=gw.auth(who), timeout=60
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["session_id"]


def post(gw: Gateway, who: str, session: str, content: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/sessions/{session}/messages",
        json={"role": "user", "content": content},
        headers={**gw.auth(who), **headers},
        timeout=60,
    )


def test_create_post_read_your_writes_and_list(gateway):
    alice = user()
    answer = httpx.post(
        f"{gateway.url}/v1/sessions",
        json={"title": "Refund"},
        headers=gateway.auth(alice),
        timeout=60,
    )
    assert answer.status_code == 201
    session = answer.json()["session_id"]
    assert validate_id(session) == session
    assert len(session) >= 22  # 16 random bytes, URL-safe base64: 128 bits

    for n in range(3):
        posted = post(gateway, alice, session, f"message {n} about order 7731")
        assert posted.status_code == 201, posted.text
        position = posted.json()["position"]
        # Read-your-writes: the context waits for the position the append returned.
        read = httpx.get(
            f"{gateway.url}/v1/sessions/{session}/context",
            params={"after": position},
            headers=gateway.auth(alice),
            timeout=60,
        )
        assert read.status_code == 200
        body = read.json()
        assert [m["content"] for m in body["messages"]][-1] == f"message {n} about order 7731"
        assert body["title"] == "Refund"
        assert body["message_count"] == n + 1
        assert body["messages"][-1]["message_id"] == posted.json()["message_id"]

    openai = httpx.get(
        f"{gateway.url}/v1/sessions/{session}/context",
        params={"format": "openai", "max_tokens": 4000},
        headers=gateway.auth(alice),
    )
    assert openai.status_code == 200
    assert openai.json()["messages"] == [
        {"role": "user", "content": f"message {n} about order 7731"} for n in range(3)
    ]

    listed = httpx.get(f"{gateway.url}/v1/sessions", headers=gateway.auth(alice))
    assert listed.status_code == 200
    assert [
        (s["session_id"], s["title"], s["message_count"]) for s in listed.json()["sessions"]
    ] == [(session, "Refund", 3)]


def test_a_retried_request_with_the_same_idempotency_key_is_stored_once(gateway):
    bob = user()
    session = create(gateway, bob)
    first = post(gateway, bob, session, "Cancel order 7731", **{"Idempotency-Key": "req-1"})
    again = post(gateway, bob, session, "Cancel order 7731", **{"Idempotency-Key": "req-1"})
    assert first.status_code == again.status_code == 201
    assert first.json()["message_id"] == again.json()["message_id"] == "req-1"
    context = httpx.get(
        f"{gateway.url}/v1/sessions/{session}/context",
        params={"after": again.json()["position"]},
        headers=gateway.auth(bob),
        timeout=60,
    ).json()
    assert [(m["message_id"], m["content"]) for m in context["messages"]] == [
        ("req-1", "Cancel order 7731")
    ]
    assert context["message_count"] == 1

    bad = post(gateway, bob, session, "x", **{"Idempotency-Key": "not an id!"})
    assert bad.status_code == 422
    assert "Idempotency-Key" in bad.json()["error"]["message"]


def test_authorization_matrix_answers_401_or_404_and_no_data(gateway):
    alice, mallory = user(), user()
    session = create(gateway, alice)
    canary = f"canary-{uuid.uuid4().hex}"
    stored = post(gateway, alice, session, canary)
    assert stored.status_code == 201

    now = time.time()
    other_audience = TokenIssuer(TokenSettings(secret=SECRET, audience="elsewhere"))
    other_secret = TokenIssuer(TokenSettings(secret="another-secret-of-enough-length-0123456789"))
    callers = {
        "no token": ({}, 401),
        "expired": (gateway.auth(alice, ttl_s=60, now=now - 3600), 401),
        "wrong audience": ({"Authorization": f"Bearer {other_audience.mint(alice)}"}, 401),
        "wrong secret": ({"Authorization": f"Bearer {other_secret.mint(alice)}"}, 401),
        "garbage": ({"Authorization": "Bearer not-a-jwt"}, 401),
        "another user": (gateway.auth(mallory), 404),
    }
    requests = {
        "post message": (
            "POST",
            f"/v1/sessions/{session}/messages",
            {"role": "user", "content": "x"},
        ),
        "read context": ("GET", f"/v1/sessions/{session}/context", None),
    }
    missing = httpx.get(
        f"{gateway.url}/v1/sessions/{uuid.uuid4().hex}/context", headers=gateway.auth(mallory)
    )
    assert missing.status_code == 404
    for who, (headers, status) in callers.items():
        for what, (method, path, body) in requests.items():
            answer = httpx.request(
                method, f"{gateway.url}{path}", json=body, headers=headers, timeout=60
            )
            assert answer.status_code == status, f"{who}, {what}: {answer.text}"
            assert canary not in answer.text
            if status == 401:
                assert answer.headers["WWW-Authenticate"] == "Bearer"
                assert answer.json()["error"]["code"] == "unauthenticated"
            else:
                # The same answer as a session that does not exist: no existence oracle.
                assert answer.json() == missing.json()
        if status == 401:
            for method, path in (("GET", "/v1/sessions"), ("POST", "/v1/sessions")):
                answer = httpx.request(method, f"{gateway.url}{path}", headers=headers)
                assert answer.status_code == 401, f"{who}, {method} {path}"

    assert httpx.get(f"{gateway.url}/v1/sessions", headers=gateway.auth(mallory)).json() == {
        "sessions": []
    }
    # Nothing any of them sent was stored in alice's session.
    context = httpx.get(
        f"{gateway.url}/v1/sessions/{session}/context",
        params={"after": stored.json()["position"]},
        headers=gateway.auth(alice),
        timeout=60,
    ).json()
    assert [m["content"] for m in context["messages"]] == [canary]


def test_bad_requests_answer_4xx_with_a_json_error(gateway):
    carol = user()
    session = create(gateway, carol)
    auth = gateway.auth(carol)
    too_big = httpx.post(
        f"{gateway.url}/v1/sessions/{session}/messages",
        json={"role": "user", "content": "x" * (MAX_BODY_BYTES + 1)},
        headers=auth,
    )
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "too_large"
    messages = f"/v1/sessions/{session}/messages"
    cases = [
        ("GET", f"/v1/sessions/{session}/context?after=soon", None, 422),
        ("GET", f"/v1/sessions/{session}/context?format=xml", None, 422),
        ("GET", "/v1/sessions?limit=0", None, 422),
        ("POST", messages, {"role": "wizard", "content": "x"}, 422),
        ("POST", messages, {"content": "no role"}, 422),
        (
            "POST",
            f"/v1/sessions/{session}/messages",
            {"role": "user", "content": "x", "user_id": "eve"},
            422,
        ),
        ("POST", "/v1/sessions/bad%20id/messages", {"role": "user", "content": "x"}, 422),
        ("GET", "/v1/nothing-here", None, 404),
    ]
    for method, path, body, status in cases:
        answer = httpx.request(method, f"{gateway.url}{path}", json=body, headers=auth)
        assert answer.status_code == status, f"{method} {path}: {answer.text}"
        assert set(answer.json()["error"]) == {"code", "message"}
    # None of those stored anything.
    context = httpx.get(f"{gateway.url}/v1/sessions/{session}/context", headers=auth).json()
    assert context["messages"] == []


def test_health_readiness_and_the_openapi_document(gateway):
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz", timeout=10)
    assert ready.status_code == 200
    body = ready.json()
    assert body.pop("projector_lag") <= body["max_lag"]  # the projector keeps up
    assert body == {
        "status": "ready",
        "kafka": "ok",
        "redis": "ok",
        "projector": "ok",
        "max_lag": 10_000,
    }
    paths = httpx.get(f"{gateway.url}/openapi.json").json()["paths"]
    assert {
        "/v1/sessions",
        "/v1/sessions/{session_id}/messages",
        "/v1/sessions/{session_id}/context",
        "/v1/sessions/{session_id}/events",
        "/v1/sessions/{session_id}/close",
        "/v1/sessions/{session_id}",
        "/v1/me",
        "/v1/me/export",
    } <= set(paths)


def test_without_dev_the_page_is_served_but_the_dev_login_is_404_and_no_bot_answers(gateway):
    page = httpx.get(f"{gateway.url}/", timeout=30)
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    login = httpx.post(f"{gateway.url}/dev/token", json={"user": "mallory"}, timeout=30)
    assert login.status_code == 404
    assert login.json() == {"error": {"code": "http", "message": "Not Found"}}
    assert "/dev/token" not in httpx.get(f"{gateway.url}/openapi.json").json()["paths"]
    alice = user()
    session = create(gateway, alice)
    position = post(gateway, alice, session, "anyone there?").json()["position"]
    time.sleep(1.0)  # a bot, were there one, would have answered by now
    context = httpx.get(
        f"{gateway.url}/v1/sessions/{session}/context",
        params={"after": position},
        headers=gateway.auth(alice),
        timeout=60,
    ).json()
    assert [m["role"] for m in context["messages"]] == ["user"]


def test_twenty_concurrent_users_each_read_only_their_own_canaries(gateway):
    users = [user() for _ in range(20)]

    async def chat(client: httpx.AsyncClient, who: str) -> tuple[str, str, list[str]]:
        auth = gateway.auth(who)
        created = await client.post("/v1/sessions", json={"title": who}, headers=auth)
        assert created.status_code == 201, created.text
        session = created.json()["session_id"]
        canaries = []
        for n in range(5):
            canary = f"canary {who} {n}"
            posted = await client.post(
                f"/v1/sessions/{session}/messages",
                json={"role": "user", "content": canary},
                headers=auth,
            )
            assert posted.status_code == 201, posted.text
            canaries.append(canary)
            read = await client.get(
                f"/v1/sessions/{session}/context",
                params={"after": posted.json()["position"]},
                headers=auth,
            )
            assert read.status_code == 200, read.text
            assert [m["content"] for m in read.json()["messages"]] == canaries
        return who, session, canaries

    async def everyone() -> list[tuple[str, str, list[str]]]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as client:
            return await asyncio.gather(*(chat(client, who) for who in users))

    results = asyncio.run(everyone())
    sessions = {who: session for who, session, _ in results}
    for who, session, canaries in results:
        auth = gateway.auth(who)
        listed = httpx.get(f"{gateway.url}/v1/sessions", headers=auth).json()["sessions"]
        assert [s["session_id"] for s in listed] == [session]
        context = httpx.get(f"{gateway.url}/v1/sessions/{session}/context", headers=auth)
        assert [m["content"] for m in context.json()["messages"]] == canaries
        neighbour = sessions[users[(users.index(who) + 1) % len(users)]]
        refused = httpx.get(f"{gateway.url}/v1/sessions/{neighbour}/context", headers=auth)
        assert refused.status_code == 404
        assert "canary" not in refused.text


def test_the_curl_examples_in_the_docs_run(gateway):
    lines = run_docs_block("http.md", "## With curl", gateway.settings, gateway=gateway.url)
    assert '"content":"Where is my order 7731?"' in lines[0]
    assert '"title":"Refund"' in lines[1]
    assert lines[-1] == "401"


def test_the_same_sub_in_another_tenant_sees_nothing_of_the_session(gateway):
    sub = user()
    acme = {"Authorization": f"Bearer {gateway.issuer.mint(sub, tenant='acme')}"}
    home = gateway.auth(sub)  # the same sub, tenant "default"
    created = httpx.post(f"{gateway.url}/v1/sessions", json={"title": "acme"}, headers=acme)
    assert created.status_code == 201
    session = created.json()["session_id"]
    canary = f"canary-{uuid.uuid4().hex}"
    posted = post(gateway, sub, session, "from the other tenant")
    assert posted.status_code == 404  # refused before anything is published
    stored = httpx.post(
        f"{gateway.url}/v1/sessions/{session}/messages",
        json={"role": "user", "content": canary},
        headers=acme,
    )
    assert stored.status_code == 201

    read = httpx.get(f"{gateway.url}/v1/sessions/{session}/context", headers=home)
    assert read.status_code == 404
    assert canary not in read.text
    assert httpx.get(f"{gateway.url}/v1/sessions", headers=home).json() == {"sessions": []}
    mine = httpx.get(f"{gateway.url}/v1/sessions", headers=acme).json()["sessions"]
    assert [s["session_id"] for s in mine] == [session]
    context = httpx.get(
        f"{gateway.url}/v1/sessions/{session}/context",
        params={"after": stored.json()["position"]},
        headers=acme,
        timeout=60,
    ).json()
    assert [m["content"] for m in context["messages"]] == [canary]
