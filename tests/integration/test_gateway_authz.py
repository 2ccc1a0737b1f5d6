"""The authorization matrix: every route of the gateway by every kind of caller that is not
the owner answers 401, 403 or 404, returns none of the owner's data, and stores nothing.

The routes come from the running gateway's own OpenAPI document, not from a list kept
here: a route the document has and `tests.gateways.ROUTES` does not know how to call
fails the test (`test_every_route_of_the_openapi_document_is_in_the_matrix`), so no new
route can go unchecked. Public routes (health, the docs, the chat page and its files) are
listed in `tests.gateways.PUBLIC`. Each route in `ROUTES` is also called once by its owner
(`test_the_owner_gets_2xx_from_every_route`), which proves the request it builds is a
valid one: a 404 for a malformed request would prove nothing.

The kinds of caller are a table too (`CALLERS`): a new kind (an operator's API key, say)
is one more entry, with the statuses it must get on a session of someone else's and on
routes of the caller's own data.

How "stores nothing" is checked: after the whole matrix, the owner appends a marker
message and reads with ``after=`` its position. A session lives on one partition and the
projector applies it in order, so anything another caller had managed to append would be
applied before the marker: the context must be the one from before plus the marker.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest

from chatlog.gateway.api_keys import ApiKeys, Scope
from chatlog.gateway.tokens import TokenIssuer, TokenSettings
from tests.gateways import (
    ROUTES,
    SUCCESS,
    Gateway,
    call,
    is_public,
    new_user,
    served_routes,
)

pytestmark = pytest.mark.integration


@dataclass
class World:
    """The owner (the victim), their session with a canary, and what the callers need."""

    gateway: Gateway
    owner: str
    tenant: str
    session: str
    canary: str
    stranger: str = field(default_factory=new_user)

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def owners_token(self, **claims: Any) -> str:
        return self.gateway.token(self.owner, tenant=self.tenant, **claims)

    def foreign(self, **settings: str) -> TokenIssuer:
        """An issuer differing from the gateway's in `settings` (secret, issuer, audience)."""
        base = TokenSettings.from_settings(self.gateway.settings)
        return TokenIssuer(replace(base, **settings))

    def api_key(self, tenant: str, scope: Scope) -> str:
        """A new API key of `tenant` (a service's, or an operator's), as the CLI makes one."""
        key, _ = ApiKeys.from_settings(self.gateway.settings).create(
            f"{scope}-{uuid.uuid4().hex[:8]}", tenant=tenant, scope=scope
        )
        return key


def _bad_signature(world: World) -> dict[str, str]:
    head, payload, signature = world.owners_token().split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return world.bearer(f"{head}.{payload}.{flipped}")


def _unsigned(world: World) -> dict[str, str]:
    # The owner's claims with "alg": "none": the token's header must never choose.
    _, payload, _ = world.owners_token().split(".")
    head = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return world.bearer(f"{head.decode().rstrip('=')}.{payload}.")


@dataclass(frozen=True)
class CallerKind:
    """A kind of caller who is not the owner, and the statuses it may get: on a route of
    the owner's session, and on a route of the caller's own data."""

    headers: Callable[[World], dict[str, str]]
    on_session: frozenset[int]
    on_own_data: frozenset[int]


UNAUTHENTICATED = frozenset({401})
# A valid caller's own-data routes act on that caller: `DELETE /v1/me` erases them (404
# when chatlog holds nothing of them), after which their export answers 410 and a new
# session 404. What matters is that none of it touches the owner's data.
OWN_DATA = SUCCESS | {404, 410}

# Every kind of caller the matrix tries. The auth failures carry the owner's own identity
# (the most dangerous token to accept); the others are valid tokens of someone else.
CALLERS: dict[str, CallerKind] = {
    "no token": CallerKind(lambda w: {}, UNAUTHENTICATED, UNAUTHENTICATED),
    "not a bearer token": CallerKind(
        lambda w: {"Authorization": "Basic " + base64.b64encode(b"owner:pw").decode()},
        UNAUTHENTICATED,
        UNAUTHENTICATED,
    ),
    "expired": CallerKind(
        lambda w: w.bearer(w.owners_token(ttl_s=60, now=time.time() - 3600)),
        UNAUTHENTICATED,
        UNAUTHENTICATED,
    ),
    "not valid yet": CallerKind(
        lambda w: w.bearer(w.owners_token(now=time.time() + 3600)),
        UNAUTHENTICATED,
        UNAUTHENTICATED,
    ),
    "wrong audience": CallerKind(
        lambda w: w.bearer(w.foreign(audience="elsewhere").mint(w.owner, tenant=w.tenant)),
        UNAUTHENTICATED,
        UNAUTHENTICATED,
    ),
    "wrong issuer": CallerKind(
        lambda w: w.bearer(w.foreign(issuer="someone-else").mint(w.owner, tenant=w.tenant)),
        UNAUTHENTICATED,
        UNAUTHENTICATED,
    ),
    "another secret": CallerKind(
        lambda w: w.bearer(
            w.foreign(secret="another-secret-of-enough-length-0123456789").mint(
                w.owner, tenant=w.tenant
            )
        ),
        UNAUTHENTICATED,
        UNAUTHENTICATED,
    ),
    "bad signature": CallerKind(_bad_signature, UNAUTHENTICATED, UNAUTHENTICATED),
    "unsigned (alg none)": CallerKind(_unsigned, UNAUTHENTICATED, UNAUTHENTICATED),
    "another user": CallerKind(
        lambda w: w.gateway.auth(w.stranger, tenant=w.tenant), frozenset({404}), OWN_DATA
    ),
    "another tenant, same user id": CallerKind(
        lambda w: w.gateway.auth(w.owner, tenant=f"other-{w.tenant}"), frozenset({404}), OWN_DATA
    ),
    # A back end's key of another tenant, naming the owner: it acts in its own tenant only.
    "another tenant's service key": CallerKind(
        lambda w: {
            **w.bearer(w.api_key(f"other-{w.tenant}", "service")),
            "Chatlog-User": w.owner,
        },
        frozenset({404}),
        OWN_DATA,
    ),
    # An operator runs the system and reads no one's conversations, even naming the owner.
    "operator": CallerKind(
        lambda w: {**w.bearer(w.api_key(w.tenant, "operator")), "Chatlog-User": w.owner},
        frozenset({403}),
        frozenset({403}),
    ),
}


