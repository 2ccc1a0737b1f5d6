"""The gateway's production authentication, end to end: a real `chatlog serve` configured
with the JWKS URL of a real identity-provider endpoint (`tests.jwks_server`, RS256 and
ES256 keys), service and operator API keys made, listed and revoked with the real
`chatlog apikey` commands, a real projector, Kafka and Redis.

One gateway serves the module; each test uses users of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from chatlog.settings import Settings
from tests.jwks_server import JwksServer, SigningKey, running_jwks
from tests.processes import (
    ROOT,
    chatlog_env,
    delete_prefix,
    run_docs_block,
    running_gateway,
    running_projector,
    unique_settings,
)

pytestmark = pytest.mark.integration


@dataclass
class Gateway:
    url: str
    settings: Settings
    idp: JwksServer
    rs256: SigningKey
    es256: SigningKey
    logs: Path
    outputs: list[str]  # every CLI output of the module, for the search for leaked keys

    def chatlog(self, *args: str) -> subprocess.CompletedProcess[str]:
        ran = subprocess.run(
            [sys.executable, "-m", "chatlog.cli", *args],
            env=chatlog_env(self.settings),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.outputs += [ran.stdout, ran.stderr]
        assert ran.returncode == 0, ran.stderr
        return ran


@pytest.fixture(scope="module")
def gateway(kafka, redis_url, tmp_path_factory) -> Iterator[Gateway]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    logs = tmp_path_factory.mktemp("gateway-auth")
    rs256, es256 = SigningKey.new("RS256"), SigningKey.new("ES256")
    try:
        with running_jwks(rs256, es256) as idp:
            settings = unique_settings(
                kafka,
                redis_url,
                prefix,
                auth_jwks_url=idp.url,
                # A rotated key is fetched on its first token (in production, at most
                # every 30 s); the test rotates and must not wait.
                auth_jwks_refresh_s=0,
                api_keys_file=logs / "keys" / "api-keys.json",
                read_timeout_s=30.0,
            )
            with (
                running_projector(settings, log=logs / "projector.log"),
                running_gateway(settings, log=logs / "serve.log") as url,
            ):
                yield Gateway(url, settings, idp, rs256, es256, logs, [])
    finally:
        delete_prefix(redis_url, prefix)


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def converse(gw: Gateway, headers: dict[str, str], text: str) -> tuple[str, str]:
    """Start a session, append `text`, read it back; the session id and its position."""
    created = httpx.post(f"{gw.url}/v1/sessions", json={}, headers=headers, timeout=60)
    assert created.status_code == 201, created.text
    session = created.json()["session_id"]
    posted = httpx.post(
        f"{gw.url}/v1/sessions/{session}/messages",
        json={"role": "user", "content": text},
        headers=headers,
        timeout=60,
    )
    assert posted.status_code == 201, posted.text
    return session, posted.json()["position"]


def read(gw: Gateway, session: str, headers: dict[str, str], after: str | None = None):
    params = {} if after is None else {"after": after}
    return httpx.get(
        f"{gw.url}/v1/sessions/{session}/context", params=params, headers=headers, timeout=60
    )


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_identity_provider_tokens_end_to_end(gateway, algorithm):
    key = gateway.rs256 if algorithm == "RS256" else gateway.es256
    alice = user()
    auth = bearer(key.mint(alice, tenant="acme"))
    session, position = converse(gateway, auth, f"hello over {algorithm}")
    context = read(gateway, session, auth, position)
    assert context.status_code == 200
    assert [m["content"] for m in context.json()["messages"]] == [f"hello over {algorithm}"]
    listed = httpx.get(f"{gateway.url}/v1/sessions", headers=auth).json()["sessions"]
    assert [s["session_id"] for s in listed] == [session]
    # The same sub in another tenant, or another issuer's token, sees nothing.
    assert read(gateway, session, bearer(key.mint(alice))).status_code == 404
    foreign = read(gateway, session, bearer(key.mint(alice, tenant="acme", issuer="other")))
    assert foreign.status_code == 401
    assert foreign.headers["WWW-Authenticate"] == "Bearer"


def test_a_rotated_key_is_accepted_an_unknown_key_refused_and_an_outage_is_503(gateway):
    bob = user()
    rotated = SigningKey.new("ES256")
    stranger = SigningKey.new("RS256")
    refused = httpx.get(f"{gateway.url}/v1/sessions", headers=bearer(stranger.mint(bob)))
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert refused.json()["error"]["message"] == "the token is signed by an unknown key"

    gateway.idp.rotate(rotated)
    fetches = gateway.idp.fetches
    accepted = httpx.get(f"{gateway.url}/v1/sessions", headers=bearer(rotated.mint(bob)))
    assert accepted.status_code == 200, accepted.text
    assert gateway.idp.fetches == fetches + 1  # fetched for the new kid, then cached
    httpx.get(f"{gateway.url}/v1/sessions", headers=bearer(rotated.mint(bob)))
    assert gateway.idp.fetches == fetches + 1

    # The provider fails: a known key still checks (cached); a new kid cannot be checked.
    gateway.idp.failing = True
    try:
        cached = httpx.get(f"{gateway.url}/v1/sessions", headers=bearer(rotated.mint(bob)))
        assert cached.status_code == 200
        outage = httpx.get(
            f"{gateway.url}/v1/sessions", headers=bearer(SigningKey.new("RS256").mint(bob))
        )
    finally:
        gateway.idp.failing = False
    assert outage.status_code == 503
    assert outage.headers["Retry-After"] == "1"
    assert outage.json()["error"]["code"] == "auth_unavailable"
    assert gateway.idp.url in outage.json()["error"]["message"]


def test_service_and_operator_keys_through_the_cli_and_the_gateway(gateway):
    alice, tenant = user(), f"acme{uuid.uuid4().hex[:6]}"
    service_name, operator_name = f"backend-{alice}", f"oncall-{alice}"
    created = gateway.chatlog("apikey", "create", "--name", service_name, "--tenant", tenant)
    service_key = created.stdout.split("key: ", 1)[1].split()[0]
    assert service_key.startswith("clk_")
    assert "shown this once" in created.stderr
    operator_made = gateway.chatlog(
        "apikey", "create", "--name", operator_name, "--operator", "--json"
    )
    operator_key = json.loads(operator_made.stdout)["key"]

    listed = gateway.chatlog("apikey", "list", "--json")
    shown = {k["name"]: k for k in json.loads(listed.stdout)}
    assert shown[service_name]["tenant"] == tenant
    assert (shown[service_name]["scope"], shown[operator_name]["scope"]) == (
        "service",
        "operator",
    )
    assert set(shown[service_name]) == {"name", "tenant", "scope", "created_at"}

    # The back end acts for alice: her session, readable with her own token.
    as_alice = {**bearer(service_key), "Chatlog-User": alice}
    session, position = converse(gateway, as_alice, "sent by the back end for alice")
    her_token = bearer(gateway.rs256.mint(alice, tenant=tenant))
    mine = read(gateway, session, her_token, position)
    assert mine.status_code == 200
    assert [m["content"] for m in mine.json()["messages"]] == ["sent by the back end for alice"]
    by_header = read(gateway, session, {"X-API-Key": service_key, "Chatlog-User": alice})
    assert by_header.status_code == 200
    # Acting for another user of the tenant is acting as them: alice's session is not theirs.
    assert (
        read(gateway, session, {**bearer(service_key), "Chatlog-User": user()}).status_code == 404
    )
    # The same user id in another tenant is someone else.
    assert read(gateway, session, bearer(gateway.rs256.mint(alice))).status_code == 404

    # Only a service key names a user; a service key must name one.
    named = read(gateway, session, {**her_token, "Chatlog-User": alice})
    assert (named.status_code, named.json()["error"]["code"]) == (403, "forbidden")
    unnamed = httpx.get(f"{gateway.url}/v1/sessions", headers=bearer(service_key))
    assert unnamed.status_code == 422
    assert "Chatlog-User" in unnamed.json()["error"]["message"]

    # The operator's key reads and writes no user's data; readiness is theirs.
    for method, path in (
        ("GET", "/v1/sessions"),
        ("POST", "/v1/sessions"),
        ("GET", f"/v1/sessions/{session}/context"),
    ):
        answer = httpx.request(
            method,
            f"{gateway.url}{path}",
            headers={**bearer(operator_key), "Chatlog-User": alice},
        )
        assert answer.status_code == 403, f"{method} {path}: {answer.text}"
        assert "sent by the back end" not in answer.text
    assert httpx.get(f"{gateway.url}/readyz", headers=bearer(operator_key)).status_code == 200

    revoked = gateway.chatlog("apikey", "revoke", service_name)
    assert service_name in revoked.stdout
    after = read(gateway, session, as_alice)
    assert after.status_code == 401
    assert after.headers["WWW-Authenticate"] == "Bearer"
    assert "sent by the back end" not in after.text
    gateway.chatlog("apikey", "revoke", operator_name)
    listed = json.loads(gateway.chatlog("apikey", "list", "--json").stdout)
    assert service_name not in {k["name"] for k in listed}

    # The keys were printed once each, by their create, and nowhere else: not in the
    # other commands' outputs, the gateway's or the projector's logs, nor the keys file.
    printed = [created.stdout, operator_made.stdout]
    elsewhere = [o for o in gateway.outputs if o not in printed]
    elsewhere += [p.read_text(errors="replace") for p in gateway.logs.rglob("*") if p.is_file()]
    for key in (service_key, operator_key):
        assert sum(text.count(key) for text in printed) == 1
        assert not any(key in text for text in elsewhere)
        assert not any(key[len("clk_") :] in text for text in elsewhere)
    assert any("GET /v1/sessions" in text for text in elsewhere)  # the gateway's log was read


def test_the_api_key_curl_example_in_the_docs_runs(gateway):
    lines = run_docs_block(
        "http.md", "A back end acting for a user", gateway.settings, gateway=gateway.url
    )
    assert [s["title"] for s in json.loads(lines[0])["sessions"]] == ["Bot"]
    assert lines[-1] == "401"
