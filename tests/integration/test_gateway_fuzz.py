"""Fuzzing the gateway: generated and hand-picked odd requests answer 2xx or 4xx, never
5xx, and a 4xx stores nothing.

Two parts, both against a real `chatlog serve`, with a valid token of a fuzz user of
their own (own tenant too), who owns one session before the fuzz starts:

- schemathesis generates requests for every operation of the gateway's OpenAPI document,
  valid ones and invalid ones (its positive and negative modes), seeded (hypothesis'
  ``derandomize``) and counted (``max_examples``), so a CI run is repeatable and bounded;
  half of the requests with a session in the path get the fuzz user's real session, so
  bodies and headers reach the code behind the ownership check;
- hand-picked odd ids (unicode, ``{``, ``:``, 10 KB, empty, ``..``), headers (odd
  ``Idempotency-Key``, a huge ``Authorization``, wrong content types) and bodies (deep
  nesting, huge numbers, wrong types) on every route.

How "stores nothing" is checked: a `Ledger` notes what every 2xx answer stored (the
sessions a ``POST /v1/sessions`` made, the message ids a ``POST .../messages`` returned).
Afterwards the fuzz user's state must be exactly the one from before plus the ledger: the
same sessions and, in the real session, the same message ids and count (read after a
marker the user appends last, so everything sent before it is applied). Anything a 4xx
request stored, or a 2xx one stored beyond what it answered, shows up there. A route whose
2xx answers store something else (closing, deleting) needs an entry in `EFFECTS`.

About 40 s on the 2-core development machine (measured).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.gateways import ROUTES, SUCCESS, Gateway, call, is_public, new_user, served_routes

pytestmark = pytest.mark.integration

# Generated requests per operation and mode: 480 requests, about 25 s, for the four
# routes of today (each new route adds about 6 s).
EXAMPLES = 60


@dataclass
class Ledger:
    """What the 2xx answers stored, and the answers that break the rules."""

    sessions: set[str] = field(default_factory=set)
    messages: dict[str, set[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    answers: dict[int, int] = field(default_factory=dict)

    def note(self, what: str, status: int, body: str, template: str, session: str | None) -> None:
        self.answers[status] = self.answers.get(status, 0) + 1
        if status >= 500 or status < 200 or 300 <= status < 400:
            self.problems.append(f"{what}: {status} {body[:300]}")
            return
        if status in SUCCESS and (effect := EFFECTS.get(template)) is not None:
            effect(self, session, json.loads(body))


def _created(ledger: Ledger, session: str | None, body: dict) -> None:
    ledger.sessions.add(body["session_id"])


def _appended(ledger: Ledger, session: str | None, body: dict) -> None:
    assert session is not None
    ledger.messages.setdefault(session, set()).add(body["message_id"])


# What a 2xx answer of each route stores (by its path template and method); a route not
# listed must store nothing, whatever it answers.
EFFECTS: dict[str, Callable[[Ledger, str | None, dict], None]] = {
    "POST /v1/sessions": _created,
    "POST /v1/sessions/{session_id}/messages": _appended,
}

# Routes fuzzed as a throwaway user, never on the fuzz user's session: their 2xx would end
# or erase what the check compares (close, delete, erase me), or never end (the stream).
ISOLATED = frozenset(
    {
        "GET /v1/sessions/{session_id}/events",
        "POST /v1/sessions/{session_id}/close",
        "DELETE /v1/sessions/{session_id}",
        "DELETE /v1/me",
    }
)
# Fewer requests of the routes that scan the log (an export reads the user's partitions).
EXAMPLES_OF = {"GET /v1/me/export": 10}
# Headers the document offers for service keys; with a user's token they are refused
# (403, 422), so half the requests go without them to reach the code behind the check.
CREDENTIAL_HEADERS = ("Chatlog-User", "X-API-Key")


@dataclass
class Fuzzed:
    """The fuzz user, their session, and what they had before the fuzz."""

    gateway: Gateway
    user: str
    tenant: str
    session: str
    sessions_before: set[str]
    messages_before: set[str]

    throwaway: str = field(default_factory=new_user)

    @property
    def auth(self) -> dict[str, str]:
        return self.gateway.auth(self.user, tenant=self.tenant)

    @property
    def throwaway_auth(self) -> dict[str, str]:
        """A user of the same tenant who holds nothing (for the `ISOLATED` routes)."""
        return self.gateway.auth(self.throwaway, tenant=self.tenant)

    def check_stored_only(self, ledger: Ledger, client: httpx.Client) -> None:
        """The user's state is the one from before plus what the 2xx answers stored."""
        marker = client.post(
            f"/v1/sessions/{self.session}/messages",
            json={"role": "user", "content": "marker"},
            headers={**self.auth, "Idempotency-Key": f"marker-{uuid.uuid4().hex[:8]}"},
        )
        assert marker.status_code == 201, marker.text
        context = client.get(
            f"/v1/sessions/{self.session}/context",
            params={"after": marker.json()["position"]},
            headers=self.auth,
        ).json()
        expected = self.messages_before | ledger.messages.get(self.session, set())
        expected.add(marker.json()["message_id"])
        assert {m["message_id"] for m in context["messages"]} == expected
        assert context["message_count"] == len(expected)
        listed = client.get("/v1/sessions", params={"limit": 200}, headers=self.auth).json()
        assert {s["session_id"] for s in listed["sessions"]} == self.sessions_before | (
            ledger.sessions
        )
        for entry in listed["sessions"]:
            if entry["session_id"] != self.session:
                assert entry["message_count"] == len(ledger.messages.get(entry["session_id"], ()))


