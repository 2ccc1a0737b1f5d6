"""The gateway's bearer tokens and its error table: pure, no server."""

from __future__ import annotations

import time

import jwt
import pytest

from chatlog.gateway.http_errors import http_error
from chatlog.gateway.tokens import Principal, TokenIssuer, TokenSettings, TokenVerifier
from chatlog.schemas.errors import (
    BrokerUnavailable,
    ConfigError,
    Erased,
    InvalidId,
    OwnershipError,
    PublishTimeout,
    ReadTimeout,
    SessionNotFound,
    Unauthenticated,
)
from chatlog.settings import Settings

SECRET = "unit-test-secret-of-at-least-32-bytes!"


def verifier(**overrides: str) -> TokenVerifier:
    return TokenVerifier(TokenSettings(**{"secret": SECRET, **overrides}))


def issuer(**overrides: str) -> TokenIssuer:
    return TokenIssuer(TokenSettings(**{"secret": SECRET, **overrides}))


def test_a_minted_token_names_its_user_and_tenant():
    assert verifier().verify(issuer().mint("alice")) == Principal("alice", "default")
    assert verifier().verify(issuer().mint("bob", tenant="acme")) == Principal("bob", "acme")


def test_the_tenant_claim_is_the_configured_one():
    token = issuer(tenant_claim="org").mint("bob", tenant="acme")
    assert verifier(tenant_claim="org").verify(token).tenant == "acme"
    # Read with the default claim name, the token names no tenant: the default one.
    assert verifier().verify(token).tenant == "default"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: issuer().mint("alice", ttl_s=60, now=time.time() - 3600), "expired"),
        (lambda: issuer().mint("alice", now=time.time() + 3600), "not valid yet"),
        (lambda: issuer(audience="other").mint("alice"), "another audience"),
        (lambda: issuer(issuer="other").mint("alice"), "another issuer"),
        (lambda: issuer(secret="x" * 40).mint("alice"), "invalid"),
        (lambda: "not.a.jwt", "invalid"),
        (lambda: "", "no bearer token"),
    ],
)
def test_a_token_that_does_not_check_is_refused_saying_why(token, reason):
    with pytest.raises(Unauthenticated, match=reason):
        verifier().verify(token())


def test_a_token_without_exp_or_with_another_algorithm_is_refused():
    claims = {"iss": "chatlog", "aud": "chatlog", "sub": "alice"}
    with pytest.raises(Unauthenticated, match="no exp claim"):
        verifier().verify(jwt.encode(claims, SECRET, algorithm="HS256"))
    # "none" would let anyone write any sub: the verifier fixes the algorithm itself.
    unsigned = jwt.encode({**claims, "exp": time.time() + 60}, None, algorithm="none")
    with pytest.raises(Unauthenticated, match="invalid"):
        verifier().verify(unsigned)


def test_a_sub_that_is_no_valid_id_is_refused():
    token = jwt.encode(
        {"iss": "chatlog", "aud": "chatlog", "sub": "a:b", "exp": time.time() + 60},
        SECRET,
        algorithm="HS256",
    )
    with pytest.raises(Unauthenticated, match="sub is no valid id"):
        verifier().verify(token)


def test_the_secret_is_required_long_and_never_echoed():
    with pytest.raises(ConfigError, match="CHATLOG_AUTH_SECRET is not set"):
        TokenVerifier.from_settings(Settings())
    with pytest.raises(ConfigError, match="at least 32 bytes") as refused:
        Settings.from_env({"CHATLOG_AUTH_SECRET": "short-and-secret"})
    assert "short-and-secret" not in str(refused.value)
    settings = Settings.from_env({"CHATLOG_AUTH_SECRET": SECRET})
    assert settings.describe()["CHATLOG_AUTH_SECRET"] == "***"
    assert SECRET not in repr(settings)
    assert TokenVerifier.from_settings(settings).verify(
        TokenIssuer.from_settings(settings).mint("alice")
    ) == Principal("alice", "default")


def test_another_users_session_and_a_missing_one_answer_alike():
    answers = [
        http_error(
            OwnershipError("session s-1 belongs to another user, not bob", session_id="s-1")
        ),
        http_error(SessionNotFound("no session s-2", session_id="s-2")),
        http_error(Erased("session s-3 was erased", session_id="s-3")),
    ]
    assert {(a.status, str(a.body())) for a in answers} == {
        (404, str({"error": {"code": "not_found", "message": "no such session"}}))
    }


def test_the_error_table():
    assert http_error(Unauthenticated("the token has expired")).headers == {
        "WWW-Authenticate": "Bearer"
    }
    invalid = http_error(InvalidId("session_id contains ':'", field="session_id"))
    assert (invalid.status, invalid.body()["error"]["message"]) == (
        422,
        "session_id contains ':'",
    )
    unavailable = http_error(BrokerUnavailable("no broker answered at 10.0.0.7:9092"))
    assert (unavailable.status, unavailable.headers) == (503, {"Retry-After": "1"})
    assert "10.0.0.7" not in str(unavailable.body())  # no internals
    assert http_error(ReadTimeout("not projected")).status == 504
    assert http_error(PublishTimeout("unacknowledged")).body()["error"]["code"] == (
        "outcome_unknown"
    )
    internal = http_error(KeyError("redis://:hunter2@host"))
    assert (internal.status, internal.body()) == (
        500,
        {"error": {"code": "internal", "message": "internal error"}},
    )
