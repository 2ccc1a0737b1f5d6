"""Tokens of an identity provider, checked against its real JWKS endpoint: an HTTP server
on a loopback port (`tests.jwks_server`), RS256 and ES256 keys made for the test."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from jwt.utils import base64url_encode

from chatlog.gateway.principals import Principal
from chatlog.gateway.tokens import TokenSettings, TokenVerifier
from chatlog.schemas.errors import JwksUnavailable, Unauthenticated
from tests.jwks_server import SigningKey, running_jwks

pytestmark = pytest.mark.integration


def verifier(url: str, **overrides) -> TokenVerifier:
    return TokenVerifier(TokenSettings(jwks_url=url, **{"jwks_refresh_s": 0.0, **overrides}))


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_a_token_signed_by_a_published_key_is_accepted_and_the_keys_are_cached(algorithm):
    key = SigningKey.new(algorithm)
    with running_jwks(key) as idp:
        check = verifier(idp.url)
        assert check.verify(key.mint("alice", tenant="acme")) == Principal("alice", "acme")
        assert check.verify(key.mint("bob")) == Principal("bob", "default")
        assert idp.fetches == 1  # the set is cached, not fetched per token
        with pytest.raises(Unauthenticated, match="another audience"):
            check.verify(key.mint("alice", audience="elsewhere"))
        with pytest.raises(Unauthenticated, match="expired"):
            check.verify(key.mint("alice", ttl_s=60, now=time.time() - 3600))


def test_a_rotated_key_is_fetched_on_its_first_token_and_an_unknown_one_refused():
    old, new = SigningKey.new("RS256"), SigningKey.new("ES256")
    with running_jwks(old) as idp:
        check = verifier(idp.url)
        assert check.verify(old.mint("alice")).user_id == "alice"
        idp.rotate(new)  # published after the gateway cached the set
        assert check.verify(new.mint("alice")).user_id == "alice"
        assert idp.fetches == 2  # the unknown kid made it fetch the set again
        assert check.verify(old.mint("bob")).user_id == "bob"  # the old key still works

        stranger = SigningKey.new("RS256")  # never published
        with pytest.raises(Unauthenticated, match="unknown key"):
            check.verify(stranger.mint("alice"))
        # A key with a published kid but another key's signature: the signature fails.
        forged = jwt.encode(
            {"iss": "chatlog", "aud": "chatlog", "sub": "alice", "exp": time.time() + 60},
            stranger.private,
            algorithm="RS256",
            headers={"kid": old.kid},
        )
        with pytest.raises(Unauthenticated, match="invalid"):
            check.verify(forged)


def test_unknown_kids_refetch_at_most_once_per_refresh_interval():
    key = SigningKey.new("ES256")
    with running_jwks(key) as idp:
        check = verifier(idp.url, jwks_refresh_s=30.0)
        check.verify(key.mint("alice"))
        for _ in range(5):
            with pytest.raises(Unauthenticated, match="unknown key"):
                check.verify(SigningKey.new("ES256").mint("alice"))
        # The first fetch starts the interval: no token with a made-up kid gets through
        # to the identity provider within it.
        assert idp.fetches == 1


def test_no_algorithm_outside_the_list_passes_not_hs256_with_the_public_key_nor_none():
    key = SigningKey.new("RS256")
    claims = {"iss": "chatlog", "aud": "chatlog", "sub": "mallory", "exp": time.time() + 60}
    public_pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The classic confusion: HMAC with the public key (which anyone can fetch) as the
    # secret. Made by hand: PyJWT itself refuses to sign so.
    signing_input = b".".join(
        base64url_encode(json.dumps(part).encode())
        for part in ({"alg": "HS256", "typ": "JWT", "kid": key.kid}, claims)
    )
    mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    confused = (signing_input + b"." + base64url_encode(mac)).decode()
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": key.kid})
    with running_jwks(key) as idp:
        check = verifier(idp.url)
        for token in (confused, unsigned):
            with pytest.raises(Unauthenticated, match="invalid"):
                check.verify(token)
        # Only ES256 allowed: a valid RS256 token of a published key is refused too.
        with pytest.raises(Unauthenticated, match="invalid"):
            verifier(idp.url, algorithms=("ES256",)).verify(key.mint("alice"))


def test_a_jwks_that_fails_or_hangs_is_unavailable_naming_its_url_within_the_timeout():
    key = SigningKey.new("RS256")
    with running_jwks(key) as idp:
        idp.failing = True
        with pytest.raises(JwksUnavailable, match="could not be fetched") as failed:
            verifier(idp.url).verify(key.mint("alice"))
        assert failed.value.context["url"] == idp.url
    # A server that takes the connection and never answers: the fetch's timeout bounds it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://user:hunter2@127.0.0.1:{silent.getsockname()[1]}/jwks.json"
        began = time.monotonic()
        with pytest.raises(JwksUnavailable) as hung:
            verifier(url, jwks_timeout_s=0.5).verify(key.mint("alice"))
        assert time.monotonic() - began < 5
        assert "hunter2" not in str(hung.value)
        assert "127.0.0.1" in str(hung.value)
