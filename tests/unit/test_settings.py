"""Settings: read once from CHATLOG_* variables; anything unknown or invalid is refused."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from chatlog import wiring
from chatlog.projections.context import approx_tokens
from chatlog.schemas.errors import ConfigError, MissingExtra
from chatlog.schemas.master_keys import new_master_key
from chatlog.settings import Settings
from dev.services.state import (
    KafkaState,
    RedisState,
    StackState,
    ensure_master_key,
    write_state,
)


def test_defaults_when_nothing_is_set(tmp_path):
    settings = Settings.from_env({"CHATLOG_STATE_DIR": str(tmp_path)})
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.topic == "chatlog.events"
    assert settings.partitions == 6
    assert settings.kafka == {}
    # Static membership: stable across a restart on the same host, fast to fail over.
    assert settings.instance_id == socket.gethostname()
    assert settings.session_timeout_s == 10.0


def test_values_are_read_and_typed(tmp_path):
    settings = Settings.from_env(
        {
            "CHATLOG_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
            "CHATLOG_REDIS_URL": "rediss://r:6380/2",
            "CHATLOG_PARTITIONS": "12",
            "CHATLOG_DELIVERY_TIMEOUT_S": "2.5",
            "CHATLOG_STATE_DIR": str(tmp_path),
            "HOME": "/ignored",
        }
    )
    assert settings.kafka_bootstrap == "k1:9092,k2:9092"
    assert settings.redis_url == "rediss://r:6380/2"
    assert settings.partitions == 12
    assert settings.delivery_timeout_s == 2.5
    assert settings.state_dir == Path(tmp_path)


def test_kafka_properties_pass_through():
    settings = Settings.from_env(
        {
            "CHATLOG_KAFKA_BOOTSTRAP": "k:9092",
            "CHATLOG_REDIS_URL": "redis://r",
            "CHATLOG_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "CHATLOG_KAFKA__SASL_MECHANISM": "PLAIN",
            "CHATLOG_KAFKA__SASL_PASSWORD": "hunter2",
        }
    )
    assert settings.kafka == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.password": "hunter2",
    }
    shown = settings.describe()
    assert shown["CHATLOG_KAFKA__SASL_PASSWORD"] == "***"
    assert shown["CHATLOG_KAFKA__SASL_MECHANISM"] == "PLAIN"


def test_unknown_setting_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown setting CHATLOG_PARTITION: did you mean"):
        Settings.from_env({"CHATLOG_PARTITION": "3"})


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CHATLOG_PARTITIONS", "0", "CHATLOG_PARTITIONS='0': Input should be greater"),
        ("CHATLOG_PARTITIONS", "many", "CHATLOG_PARTITIONS='many'"),
        ("CHATLOG_TOPIC", "chat log", "not a valid Kafka topic name"),
        ("CHATLOG_REDIS_URL", "localhost:6379", "must start with redis://"),
        ("CHATLOG_DELIVERY_TIMEOUT_S", "-1", "CHATLOG_DELIVERY_TIMEOUT_S='-1'"),
        ("CHATLOG_INSTANCE_ID", "web 1", "CHATLOG_INSTANCE_ID='web 1': Value error, 'web 1' is"),
        ("CHATLOG_SESSION_TIMEOUT_S", "5", "group.min.session.timeout.ms"),
        ("CHATLOG_SESSION_TIMEOUT_S", "61", "CHATLOG_SESSION_TIMEOUT_S='61'"),
    ],
)
def test_invalid_values_name_the_variable(name, value, expected):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"CHATLOG_KAFKA_BOOTSTRAP": "k:1", name: value})
    assert expected in str(caught.value)


def test_a_redis_timeout_that_would_outlast_reads_is_refused_naming_both_settings():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {"CHATLOG_KAFKA_BOOTSTRAP": "k:1", "CHATLOG_REDIS_URL": "redis://r:1/0"},
            redis_timeout_s=5,
        )
    assert "CHATLOG_REDIS_TIMEOUT_S=5 must be below CHATLOG_READ_TIMEOUT_S=5" in str(caught.value)


def test_redis_clients_are_bounded_by_the_redis_timeout():
    settings = Settings(kafka_bootstrap="k:1", redis_url="redis://r:1/0", redis_timeout_s=0.25)
    for client in (wiring.redis_client(settings), wiring.async_redis_client(settings)):
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.25


@pytest.mark.parametrize(
    ("variable", "setting"),
    [
        ("CHATLOG_KAFKA__GROUP_INSTANCE_ID", "CHATLOG_INSTANCE_ID"),
        ("CHATLOG_KAFKA__SESSION_TIMEOUT_MS", "CHATLOG_SESSION_TIMEOUT_S"),
    ],
)
def test_group_membership_is_refused_as_a_kafka_property_naming_the_setting(variable, setting):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "CHATLOG_KAFKA_BOOTSTRAP": "k:1",
                variable: "x",
                "CHATLOG_KAFKA__SASL_PASSWORD": "p4ss",
            }
        )
    assert f"set by {setting}" in str(caught.value)
    assert "p4ss" not in str(caught.value)


def test_local_stack_addresses_fill_what_is_unset(tmp_path):
    stack = _stack(tmp_path)
    write_state(stack, state_dir=tmp_path)
    settings = Settings.from_env({"CHATLOG_STATE_DIR": str(tmp_path)})
    assert settings.kafka_bootstrap == "127.0.0.1:39092"
    assert settings.redis_url == "redis://127.0.0.1:36379/0"
    # An explicit variable still wins over the local stack.
    explicit = Settings.from_env(
        {"CHATLOG_STATE_DIR": str(tmp_path), "CHATLOG_KAFKA_BOOTSTRAP": "elsewhere:9092"}
    )
    assert explicit.kafka_bootstrap == "elsewhere:9092"
    assert explicit.redis_url == "redis://127.0.0.1:36379/0"


def test_an_unknown_tokenizer_is_refused_naming_the_setting():
    settings = Settings.from_env({"CHATLOG_TOKENIZER": "sentencepiece"})
    with pytest.raises(ConfigError, match="CHATLOG_TOKENIZER") as raised:
        wiring.token_counter(settings)
    assert raised.value.context["setting"] == "CHATLOG_TOKENIZER"
    assert wiring.token_counter(Settings.from_env({})) is approx_tokens


def test_the_summarizer_refuses_kafka_security_it_cannot_honour():
    # librdkafka's default mechanism, GSSAPI, needs Kerberos callbacks aiokafka lacks here.
    settings = Settings.from_env({"CHATLOG_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"})
    with pytest.raises(ConfigError, match="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512") as raised:
        wiring.summarizer_worker(settings)
    assert raised.value.context["setting"] == "CHATLOG_KAFKA__SASL_MECHANISM"


def test_the_summarizer_refuses_a_threshold_it_could_never_reach_before_starting():
    settings = Settings.from_env({"CHATLOG_SUMMARY_THRESHOLD": "50", "CHATLOG_MAX_OVERFLOW": "20"})
    with pytest.raises(ConfigError, match="CHATLOG_SUMMARY_THRESHOLD"):
        wiring.summarizer_worker(settings)


def test_a_tokenizer_whose_extra_is_missing_names_the_setting_and_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # makes `import tiktoken` fail
    settings = Settings.from_env({"CHATLOG_TOKENIZER": "tiktoken:o200k_base"})
    with pytest.raises(MissingExtra, match=r"^CHATLOG_TOKENIZER: .*\[tokens\]") as raised:
        wiring.token_counter(settings)
    assert raised.value.context["setting"] == "CHATLOG_TOKENIZER"
    assert raised.value.context["extra"] == "tokens"


def _stack(tmp_path: Path, *, master_key_file: str = "") -> StackState:
    return StackState(
        kafka=KafkaState(
            bootstrap="127.0.0.1:39092",
            version="4.4.0",
            brokers=1,
            cluster_id="c",
            pids=(1,),
            ports=(39092,),
            controller_ports=(39093,),
            data_dirs=(str(tmp_path / "kafka-1"),),
        ),
        redis=RedisState(url="redis://127.0.0.1:36379/0", pid=2, port=36379, data_dir="r"),
        master_key_file=master_key_file,
    )


def test_the_local_stacks_master_key_is_used_unless_one_is_set(tmp_path):
    key_file = ensure_master_key(state_dir=tmp_path)
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert ensure_master_key(state_dir=tmp_path).read_text() == key_file.read_text()  # kept
    write_state(_stack(tmp_path, master_key_file=str(key_file)), state_dir=tmp_path)
    env = {"CHATLOG_STATE_DIR": str(tmp_path)}
    local = Settings.from_env(env)
    assert local.master_key_file == key_file
    assert wiring.key_provider(local).current == "local-1"
    explicit = Settings.from_env({**env, "CHATLOG_MASTER_KEY": new_master_key("prod-7")})
    assert explicit.master_key_file is None
    assert wiring.key_provider(explicit).current == "prod-7"
    # Addresses given explicitly still take the local key (a test against running services).
    both = Settings.from_env(
        {**env, "CHATLOG_KAFKA_BOOTSTRAP": "k:9092", "CHATLOG_REDIS_URL": "redis://r:1/0"}
    )
    assert both.master_key_file == key_file


def test_no_master_key_is_one_line_that_says_how_to_make_one(tmp_path):
    settings = Settings.from_env({"CHATLOG_STATE_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="chatlog keys new-master-key") as refused:
        wiring.key_provider(settings)
    assert "\n" not in str(refused.value)
    missing = settings.model_copy(update={"master_key_file": tmp_path / "nope.key"})
    with pytest.raises(ConfigError, match=r"CHATLOG_MASTER_KEY_FILE=.*cannot be read"):
        wiring.key_provider(missing)


def test_the_master_key_is_never_shown():
    spec = new_master_key("k1")
    settings = Settings(master_key=spec)
    secret = spec.partition(":")[2]
    assert secret not in repr(settings)
    assert settings.describe()["CHATLOG_MASTER_KEY"] == "***"
    damaged = Settings.from_env({"CHATLOG_MASTER_KEY": spec[:-4]})
    with pytest.raises(ConfigError) as refused:
        wiring.key_provider(damaged)
    assert secret[:-4] not in str(refused.value)


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ({}, "retention", None),
        ({"CHATLOG_RETENTION": "30d"}, "retention", 30 * 86400.0),
        ({"CHATLOG_RETENTION": "forever"}, "retention", None),
        ({}, "dlq_retention", 7 * 86400.0),
        ({"CHATLOG_DLQ_RETENTION": "36h"}, "dlq_retention", 36 * 3600.0),
        ({"CHATLOG_DLQ_RETENTION": "forever"}, "dlq_retention", None),
        ({}, "key_shred_within", 86400.0),
        ({"CHATLOG_KEY_SHRED_WITHIN": "90m"}, "key_shred_within", 5400.0),
        ({"CHATLOG_KEY_SHRED_WITHIN": "120"}, "key_shred_within", 120.0),
    ],
)
def test_durations_take_units_and_forever_where_it_is_allowed(env, field, expected, tmp_path):
    settings = Settings.from_env({"CHATLOG_STATE_DIR": str(tmp_path), **env})
    assert getattr(settings, field) == expected
    # What `describe` shows reads back as the same (child processes get it so).
    shown = Settings.env_name(field)
    again = Settings.from_env(
        {"CHATLOG_STATE_DIR": str(tmp_path), shown: settings.describe()[shown]}
    )
    assert getattr(again, field) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CHATLOG_KEY_SHRED_WITHIN": "forever"}, "not 'forever'"),
        ({"CHATLOG_KEY_SHRED_WITHIN": "10s"}, "at least 60 s"),
        ({"CHATLOG_RETENTION": "3 weeks"}, "as 90s, 15m, 24h or 7d"),
        ({"CHATLOG_KEYS_TOPIC": "bad topic"}, "not a valid Kafka topic name"),
    ],
)
def test_bad_durations_and_names_are_refused_naming_the_setting(env, expected):
    with pytest.raises(ConfigError, match=expected) as refused:
        Settings.from_env(env)
    assert next(iter(env)) in str(refused.value)


def test_pii_settings_default_to_redact_and_read_one_entry_a_line(tmp_path):
    base = {"CHATLOG_STATE_DIR": str(tmp_path)}
    assert Settings.from_env(base).pii_mode == "redact"
    settings = Settings.from_env(
        {
            **base,
            "CHATLOG_PII_MODE": "mask",
            "CHATLOG_PII_PATTERNS": "order=#BW-\\d{5}\n\n  RMA = RMA-\\d{3,6}  \n",
            "CHATLOG_PII_ALLOW": "help@shop.example\n+1 800 555 0100\n",
            "CHATLOG_PII_PHONE_REGION": "de",
        }
    )
    assert settings.pii_patterns == {"ORDER": "#BW-\\d{5}", "RMA": "RMA-\\d{3,6}"}
    assert settings.pii_allow == ("help@shop.example", "+1 800 555 0100")
    assert settings.pii_phone_region == "DE"
    policy = wiring.redaction_policy(settings)
    assert policy.mode == "mask"
    assert [f.kind for f in policy.redactor.find("#BW-48213, 030 901820")] == ["ORDER", "PHONE"]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CHATLOG_PII_MODE", "scrub", "CHATLOG_PII_MODE='scrub': Input should be 'off', 'redact'"),
        ("CHATLOG_PII_PATTERNS", "ORDER=#BW-(\\d", "CHATLOG_PII_PATTERNS='ORDER=#BW-(\\\\d'"),
        ("CHATLOG_PII_PATTERNS", "ORDER=#BW-(\\d", "pattern ORDER does not compile"),
        ("CHATLOG_PII_PATTERNS", "just a regex", "is not NAME=regex"),
        ("CHATLOG_PII_PATTERNS", "ORDER NO=\\d+", "pattern name 'ORDER NO'"),
        ("CHATLOG_PII_PATTERNS", "ORDER=(?:ORD-\\d+)?", "pattern ORDER matches the empty"),
        ("CHATLOG_PII_PHONE_REGION", "XX", "CHATLOG_PII_PHONE_REGION='XX'"),
    ],
)
def test_bad_pii_settings_are_refused_at_start_in_one_line(name, value, expected, tmp_path):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"CHATLOG_STATE_DIR": str(tmp_path), name: value})
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_replay_worker_gets_the_very_settings_of_its_parent_secrets_and_rates_included():
    import pickle

    from chatlog import wiring

    settings = Settings(
        auth_secret="s" * 40,
        llm_api_key="sk-parent-key",
        rate_tenant="5/m burst=3",
        redis_url="redis://127.0.0.1:1/0",
    )
    parts = wiring.replay_parts(settings, batch_size=10)
    try:
        # As the spawned worker receives it: pickled, then validated again.
        data = pickle.loads(pickle.dumps(parts.worker.args[0]))
        child = Settings.model_validate(data)
    finally:
        parts.generations.client.close()
    assert child == settings
    assert child.auth_secret is not None
    assert child.auth_secret.get_secret_value() == "s" * 40
    assert child.llm_api_key is not None
    assert child.llm_api_key.get_secret_value() == "sk-parent-key"
    assert str(child.rate_tenant) == "5/m burst=3"


def test_tls_files_need_a_tls_url_and_must_be_readable(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="CHATLOG_REDIS_TLS_CA_FILE is set: it needs"):
        Settings.from_env(
            {"CHATLOG_REDIS_URL": "redis://r:6379/0", "CHATLOG_REDIS_TLS_CA_FILE": str(ca)}
        )
    with pytest.raises(ConfigError, match=r"CHATLOG_SCHEMA_REGISTRY_CA_FILE=.* is not a readable"):
        Settings.from_env(
            {
                "CHATLOG_SCHEMA_REGISTRY_URL": "https://registry:8081",
                "CHATLOG_SCHEMA_REGISTRY_CA_FILE": str(tmp_path / "missing.pem"),
            }
        )
    settings = Settings.from_env(
        {"CHATLOG_REDIS_URL": "rediss://r:6380/0", "CHATLOG_REDIS_TLS_CA_FILE": str(ca)}
    )
    assert settings.redis_tls_ca_file == ca