@pytest.fixture
def client(gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        yield http


@pytest.fixture
def fuzzed(gateway, client) -> Fuzzed:
    user, tenant = new_user(), f"fuzz-{uuid.uuid4().hex[:8]}"
    auth = gateway.auth(user, tenant=tenant)
    session = client.post("/v1/sessions", json={"title": "fuzz"}, headers=auth).json()["session_id"]
    first = client.post(
        f"/v1/sessions/{session}/messages",
        json={"role": "user", "content": "before the fuzz"},
        headers=auth,
    )
    assert first.status_code == 201, first.text
    return Fuzzed(gateway, user, tenant, session, {session}, {first.json()["message_id"]})


def fuzz_operation(
    operation: schemathesis.APIOperation,
    mode: schemathesis.GenerationMode,
    fuzzed: Fuzzed,
    ledger: Ledger,
) -> None:
    """`EXAMPLES` generated requests of `operation` in `mode`, each noted in `ledger`."""
    template = f"{operation.method.upper()} {operation.path}"
    keys = iter(range(1_000_000))

    own = template not in ISOLATED

    @settings(
        max_examples=EXAMPLES_OF.get(template, EXAMPLES),
        derandomize=True,  # the same requests on every run
        database=None,
        deadline=None,
        phases=[Phase.generate],  # no shrinking: a live server, and bounded time
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), real=st.booleans())
    def fuzz(case: schemathesis.Case, real: bool) -> None:
        # Half the time the fuzz user's own session and a valid Idempotency-Key, so that
        # generated bodies get past the ownership check and some are stored.
        if real and own and "session_id" in (case.path_parameters or {}):
            case.path_parameters["session_id"] = fuzzed.session
            if case.headers and "Idempotency-Key" in case.headers:
                case.headers["Idempotency-Key"] = f"fuzz-{mode.value}-{next(keys)}"
        if real and case.headers:
            for name in CREDENTIAL_HEADERS:
                case.headers.pop(name, None)
        session = (case.path_parameters or {}).get("session_id")
        what = f"{template} ({mode.value}) {case.as_curl_command()[:500]}"
        auth = fuzzed.auth if own else fuzzed.throwaway_auth
        try:
            answer = case.call(base_url=fuzzed.gateway.url, headers=auth, timeout=60)
        except Exception as exc:  # a dropped connection is no answer either
            ledger.problems.append(f"{what}: {exc!r}")
            return
        ledger.note(what, answer.status_code, answer.text, template, session)

    fuzz()


def test_generated_requests_answer_2xx_or_4xx_and_a_4xx_stores_nothing(gateway, client, fuzzed):
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    operations = sorted((op.ok() for op in schema.get_all_operations()), key=lambda op: op.label)
    operations = [op for op in operations if not is_public(op.path)]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= set(EFFECTS)
    ledger = Ledger()
    started = time.monotonic()
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            fuzz_operation(operation, mode, fuzzed, ledger)
    took = time.monotonic() - started
    assert not ledger.problems, "\n".join(ledger.problems[:20])
    # Not vacuous: both kinds of answer were seen, writes included.
    assert any(400 <= s < 500 for s in ledger.answers), ledger.answers
    assert ledger.sessions, ledger.answers
    assert ledger.messages.get(fuzzed.session), ledger.answers
    fuzzed.check_stored_only(ledger, client)
    print(f"{sum(ledger.answers.values())} generated requests in {took:.0f} s: {ledger.answers}")


# Odd session ids: each in the path of every session route.
ODD_IDS = [
    "",
    " ",
    "é",
    "日本語",
    "\u202egnp.exe",
    "🙂",
    "{",
    "}",
    "{session_id}",
    ":",
    "a:b",
    "..",
    "../..",
    "%2e%2e",
    "%00",
    "a%2Fb",
    "a" * 10_240,
    "-" * 200,
    "$(id)",
    "'; DROP TABLE x; --",
]


def _id_left_the_path(client: httpx.Client, template: str, odd: str) -> bool:
    """Whether the path the client sends no longer holds a session id at all."""
    sent = client.build_request("GET", template.replace("{session_id}", odd)).url.path
    return not sent.startswith("/v1/sessions/")


def _deep(depth: int) -> dict:
    nested: dict = {}
    for _ in range(depth):
        nested = {"a": nested}
    return nested


