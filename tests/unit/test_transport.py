"""`chatlog.schemas.transport`: the librdkafka properties read into the summarizer's security,
redis-py's TLS options, and the Schema Registry client's configuration."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from chatlog.schemas.errors import ConfigError
from chatlog.schemas.transport import kafka_security, redis_tls_options, schema_registry_config
from tests.tls_certs import make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


def test_plaintext_has_no_security():
    security = kafka_security({})
    assert (security.protocol, security.ssl_context, security.sasl) == ("PLAINTEXT", None, False)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "scram-sha-512"])
def test_sasl_ssl_gives_the_mechanism_credentials_and_a_verifying_context(certs, mechanism):
    security = kafka_security(
        {
            "security.protocol": "sasl_ssl",
            "sasl.mechanism": mechanism,
            "sasl.username": "chatlog",
            "sasl.password": "hunter2-secret",
            "ssl.ca.location": str(certs.ca),
            "ssl.certificate.location": str(certs.client_cert),
            "ssl.key.location": str(certs.client_key),
        }
    )
    assert (security.protocol, security.mechanism) == ("SASL_SSL", mechanism.upper())
    assert security.username == "chatlog"
    assert security.password is not None
    assert security.password.get_secret_value() == "hunter2-secret"
    assert "hunter2-secret" not in repr(security)
    context = security.ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert any("chatlog test CA" in str(ca["subject"]) for ca in context.get_ca_certs())


def test_endpoint_identification_none_keeps_verifying_the_chain(certs):
    context = kafka_security(
        {
            "security.protocol": "SSL",
            "ssl.ca.location": str(certs.ca),
            "ssl.endpoint.identification.algorithm": "none",
        }
    ).ssl_context
    assert context is not None
    assert (context.check_hostname, context.verify_mode) == (False, ssl.CERT_REQUIRED)


@pytest.mark.parametrize(
    ("properties", "setting"),
    [
        ({"security.protocol": "TLS"}, "CHATLOG_KAFKA__SECURITY_PROTOCOL"),
        ({"security.protocol": "SASL_SSL"}, "CHATLOG_KAFKA__SASL_MECHANISM"),
        (
            {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "OAUTHBEARER"},
            "CHATLOG_KAFKA__SASL_MECHANISM",
        ),
        (
            {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN"},
            "CHATLOG_KAFKA__SASL_USERNAME",
        ),
        (
            {"security.protocol": "SSL", "ssl.keystore.location": "/etc/kafka/client.p12"},
            "CHATLOG_KAFKA__SSL_KEYSTORE_LOCATION",
        ),
        (
            {"security.protocol": "SSL", "ssl.ca.location": "/nowhere/ca.pem"},
            "CHATLOG_KAFKA__SSL_CA_LOCATION",
        ),
    ],
)
def test_what_the_summarizer_cannot_honour_is_refused_naming_the_property(properties, setting):
    with pytest.raises(ConfigError) as refused:
        kafka_security(properties)
    assert refused.value.context["setting"] == setting
    assert setting in str(refused.value)


def test_a_wrong_key_password_is_refused_without_showing_it(certs):
    with pytest.raises(ConfigError, match="client certificate cannot be loaded") as refused:
        kafka_security(
            {
                "security.protocol": "SSL",
                "ssl.certificate.location": str(certs.client_cert),
                "ssl.key.location": str(certs.ca),  # not a key
                "ssl.key.password": "s3cret-key-pw",
            }
        )
    assert "s3cret-key-pw" not in str(refused.value)


def test_redis_tls_options_only_for_rediss():
    assert redis_tls_options("redis://r:6379/0", ca=Path("/ca.pem"), cert=None, key=None) == {}
    assert redis_tls_options(
        "rediss://r:6380/0", ca=Path("/ca.pem"), cert=Path("/c.pem"), key=Path("/c.key")
    ) == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/c.key",
    }


def test_the_schema_registry_client_gets_auth_and_tls(certs):
    from pydantic import SecretStr

    from chatlog.schemas.kafka_registry import ConfluentSchemaRegistry

    config = schema_registry_config(
        basic_auth=SecretStr("reader:pw"), ca=certs.ca, cert=certs.client_cert, key=certs.client_key
    )
    assert config == {
        "basic.auth.user.info": "reader:pw",
        "ssl.ca.location": str(certs.ca),
        "ssl.certificate.location": str(certs.client_cert),
        "ssl.key.location": str(certs.client_key),
    }
    # confluent's client takes every one of them (it refuses properties it does not know).
    ConfluentSchemaRegistry("https://127.0.0.1:1", config=config)
