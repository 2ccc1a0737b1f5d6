"""Whether Kafka lets chatlog in: a refused password, an untrusted certificate or a
plaintext client at a TLS listener, reported as the setting to fix.

librdkafka treats all of these as a broker it cannot reach and retries for ever, so a
process would report "no Kafka broker answered" (exit 75: try again later) for a
mistake that no retry can mend. `broker_refusal` reads librdkafka's own error for the
cases it recognises (SASL authentication failed, TLS handshake failed, client
certificate refused); `check_access` asks the brokers for metadata with the
deployment's settings and raises the first refusal as a `ConfigError`. A plaintext
client at a TLS listener only sees the connection closed, so `check_access` then looks
whether the listener answers a TLS handshake itself.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from chatlog.schemas.errors import ConfigError
from chatlog.schemas.transport import kafka_setting

__all__ = ["broker_refusal", "check_access"]

_KAFKA_LOG = logging.getLogger("chatlog.kafka")
_UNREACHABLE = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE}
_PROBE_TIMEOUT_S = 2.0


def broker_refusal(error: KafkaError | None) -> ConfigError | None:
    """`error` as the setting to fix when it is a broker refusing chatlog's credentials
    or TLS; None for any other error (an outage, say)."""
    if error is None:
        return None
    reason = error.str()
    if error.code() == KafkaError._AUTHENTICATION:
        return ConfigError(
            f"Kafka refused chatlog's credentials ({reason}); check "
            f"{kafka_setting('sasl.username')}, {kafka_setting('sasl.password')} and "
            f"{kafka_setting('sasl.mechanism')}",
            setting=kafka_setting("sasl.password"),
        )
    if error.code() == KafkaError._SSL:
        return ConfigError(
            f"the TLS handshake with Kafka failed ({reason}); set "
            f"{kafka_setting('ssl.ca.location')} to the CA that signed the brokers' "
            f"certificates, and reach the brokers by a name their certificates hold",
            setting=kafka_setting("ssl.ca.location"),
        )
    lowered = reason.lower()
    if error.code() == KafkaError._TRANSPORT and "alert" in lowered and "certificate" in lowered:
        return ConfigError(
            f"Kafka refused chatlog's TLS client certificate ({reason}); set "
            f"{kafka_setting('ssl.certificate.location')} and "
            f"{kafka_setting('ssl.key.location')} to a certificate its CA signed",
            setting=kafka_setting("ssl.certificate.location"),
        )
    return None


def check_access(
    bootstrap_servers: str, config: Mapping[str, Any], *, timeout: float = 10.0
) -> None:
    """`ConfigError` when the brokers refuse `config`'s credentials or TLS, or speak TLS
    to a plaintext client. Returns when they answer, and also when none answers at all:
    an outage is for the caller's own checks, which wait or report it as they always do."""
    errors: list[KafkaError] = []
    try:
        probe = Producer(
            {
                **config,
                "bootstrap.servers": bootstrap_servers,
                "error_cb": errors.append,
                "logger": _KAFKA_LOG,
            }
        )
    except KafkaException as exc:
        raise ConfigError(f"invalid Kafka settings: {exc.args[0]}") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            probe.list_topics(timeout=0.5)
        except KafkaException:
            pass
        else:
            return
        probe.poll(0)  # serves error_cb
        for error in errors:
            refusal = broker_refusal(error)
            if refusal is not None:
                raise refusal
        if any(error.code() in _UNREACHABLE for error in errors):
            break
    protocol = str(config.get("security.protocol", "PLAINTEXT")).upper()
    if "SSL" in protocol:
        return
    for server in bootstrap_servers.split(","):
        if _speaks_tls(server):
            raise ConfigError(
                f"the Kafka listener at {server.strip()} speaks TLS, but "
                f"{kafka_setting('security.protocol')} is {protocol}: set it to SSL (or "
                f"SASL_SSL with a user and password), with {kafka_setting('ssl.ca.location')}",
                setting=kafka_setting("security.protocol"),
            )


def _speaks_tls(server: str) -> bool:
    """Whether the listener at `server` (host:port) answers a TLS handshake."""
    address = server.strip().rpartition("://")[2]
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return False
    # Only to recognise a TLS server: no certificate is checked and nothing is sent.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, int(port)), timeout=_PROBE_TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except ssl.SSLError as exc:
        # A TLS server may refuse the handshake with an alert (no client certificate).
        return "ALERT" in str(exc.reason or "").upper()
    except OSError:
        return False