MESSAGE = {"role": "user", "content": "odd"}
# Bodies the message route must refuse, as JSON values or as raw bytes. (A NUL character
# or a tool_call_id on a user message is not among them: the event contract allows both.)
ODD_BODIES: list[object] = [
    {**MESSAGE, "metadata": _deep(50)},
    b'{"role": "user", "content": "x", "metadata": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001,
    b"[" * 100_000 + b"]" * 100_000,
    b'{"role": "user", "content": "x", "metadata": {"n": 1e999}}',
    b'{"role": "user", "content": "x", "metadata": {"n": ' + b"9" * 5_000 + b"}}",
    b'{"role": "user", "content": ' + b"9" * 5_000 + b"}",
    b'{"role": "user", "content": NaN}',
    b'{"role": "user", "content": "\\ud800"}',
    b'{"role": "user", "content": "x"',
    b"\xff\xfe\x00garbage",
    {**MESSAGE, "content": 123},
    {**MESSAGE, "content": None},
    {**MESSAGE, "role": ["user"]},
    {**MESSAGE, "tool_calls": "x"},
    {**MESSAGE, "tool_calls": [{"id": 1, "name": {}, "arguments": []}]},
    {**MESSAGE, "metadata": ["a", "b"]},
    {**MESSAGE, "metadata": {"k": {"nested": True}}},
    {**MESSAGE, "name": "x" * 100_000},
    [MESSAGE],
    "a string",
    None,
    12,
]
# Odd headers on an otherwise valid append.
ODD_HEADERS: list[dict[str, bytes]] = [
    {"Idempotency-Key": b""},
    {"Idempotency-Key": b"{"},
    {"Idempotency-Key": b"a:b"},
    {"Idempotency-Key": b"../../x"},
    {"Idempotency-Key": "é".encode("latin-1")},
    {"Idempotency-Key": "日本".encode()},
    {"Idempotency-Key": b"k" * 10_240},
    {"Content-Type": b"text/plain"},
    {"Content-Type": b"application/x-www-form-urlencoded"},
    {"Content-Type": b"multipart/form-data; boundary=x"},
    {"Content-Type": b"application/json; charset=utf-16"},
    {"Content-Type": b"application/xml"},
]
HUGE_AUTHORIZATION = [b"Bearer " + b"a" * 100_000, b"Bearer " + b"a" * 12_000, b"Bearer a.b.c"]


def test_odd_ids_headers_and_bodies_answer_4xx_and_store_nothing(gateway, client, fuzzed):
    ledger = Ledger()
    session_routes = sorted(
        (method, template)
        for method, template in served_routes(gateway) & set(ROUTES)
        if ROUTES[(method, template)].on_session
    )
    assert session_routes
    for odd in ODD_IDS:
        for method, template in session_routes:
            route = ROUTES[(method, template)]
            status, body, _ = call(client, method, template, route, fuzzed.auth, odd)
            what = f"id {odd[:40]!r}, {method} {template}"
            ledger.note(what, status, body, f"{method} {template}", odd)
            if _id_left_the_path(client, template, odd):
                # ".." is a dot segment: the client resolves it away (RFC 3986), and
                # `/v1/sessions/../tasks` is sent as `/v1/tasks`, the caller's own
                # listing. No session id reaches the gateway: not a 5xx, nothing stored.
                if status >= 500:
                    ledger.problems.append(f"{what}: {status}")
            elif not 400 <= status < 500:
                ledger.problems.append(f"{what}: {status}, not a 4xx")
    messages = f"/v1/sessions/{fuzzed.session}/messages"
    template = "POST /v1/sessions/{session_id}/messages"
    for n, odd_body in enumerate(ODD_BODIES):
        raw = odd_body if isinstance(odd_body, bytes) else json.dumps(odd_body).encode()
        headers = {**fuzzed.auth, "Content-Type": "application/json"}
        answer = client.post(messages, content=raw, headers=headers)
        ledger.note(
            f"body {n} {raw[:80]!r}", answer.status_code, answer.text, template, fuzzed.session
        )
        if answer.status_code in SUCCESS:
            ledger.problems.append(f"body {n} {raw[:80]!r} was stored: {answer.text}")
    for odd_headers in ODD_HEADERS:
        headers = {**fuzzed.auth, "Content-Type": b"application/json", **odd_headers}
        answer = client.post(messages, content=json.dumps(MESSAGE).encode(), headers=headers)
        what = f"headers {str(odd_headers)[:80]}"
        ledger.note(what, answer.status_code, answer.text, template, fuzzed.session)
    for authorization in HUGE_AUTHORIZATION:
        for method, template in session_routes:
            route = ROUTES[(method, template)]
            try:
                status, body, _ = call(
                    client,
                    method,
                    template,
                    route,
                    {"Authorization": authorization},
                    fuzzed.session,
                )
            except httpx.TransportError as exc:
                ledger.problems.append(f"Authorization of {len(authorization)} B: {exc!r}")
                continue
            what = f"Authorization of {len(authorization)} B, {method} {template}"
            ledger.note(what, status, body, f"{method} {template}", fuzzed.session)
            if not 400 <= status < 500:
                ledger.problems.append(f"{what}: {status}, not a 4xx")
    assert not ledger.problems, "\n".join(ledger.problems)
    fuzzed.check_stored_only(ledger, client)
