"""Secrets never printed (issue 15, item 5): distinctive secrets are planted in the
environment, then every output that could show them is searched for each of them:
`chatlog config` (people and ``--json``), the CLI's stderr, ``repr``/``str`` of
`Settings`, the `ConfigError` of a bad value beside them, the errors raised when the
Redis, the Kafka and the LLM at those URLs refuse or do not answer (real servers where
there is one), and every log record and byte written to the terminal meanwhile."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from chatlog import wiring
from chatlog.processors.openai_summarizer import OpenAISummarizer
from chatlog.processors.summarizers import SummaryRequest
from chatlog.producers.kafka_producer import ConversationProducer
from chatlog.projections.view import Message
from chatlog.schemas.errors import (
    BrokerUnavailable,
    ChatlogError,
    ConfigError,
    StoreUnavailable,
    SummarizerError,
)
from chatlog.schemas.master_keys import new_master_key
from chatlog.settings import Settings
from tests.llm_stub import LlmStub, ok, status
from tests.processes import ROOT

pytestmark = pytest.mark.integration

MASTER_KEY = new_master_key("planted-1")
# Each is distinctive, so finding one anywhere can only mean it leaked.
SECRETS = {
    "redis password": "s3cretRedisPW-4b1d",
    "schema registry password": "s3cretRegistryPW-77c2",
    "schema registry basic auth": "s3cretRegistryBasic-3a7f",
    "LLM URL password": "s3cretLlmProxyPW-0e9a",
    "LLM API key": "sk-planted-llm-key-9f3e71",
    "OPENAI_API_KEY": "sk-planted-openai-fallback-c41d",
    "SASL password": "s3cretSaslPW-d00d",
    "SSL key password": "s3cretSslKeyPW-5e5e",
    "OAuth client secret": "s3cretOauthClient-a11c",
    "master key": MASTER_KEY.partition(":")[2],
}
CLOSED = "127.0.0.1:1"  # nothing listens on port 1


def planted_env(*, redis: str = CLOSED, kafka: str = CLOSED) -> dict[str, str]:
    """CHATLOG_* variables holding every planted secret, at the given addresses."""
    return {
        "CHATLOG_REDIS_URL": f"redis://chatlog:{SECRETS['redis password']}@{redis}/0",
        "CHATLOG_KAFKA_BOOTSTRAP": kafka,
        "CHATLOG_SCHEMA_REGISTRY_URL": (
            f"http://registry:{SECRETS['schema registry password']}@{CLOSED}"
        ),
        "CHATLOG_LLM_BASE_URL": f"http://proxy:{SECRETS['LLM URL password']}@{CLOSED}/v1",
        "CHATLOG_LLM_API_KEY": SECRETS["LLM API key"],
        "CHATLOG_MASTER_KEY": MASTER_KEY,
        "CHATLOG_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CHATLOG_KAFKA__SASL_MECHANISM": "PLAIN",
        "CHATLOG_KAFKA__SASL_USERNAME": "chatlog",
        "CHATLOG_KAFKA__SASL_PASSWORD": SECRETS["SASL password"],
        "CHATLOG_KAFKA__SSL_KEY_PASSWORD": SECRETS["SSL key password"],
        "CHATLOG_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET": SECRETS["OAuth client secret"],
    }


def assert_no_secret(where: str, text: str) -> None:
    leaked = [name for name, secret in SECRETS.items() if secret in text]
    assert not leaked, f"{where} shows the {', '.join(leaked)}:\n{text}"


def everything_about(error: BaseException) -> str:
    """What a person or a log could see of `error`: its message, repr, context and the
    whole traceback with its causes (the library errors it was raised from)."""
    parts = [str(error), repr(error), *traceback.format_exception(error)]
    if isinstance(error, ChatlogError):
        parts.append(repr(error.context))
    return "\n".join(parts)


def cli(env: dict[str, str], *args: str, tmp_path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHATLOG_")}
    # The state dir: no local stack's addresses or key file fill in for the planted ones.
    planted = {"CHATLOG_STATE_DIR": str(tmp_path), "OPENAI_API_KEY": SECRETS["OPENAI_API_KEY"]}
    return subprocess.run(
        [sys.executable, "-m", "chatlog.cli", *args],
        capture_output=True,
        text=True,
        env={**base, **env, **planted},
        cwd=ROOT,
        timeout=120,
        check=False,
    )


@pytest.fixture
def planted_openai_key(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRETS["OPENAI_API_KEY"])


@pytest.fixture
def every_log_record(caplog) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of every logger, DEBUG included (librdkafka's, httpx's, chatlog's)."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


def test_chatlog_config_masks_every_secret_and_keeps_the_rest(tmp_path):
    # Basic auth as its own setting (beside the URL's, which the registry client would
    # refuse, so planted here only).
    basic_auth = f"reader:{SECRETS['schema registry basic auth']}"
    env = {**planted_env(), "CHATLOG_SCHEMA_REGISTRY_BASIC_AUTH": basic_auth}
    human = cli(env, "config", tmp_path=tmp_path)
    as_json = cli(env, "--verbose", "config", "--json", tmp_path=tmp_path)
    assert human.returncode == as_json.returncode == 0, human.stderr + as_json.stderr
    for where, result in (("chatlog config", human), ("chatlog config --json", as_json)):
        assert_no_secret(f"{where} stdout", result.stdout)
        assert_no_secret(f"{where} stderr", result.stderr)
    shown = json.loads(as_json.stdout)
    # Masked, not dropped: the user and host still tell a person which server is meant.
    assert shown["CHATLOG_REDIS_URL"] == f"redis://chatlog:***@{CLOSED}/0"
    assert shown["CHATLOG_SCHEMA_REGISTRY_URL"] == f"http://registry:***@{CLOSED}"
    assert shown["CHATLOG_LLM_BASE_URL"] == f"http://proxy:***@{CLOSED}/v1"
    for name in (
        "CHATLOG_LLM_API_KEY",
        "CHATLOG_MASTER_KEY",
        "CHATLOG_KAFKA__SASL_PASSWORD",
        "CHATLOG_KAFKA__SSL_KEY_PASSWORD",
        "CHATLOG_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET",
        "CHATLOG_SCHEMA_REGISTRY_BASIC_AUTH",
    ):
        assert shown[name] == "***", name
    assert shown["CHATLOG_KAFKA__SASL_USERNAME"] == "chatlog"
    assert f"CHATLOG_REDIS_URL: redis://chatlog:***@{CLOSED}/0" in human.stdout.splitlines()


def test_repr_str_and_config_errors_mask_every_secret(tmp_path, planted_openai_key):
    env = {**planted_env(), "CHATLOG_STATE_DIR": str(tmp_path)}
    settings = Settings.from_env(env)
    assert settings.redis_url.endswith(f"{SECRETS['redis password']}@{CLOSED}/0")  # kept
    assert_no_secret("repr(Settings)", repr(settings))
    assert_no_secret("str(Settings)", str(settings))
    assert_no_secret("f'{settings!r}'", f"{settings!r} {settings}")
    assert "redis_url='redis://chatlog:***@127.0.0.1:1/0'" in repr(settings)

    bad_values = {
        "a bad window": {"CHATLOG_WINDOW": "many"},
        "a Redis URL of the wrong scheme": {
            "CHATLOG_REDIS_URL": f"http://chatlog:{SECRETS['redis password']}@{CLOSED}"
        },
        "a bad partition count": {"CHATLOG_PARTITIONS": "0", "CHATLOG_LINGER_MS": "-1"},
    }
    for case, bad in bad_values.items():
        with pytest.raises(ConfigError) as refused:
            Settings.from_env({**env, **bad})
        assert "invalid settings" in refused.value.message
        assert_no_secret(f"the ConfigError of {case}", everything_about(refused.value))
    with pytest.raises(ConfigError, match=r"CHATLOG_REDIS_URL='http://chatlog:\*\*\*@"):
        Settings.from_env({**env, **bad_values["a Redis URL of the wrong scheme"]})

    # Built directly, not through from_env: pydantic's own message.
    with pytest.raises(ValidationError) as invalid:
        Settings(
            redis_url=f"http://chatlog:{SECRETS['redis password']}@h",
            llm_api_key=SECRETS["LLM API key"],
            window=0,
        )
    assert_no_secret("pydantic's ValidationError", everything_about(invalid.value))

    damaged = Settings.from_env({**env, "CHATLOG_MASTER_KEY": MASTER_KEY[:-4]})
    with pytest.raises(ConfigError) as refused:
        wiring.key_provider(damaged)
    assert_no_secret("the ConfigError of a damaged master key", everything_about(refused.value))
    assert SECRETS["master key"][:-4] not in everything_about(refused.value)


def test_a_reader_refused_or_unanswered_by_redis_shows_no_password(
    redis_url, tmp_path, every_log_record, capfd
):
    real = urlsplit(redis_url).netloc
    raised = []
    # The real Redis, refusing a user it does not know (WRONGPASS); then no Redis at all.
    # A refusal is a setting to fix (ConfigError); no answer is an outage (StoreUnavailable).
    for address, error in ((real, ConfigError), (CLOSED, StoreUnavailable)):
        env = {**planted_env(redis=address), "CHATLOG_STATE_DIR": str(tmp_path)}
        reader = wiring.reader(Settings.from_env(env))
        with pytest.raises(error) as refused:
            reader.context("s-secrets", user_id="u1")
        raised.append(refused.value)
    assert "invalid username-password pair" in str(raised[0])  # the real refusal
    assert "Connection refused" in str(raised[1])
    for error in raised:
        assert_no_secret(type(error).__name__, everything_about(error))
    assert_no_secret("the logs", every_log_record.text)
    assert_no_secret("the terminal", "".join(capfd.readouterr()))


def test_a_producer_refused_or_unanswered_by_kafka_shows_no_secret(
    kafka, tmp_path, every_log_record, capfd
):
    raised = []
    # The real broker (a plaintext listener) refuses the SASL handshake; then no broker.
    for address in (kafka.bootstrap, CLOSED):
        env = {**planted_env(kafka=address), "CHATLOG_STATE_DIR": str(tmp_path)}
        settings = Settings.from_env(env, delivery_timeout_s=3)
        producer = ConversationProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            topic=settings.topic,
            config=settings.kafka,
            delivery_timeout=settings.delivery_timeout_s,
            check_topic=False,
            flush_on_sigterm=False,
        )
        try:
            with pytest.raises(BrokerUnavailable) as unavailable:
                producer.check(timeout=3)
        finally:
            producer.close(timeout=1)
        raised.append(unavailable.value)
    for error in raised:
        assert_no_secret("BrokerUnavailable", everything_about(error))
    assert_no_secret("the logs", every_log_record.text)
    assert_no_secret("the terminal", "".join(capfd.readouterr()))


def test_the_llm_client_and_httpx_logs_show_no_secret(tmp_path, every_log_record):
    request = SummaryRequest("s1", None, (Message(1, "m1", "user", "hello", 1_000),), 100)
    with LlmStub() as stub:
        stub.script(ok(), status(401))
        address = urlsplit(stub.base_url).netloc
        base_url = f"http://proxy:{SECRETS['LLM URL password']}@{address}/v1"

        async def twice() -> BaseException:
            async with OpenAISummarizer(
                base_url=base_url, api_key=SECRETS["LLM API key"], model="m", timeout=5
            ) as summarizer:
                await summarizer.summarize(request)  # answered: httpx logs the request
                with pytest.raises(SummarizerError) as refused:
                    await summarizer.summarize(request)
                return refused.value

        refused = asyncio.run(twice())
    assert_no_secret("the LLM's refusal", everything_about(refused))
    requests = [
        r.getMessage() for r in every_log_record.records if r.msg.startswith("HTTP Request:")
    ]
    assert len(requests) == 2  # httpx's INFO line of each call, kept, its URL masked
    assert all(f"http://proxy:***@{address}/v1" in line for line in requests)
    assert_no_secret("the logs", every_log_record.text)


def test_cli_errors_and_verbose_logs_show_no_secret(settings, redis_url, tmp_path):
    planted = planted_env(redis=urlsplit(redis_url).netloc, kafka=settings.kafka_bootstrap)
    topics = {
        Settings.env_name(name): getattr(settings, name)
        for name in ("topic", "dlq_topic", "keys_topic", "audit_topic", "redis_prefix")
    }
    env = {**planted, **topics}
    for args in (
        ("--verbose", "context", "s-secrets", "--user", "u1"),
        ("--verbose", "config", "--json"),
    ):
        result = cli({**env, "CHATLOG_WINDOW": "0"}, *args, tmp_path=tmp_path)
        assert result.returncode == 1  # the ConfigError of the window, beside the secrets
        assert "CHATLOG_WINDOW='0'" in result.stderr
        assert_no_secret(f"chatlog {' '.join(args)}", result.stdout + result.stderr)

    # The real broker, a plaintext listener, fails the planted SASL handshake: librdkafka
    # logs its attempts (shown with --verbose), then the CLI gives up.
    handshake = cli(env, "--verbose", "context", "s-secrets", "--user", "u1", tmp_path=tmp_path)
    assert handshake.returncode == 75, handshake.stderr
    assert "no Kafka broker answered" in handshake.stderr
    assert_no_secret("chatlog context (SASL refused)", handshake.stdout + handshake.stderr)

    # Kafka answers (no SASL), the real Redis refuses the planted user and password.
    plaintext = {k: v for k, v in env.items() if not k.startswith("CHATLOG_KAFKA__")}
    read = cli(plaintext, "--verbose", "context", "s-secrets", "--user", "u1", tmp_path=tmp_path)
    assert read.returncode == 1, read.stderr  # a setting to fix, not an outage to wait out
    assert "Redis refused chatlog's credentials" in read.stderr
    assert_no_secret("chatlog context (Redis refused)", read.stdout + read.stderr)
