"""The masking rule (`chatlog.schemas.secrets`): which names are secrets, and URLs with
their credentials masked, alone, in lists and inside messages."""

from __future__ import annotations

import logging

import pytest

from chatlog.schemas.errors import ConfigError, StoreUnavailable
from chatlog.schemas.secrets import MASK, RedactingFilter, is_secret, redacted_url


@pytest.mark.parametrize(
    "name",
    [
        "llm_api_key",
        "master_key",
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "api_key",
        "apikey",
        "access_token",
        "PASSWORD",
        "schema_registry_basic_auth",  # user:password
        "basic.auth.user.info",  # the same, as the registry client's property
    ],
)
def test_names_of_secrets(name):
    assert is_secret(name)


@pytest.mark.parametrize(
    "name",
    [
        "keys_topic",
        "key_shred_within",
        "master_key_file",  # the path is shown; the file's content never is
        "summary_max_tokens",
        "tokenizer",
        "ssl.keystore.location",
        "sasl.oauthbearer.token.endpoint.url",
        "sasl.username",
        "sasl.mechanism",
        "redis_url",
        "redis_tls_key_file",  # a path, as master_key_file
        "schema_registry_key_file",
        "ssl.key.location",
    ],
)
def test_names_that_only_look_like_secrets(name):
    assert not is_secret(name)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://app:hunter2@r:6379/0", f"redis://app:{MASK}@r:6379/0"),
        ("rediss://:hunter2@r:6380", f"rediss://:{MASK}@r:6380"),
        ("https://tok3n@llm.example/v1", f"https://{MASK}@llm.example/v1"),
        # urllib and redis-py split at the last '@': an unquoted '@' is the password's.
        ("redis://app:p@ss@r/0", f"redis://app:{MASK}@r/0"),
        ("http://llm/v1?api_key=hunter2&model=x", f"http://llm/v1?api_key={MASK}&model=x"),
        ("redis://r/0?password=hunter2", f"redis://r/0?password={MASK}"),
        (
            "SASL_SSL://a:pw1@k1:9092,SASL_SSL://b:pw2@k2:9092",
            f"SASL_SSL://a:{MASK}@k1:9092,SASL_SSL://b:{MASK}@k2:9092",
        ),
        ("redis://r:6379/0", "redis://r:6379/0"),
        ("k1:9092,k2:9092", "k1:9092,k2:9092"),
        ("alice@example.com", "alice@example.com"),  # not a URL: a principal, an address
        (
            "Redis at 'redis://u:hunter2@r:1/0' did not answer",
            f"Redis at 'redis://u:{MASK}@r:1/0' did not answer",
        ),
    ],
)
def test_redacted_url_masks_credentials_and_keeps_the_rest(url, shown):
    assert redacted_url(url) == shown
    assert "hunter2" not in redacted_url(url)


def test_every_error_masks_urls_in_its_message_and_context():
    error = StoreUnavailable(
        "Redis at redis://u:hunter2@r:1/0 did not answer", url="redis://u:hunter2@r:1/0"
    )
    assert "hunter2" not in str(error)
    assert "hunter2" not in error.message
    assert "hunter2" not in repr(error.context)
    assert isinstance(ConfigError("x"), ValueError)


def test_the_filter_masks_a_url_passed_as_an_argument(caplog):
    log = logging.getLogger("tests.secrets")
    log.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger="tests.secrets"):
            log.info("HTTP Request: %s %s", "POST", "http://u:hunter2@llm/v1/chat")
            log.info("nothing to mask: %d", 3)
    finally:
        log.filters.clear()
    assert [r.getMessage() for r in caplog.records] == [
        f"HTTP Request: POST http://u:{MASK}@llm/v1/chat",
        "nothing to mask: 3",
    ]
