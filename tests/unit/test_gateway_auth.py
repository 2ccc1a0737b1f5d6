"""Who a gateway request is: the auth settings' rules, the API keys file, principals.

Pure apart from a temporary directory for the keys file: no server, no network.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from chatlog.gateway.api_keys import API_KEY_PREFIX, ApiKeys
from chatlog.gateway.http_errors import http_error
from chatlog.gateway.principals import Authenticator, Operator, Principal
from chatlog.gateway.tokens import TokenIssuer, TokenSettings, TokenVerifier
from chatlog.schemas.errors import (
    ConfigError,
    Forbidden,
    InvalidInput,
    JwksUnavailable,
    Unauthenticated,
)
from chatlog.settings import Settings

SECRET = "unit-test-secret-of-at-least-32-bytes!"
JWKS = "https://idp.example/.well-known/jwks.json"


# -- the settings ---------------------------------------------------------------------


def test_the_algorithms_default_by_key_source_and_parse_from_the_environment():
    assert TokenSettings(secret=SECRET).allowed == ("HS256",)
    assert TokenSettings(jwks_url=JWKS).allowed == ("RS256", "ES256")
    settings = Settings.from_env(
        {"CHATLOG_AUTH_JWKS_URL": JWKS, "CHATLOG_AUTH_ALGORITHMS": "ES256, RS256"}
    )
    assert settings.auth_algorithms == ("ES256", "RS256")
    # As chatlog config shows it, which is also how a child process is handed it.
    assert settings.describe()["CHATLOG_AUTH_ALGORITHMS"] == "ES256,RS256"
    assert TokenSettings.from_settings(settings).allowed == ("ES256", "RS256")


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"CHATLOG_AUTH_JWKS_URL": JWKS, "CHATLOG_AUTH_ALGORITHMS": "none"}, "never accepted"),
        ({"CHATLOG_AUTH_ALGORITHMS": "HS256,None"}, "never accepted"),
        ({"CHATLOG_AUTH_JWKS_URL": JWKS, "CHATLOG_AUTH_ALGORITHMS": "RS256,HS256"}, "RS256"),
        ({"CHATLOG_AUTH_SECRET": SECRET, "CHATLOG_AUTH_JWKS_URL": JWKS}, "both set"),
        ({"CHATLOG_AUTH_ALGORITHMS": "RS256"}, "with CHATLOG_AUTH_SECRET"),
        ({"CHATLOG_AUTH_JWKS_URL": "http://idp.example/jwks"}, "plain http"),
        ({"CHATLOG_AUTH_JWKS_URL": "file:///etc/keys"}, "https://"),
        ({"CHATLOG_AUTH_ALGORITHMS": ","}, "empty"),
    ],
)
def test_auth_settings_that_would_weaken_the_check_are_refused(environ, problem):
    with pytest.raises(ConfigError, match=problem):
        Settings.from_env(environ)


def test_the_same_rules_hold_for_token_settings_built_directly():
    with pytest.raises(ConfigError, match="never accepted"):
        TokenSettings(secret=SECRET, algorithms=("none",))
    with pytest.raises(ConfigError, match="both set"):
        TokenSettings(secret=SECRET, jwks_url=JWKS)
    assert SECRET not in repr(TokenSettings(secret=SECRET))


def test_chatlog_token_cannot_mint_with_a_jwks_and_the_verifier_needs_a_key():
    with pytest.raises(ConfigError, match="identity provider's tokens"):
        TokenIssuer(TokenSettings(jwks_url=JWKS))
    with pytest.raises(ConfigError, match=r"CHATLOG_AUTH_SECRET is not set.*JWKS_URL"):
        TokenVerifier(TokenSettings())


def test_http_answers_to_forbidden_and_to_keys_that_cannot_be_fetched():
    refused = http_error(Forbidden("an operator's API key reads no user's data"))
    assert (refused.status, refused.body()["error"]["code"]) == (403, "forbidden")
    assert "WWW-Authenticate" not in refused.headers
    down = http_error(
        JwksUnavailable("no answer", url="https://svc:pa55@idp.example/jwks?token=abc")
    )
    assert (down.status, down.headers) == (503, {"Retry-After": "1"})
    message = down.body()["error"]["message"]
    assert "idp.example/jwks" in message
    assert "pa55" not in message
    assert "abc" not in message


# -- principals -----------------------------------------------------------------------


def test_principals_say_their_kind_and_name_the_actor():
    assert (Principal("alice", "acme").kind, str(Principal("alice", "acme"))) == (
        "user",
        "jwt:acme/alice",
    )
    via = Principal("alice", "acme", via="backend")
    assert (via.kind, str(via)) == ("service", "apikey:backend->acme/alice")
    assert (Operator("oncall").kind, str(Operator("oncall"))) == ("operator", "operator:oncall")


@pytest.fixture
def keys(tmp_path) -> ApiKeys:
    return ApiKeys(tmp_path / "state" / "api-keys.json")


@pytest.fixture
def auth(keys) -> Authenticator:
    return Authenticator(TokenVerifier(TokenSettings(secret=SECRET)), keys)


def test_a_service_key_acts_for_the_user_it_names_in_its_own_tenant(auth, keys):
    key, _ = keys.create("backend", tenant="acme")
    for bearer, header in ((key, None), (None, key)):
        principal = auth.user(bearer=bearer, api_key=header, acting_user="alice")
        assert principal == Principal("alice", "acme", via="backend")
    with pytest.raises(InvalidInput, match="Chatlog-User header"):
        auth.user(bearer=key, api_key=None, acting_user=None)
    with pytest.raises(InvalidInput, match="Chatlog-User contains"):
        auth.user(bearer=key, api_key=None, acting_user="alice/../bob")
    with pytest.raises(InvalidInput, match="one credential"):
        auth.user(bearer=key, api_key=key, acting_user="alice")


def test_only_a_service_key_may_name_a_user(auth):
    token = TokenIssuer(TokenSettings(secret=SECRET)).mint("alice", tenant="acme")
    assert auth.user(bearer=token, api_key=None, acting_user=None) == Principal("alice", "acme")
    with pytest.raises(Forbidden, match="only a service API key may name a user"):
        auth.user(bearer=token, api_key=None, acting_user="bob")
    # Authentication comes first: a bad token is 401 whatever it names.
    with pytest.raises(Unauthenticated):
        auth.user(bearer="eyJ.garbage.x", api_key=None, acting_user="bob")
    # A JWT sent as X-API-Key is no API key.
    with pytest.raises(Unauthenticated, match="API key is not valid"):
        auth.user(bearer=None, api_key=token, acting_user=None)


def test_an_operator_key_is_an_operator_refused_on_user_data(auth, keys):
    key, _ = keys.create("oncall", tenant="default", scope="operator")
    assert auth.authenticate(bearer=key, api_key=None, acting_user=None) == Operator("oncall")
    with pytest.raises(Forbidden, match="operator"):
        auth.user(bearer=key, api_key=None, acting_user="alice")


def test_no_unknown_or_revoked_key_passes_and_no_error_quotes_one(auth, keys):
    key, _ = keys.create("backend", tenant="acme")
    guesses = [API_KEY_PREFIX + "x" * 43, key[:-1], key + "x", API_KEY_PREFIX]
    for guess in guesses:
        with pytest.raises(Unauthenticated) as refused:
            auth.user(bearer=guess, api_key=None, acting_user="alice")
        assert key not in str(refused.value)
        assert "xxxx" not in str(refused.value)
    keys.revoke("backend")
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        auth.user(bearer=key, api_key=None, acting_user="alice")
    with pytest.raises(Unauthenticated, match="no credentials"):
        auth.user(bearer=None, api_key=None, acting_user="alice")


# -- the keys file --------------------------------------------------------------------


def test_the_file_is_private_and_holds_only_hashes(keys):
    key, stored = keys.create("backend", tenant="acme")
    assert key.startswith(API_KEY_PREFIX)
    assert len(key) == len(API_KEY_PREFIX) + 43
    text = keys.path.read_text()
    assert key not in text
    assert key[len(API_KEY_PREFIX) :] not in text
    assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600
    entry = json.loads(text)["keys"][0]
    assert set(entry) == {"name", "tenant", "scope", "sha256", "created_at_ms"}
    assert [k.shown() for k in keys.stored()] == [stored.shown()]
    assert "sha256" not in stored.shown()
    other, _ = keys.create("bot", tenant="acme")
    assert other != key


def test_names_are_unique_and_revoking_an_unknown_one_says_which_exist(keys):
    keys.create("backend", tenant="acme")
    with pytest.raises(InvalidInput, match="named backend exists"):
        keys.create("backend", tenant="other")
    with pytest.raises(InvalidInput, match=r"no API key named nope \(keys: backend\)"):
        keys.revoke("nope")
    with pytest.raises(InvalidInput, match="--tenant"):
        keys.create("x", tenant="a b")


def test_a_reader_sees_keys_written_by_another_process_at_once(keys):
    gateway = ApiKeys(keys.path)  # another instance: as `chatlog serve` beside the CLI
    assert gateway.stored() == []
    key, _ = keys.create("backend", tenant="acme")
    assert gateway.check(key).name == "backend"
    keys.revoke("backend")
    with pytest.raises(Unauthenticated):
        gateway.check(key)


def test_a_keys_file_others_can_write_or_that_is_not_one_is_refused(keys):
    keys.create("backend", tenant="acme")
    os.chmod(keys.path, 0o666)
    with pytest.raises(ConfigError, match=r"writable by others.*chmod 600"):
        keys.stored()
    os.chmod(keys.path, 0o600)
    keys.path.write_text("[]")
    with pytest.raises(ConfigError, match="not an API keys file"):
        ApiKeys(keys.path).stored()
