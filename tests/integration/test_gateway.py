"""The HTTP gateway as a front end meets it: a real `chatlog serve` process (uvicorn) on a
free port, a real projector, real Kafka and Redis, and requests over HTTP with httpx.

One gateway and projector serve the whole module (starting them costs seconds); each
test uses users of its own, so the tests do not see each other's sessions.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from chatlog.client import ChatLog
from chatlog.gateway.fastapi_app import MAX_BODY_BYTES
from chatlog.schemas.ids import validate_id
from tests.gateways import Gateway
from tests.gateways import new_user as user

pytestmark = pytest.mark.integration


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
        "max_lag": 1000,
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
        "/v1/tasks",
        "/v1/sessions/{session_id}/tasks",
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


def test_the_callers_tasks_are_listed_and_no_one_elses(gateway):
    owner, other = user(), user()
    session = create(gateway, owner, "report")
    with ChatLog.from_settings(gateway.settings, flush_on_sigterm=False) as log:
        task_id = log.start_task(session, user_id=owner, kind="report", input={"m": 11})
        log.finish(task_id, session_id=session, user_id=owner, result={"pages": 3})
        log.tasks(owner, session_id=session)  # read-your-writes: projected from here on

    in_session = httpx.get(
        f"{gateway.url}/v1/sessions/{session}/tasks", headers=gateway.auth(owner), timeout=60
    )
    assert in_session.status_code == 200, in_session.text
    [task] = in_session.json()["tasks"]
    assert (task["task_id"], task["status"], task["input"], task["result"]) == (
        task_id,
        "succeeded",
        {"m": 11},
        {"pages": 3},
    )
    mine = httpx.get(f"{gateway.url}/v1/tasks", headers=gateway.auth(owner), timeout=60)
    assert [t["task_id"] for t in mine.json()["tasks"]] == [task_id]

    # Another user, and the same user in another tenant: nothing of it.
    refused = httpx.get(
        f"{gateway.url}/v1/sessions/{session}/tasks", headers=gateway.auth(other), timeout=60
    )
    assert refused.status_code == 404
    assert "pages" not in refused.text
    assert httpx.get(f"{gateway.url}/v1/tasks", headers=gateway.auth(other)).json() == {"tasks": []}
    acme = {"Authorization": f"Bearer {gateway.issuer.mint(owner, tenant='acme')}"}
    assert httpx.get(f"{gateway.url}/v1/tasks", headers=acme).json() == {"tasks": []}