@pytest.fixture
def client(gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        yield http


def make_session(client: httpx.Client, gateway: Gateway, user: str, tenant: str) -> str:
    created = client.post(
        "/v1/sessions", json={"title": "mine"}, headers=gateway.auth(user, tenant=tenant)
    )
    assert created.status_code == 201, created.text
    return created.json()["session_id"]


def test_every_route_of_the_openapi_document_is_in_the_matrix(gateway):
    served = {(m, p) for m, p in served_routes(gateway) if not is_public(p)}
    unknown = served - set(ROUTES)
    assert not unknown, (
        f"routes the authorization matrix does not know how to call: {sorted(unknown)}; "
        "add each to ROUTES in tests/gateways.py (or to PUBLIC)"
    )
    # Not vacuous: the matrix does call the routes this gateway serves.
    assert ("POST", "/v1/sessions/{session_id}/messages") in served


def test_the_owner_gets_2xx_from_every_route(gateway, client):
    for method, template in sorted(served_routes(gateway) & set(ROUTES)):
        # A user and session of their own per route: some routes erase or close.
        owner, tenant = new_user(), f"t-{uuid.uuid4().hex[:8]}"
        session = make_session(client, gateway, owner, tenant)
        status, body, _ = call(
            client,
            method,
            template,
            ROUTES[(method, template)],
            gateway.auth(owner, tenant=tenant),
            session,
        )
        assert status in SUCCESS, f"the owner's {method} {template}: {status} {body}"


def test_no_caller_but_the_owner_gets_a_session_or_stores_anything(gateway, client):
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    owner = new_user()
    session = make_session(client, gateway, owner, tenant)
    canary = f"canary-{uuid.uuid4().hex}"
    mine = gateway.auth(owner, tenant=tenant)
    stored = client.post(
        f"/v1/sessions/{session}/messages", json={"role": "user", "content": canary}, headers=mine
    )
    assert stored.status_code == 201
    before = client.get(
        f"/v1/sessions/{session}/context", params={"after": stored.json()["position"]}, headers=mine
    ).json()
    sessions_before = client.get("/v1/sessions", headers=mine).json()["sessions"]
    assert [m["content"] for m in before["messages"]] == [canary]
    world = World(gateway, owner, tenant, session, canary)

    routes = sorted(served_routes(gateway) & set(ROUTES))
    missing_session = uuid.uuid4().hex  # a valid id no session has
    problems: list[str] = []
    calls = 0
    for who, kind in CALLERS.items():
        for method, template in routes:
            route = ROUTES[(method, template)]
            headers = kind.headers(world)
            status, body, answer_headers = call(client, method, template, route, headers, session)
            calls += 1
            where = f"{who}, {method} {template}: {status} {body[:200]}"
            allowed = kind.on_session if route.on_session else kind.on_own_data
            if status not in allowed:
                problems.append(f"{where} (expected one of {sorted(allowed)})")
            if canary in body or session in body:
                problems.append(f"{where}: the owner's data in the answer")
            if status == 401:
                if not answer_headers.get("WWW-Authenticate", "").startswith("Bearer"):
                    problems.append(f"{where}: no WWW-Authenticate: Bearer")
                if json.loads(body or "{}").get("error", {}).get("code") != "unauthenticated":
                    problems.append(f"{where}: not the unauthenticated error")
            if status == 404 and route.on_session:
                # The same answer as a session that does not exist: no existence oracle.
                missing = call(client, method, template, route, headers, missing_session)
                if (missing[0], json.loads(missing[1])) != (404, json.loads(body)):
                    problems.append(f"{where}: a missing session answers {missing[:2]}")
    assert not problems, "\n".join(problems)
    assert calls == len(CALLERS) * len(routes) >= len(CALLERS) * 4

    # Nothing stored: a marker the owner appends now comes right after the canary.
    marker = client.post(
        f"/v1/sessions/{session}/messages", json={"role": "user", "content": "marker"}, headers=mine
    )
    assert marker.status_code == 201, marker.text
    after = client.get(
        f"/v1/sessions/{session}/context", params={"after": marker.json()["position"]}, headers=mine
    ).json()
    assert [m["content"] for m in after["messages"]] == [canary, "marker"]
    assert after["message_count"] == before["message_count"] + 1
    assert (after["title"], after["status"]) == (before["title"], before["status"])
    sessions_after = client.get("/v1/sessions", headers=mine).json()["sessions"]
    assert [s["session_id"] for s in sessions_after] == [s["session_id"] for s in sessions_before]
