"""Secure transport: the one place where chatlog's settings become each client's TLS and
authentication.

Kafka's security is written once, as librdkafka properties (``CHATLOG_KAFKA__*``):
the producers, the projector and every reader (confluent-kafka, on librdkafka) take
them as they are. The summarizer consumes with faust, on aiokafka, which speaks the same
protocols but takes its security as objects: `kafka_security` reads the same properties
into a `KafkaSecurity` (protocol, SASL mechanism and credentials, and an
`ssl.SSLContext` built as librdkafka would from its CA, certificate and key), which the
faust adapter turns into faust's credentials. A property aiokafka cannot honour (a
Kerberos or OAuth mechanism, a PKCS#12 keystore) is refused at start-up naming it,
rather than left out: the summarizer must not connect with less security than the
deployment asked for.

Redis's TLS is the ``rediss://`` scheme of ``CHATLOG_REDIS_URL``, with
``CHATLOG_REDIS_TLS_*`` files for a private CA and a client certificate
(`redis_tls_options`). The Schema Registry's URL, basic auth and TLS are passed to
confluent's `SchemaRegistryClient` (`schema_registry_config`).

Everything here is pure (``ssl`` from the standard library): it builds no client.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from chatlog.schemas.errors import ConfigError

__all__ = [
    "SASL_MECHANISMS",
    "KafkaSecurity",
    "kafka_security",
    "kafka_setting",
    "redis_tls_options",
    "schema_registry_config",
]

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
_PROTOCOLS: tuple[Protocol, ...] = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# The SASL mechanisms both clients speak; librdkafka's default (GSSAPI) and OAUTHBEARER
# need callbacks of their own, which the summarizer has not.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# librdkafka properties that carry key material in a form the summarizer cannot load,
# and what to set instead.
_UNSUPPORTED = {
    "ssl.keystore.location": "a PKCS#12 keystore: convert it to PEM files "
    "(openssl pkcs12 -nodes) and set ssl.certificate.location and ssl.key.location",
    "ssl.certificate.pem": "write the certificate to a file and set ssl.certificate.location",
    "ssl.key.pem": "write the key to a file and set ssl.key.location",
}


def kafka_setting(prop: str) -> str:
    """The environment variable of librdkafka property `prop`."""
    return "CHATLOG_KAFKA__" + prop.replace(".", "_").upper()


@dataclass(frozen=True)
class KafkaSecurity:
    """How a Kafka client other than librdkafka connects: the same protocol, mechanism,
    credentials and trust as the ``CHATLOG_KAFKA__*`` properties say."""

    protocol: Protocol = "PLAINTEXT"
    mechanism: str | None = None  # with a SASL protocol, one of SASL_MECHANISMS
    username: str | None = None
    password: SecretStr | None = None
    ssl_context: ssl.SSLContext | None = None  # with SSL or SASL_SSL

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")


def kafka_security(properties: Mapping[str, str]) -> KafkaSecurity:
    """`KafkaSecurity` from librdkafka `properties`; `ConfigError` naming the property
    for one that is wrong or that a non-librdkafka client cannot honour."""
    raw = properties.get("security.protocol", "PLAINTEXT").upper()
    if raw not in _PROTOCOLS:
        raise ConfigError(
            f"{kafka_setting('security.protocol')}={raw!r} is not one of {', '.join(_PROTOCOLS)}",
            setting=kafka_setting("security.protocol"),
        )
    protocol: Protocol = raw  # narrowed by the check above
    context = _ssl_context(properties) if protocol in ("SSL", "SASL_SSL") else None
    if not protocol.startswith("SASL_"):
        return KafkaSecurity(protocol=protocol, ssl_context=context)
    mechanism = properties.get("sasl.mechanism", properties.get("sasl.mechanisms"))
    if mechanism is None or mechanism.upper() not in SASL_MECHANISMS:
        raise ConfigError(
            f"{kafka_setting('sasl.mechanism')}={mechanism!r}: with "
            f"{kafka_setting('security.protocol')}={protocol} chatlog's processes "
            f"authenticate with {', '.join(SASL_MECHANISMS)} (the summarizer's Kafka client "
            f"has no Kerberos or OAuth callbacks); set one of them",
            setting=kafka_setting("sasl.mechanism"),
        )
    username, password = properties.get("sasl.username"), properties.get("sasl.password")
    if not username or password is None:
        raise ConfigError(
            f"{mechanism.upper()} needs a user and a password: set "
            f"{kafka_setting('sasl.username')} and {kafka_setting('sasl.password')}",
            setting=kafka_setting("sasl.username" if not username else "sasl.password"),
        )
    return KafkaSecurity(
        protocol=protocol,
        mechanism=mechanism.upper(),
        username=username,
        password=SecretStr(password),
        ssl_context=context,
    )


def _ssl_context(properties: Mapping[str, str]) -> ssl.SSLContext:
    """An SSL context that trusts and presents what librdkafka would."""
    for prop, instead in _UNSUPPORTED.items():
        if prop in properties:
            raise ConfigError(
                f"{kafka_setting(prop)} holds {instead.split(':')[0]}, which the summarizer's "
                f"Kafka client cannot load: {instead.split(': ', 1)[-1]}",
                setting=kafka_setting(prop),
            )
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca = properties.get("ssl.ca.location")
    ca_pem = properties.get("ssl.ca.pem")
    try:
        if ca and ca != "probe":  # probe: the system's CAs, which the default has
            folder = Path(ca).is_dir()
            context.load_verify_locations(
                cafile=None if folder else ca, capath=ca if folder else None
            )
        if ca_pem:
            context.load_verify_locations(cadata=ca_pem)
    except (OSError, ssl.SSLError) as exc:
        prop = "ssl.ca.pem" if ca_pem and not ca else "ssl.ca.location"
        raise ConfigError(
            f"{kafka_setting(prop)}: the CA cannot be loaded ({_reason(exc)}); point it at "
            f"the PEM file of the CA that signed the brokers' certificates",
            setting=kafka_setting(prop),
        ) from exc
    cert, key = properties.get("ssl.certificate.location"), properties.get("ssl.key.location")
    if cert or key:
        try:
            context.load_cert_chain(
                certfile=str(cert or key), keyfile=key, password=properties.get("ssl.key.password")
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{kafka_setting('ssl.certificate.location')} and "
                f"{kafka_setting('ssl.key.location')}: the client certificate cannot be "
                f"loaded ({_reason(exc)}); check both PEM files and "
                f"{kafka_setting('ssl.key.password')}",
                setting=kafka_setting("ssl.certificate.location"),
            ) from exc
    if properties.get("enable.ssl.certificate.verification", "true").lower() == "false":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif properties.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        context.check_hostname = False
    ciphers = properties.get("ssl.cipher.suites")
    if ciphers:
        try:
            context.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{kafka_setting('ssl.cipher.suites')}={ciphers!r}: {_reason(exc)}",
                setting=kafka_setting("ssl.cipher.suites"),
            ) from exc
    return context


def _reason(exc: BaseException) -> str:
    # An OSError's text names the file; an SSLError's, OpenSSL's reason. Never a password.
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__


def redis_tls_options(
    url: str, *, ca: Path | None, cert: Path | None, key: Path | None
) -> dict[str, Any]:
    """redis-py's TLS keyword arguments for `url` and the ``CHATLOG_REDIS_TLS_*`` files.

    Empty for a plain URL; for ``rediss://`` the CA to trust (None: the system's) and an
    optional client certificate. The certificate is always verified, host name included.
    """
    if not url.startswith("rediss://"):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if ca is not None:
        options["ssl_ca_certs"] = str(ca)
    if cert is not None:
        options["ssl_certfile"] = str(cert)
        options["ssl_keyfile"] = str(key or cert)
    return options


def schema_registry_config(
    *,
    basic_auth: SecretStr | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
) -> dict[str, Any]:
    """confluent's `SchemaRegistryClient` properties (beside its ``url``) for the
    ``CHATLOG_SCHEMA_REGISTRY_*`` settings. Basic auth may be in the URL's userinfo
    instead, where the client finds it."""
    config: dict[str, Any] = {}
    if basic_auth is not None:
        config["basic.auth.user.info"] = basic_auth.get_secret_value()
    if ca is not None:
        config["ssl.ca.location"] = str(ca)
    if cert is not None:
        config["ssl.certificate.location"] = str(cert)
        config["ssl.key.location"] = str(key or cert)
    return config
