"""Secure transport (issue 16, item 5): every client over TLS, Kafka with SASL.

A private one-node Kafka (the local stack's 4.3.1 jars) gets an SSL listener that asks
for a client certificate and a SASL_SSL listener with PLAIN and SCRAM users; a private
redis-server listens with TLS only. The certificates are made here (`tests.tls_certs`).
Topics are created over the broker's PLAINTEXT listener, as an operator would; every
chatlog process then connects only through the secured ones.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from chatlog import wiring
from chatlog.processors.summarizers import SummaryRequest, SummaryResult
from chatlog.projections.view import Message
from chatlog.schemas.errors import ChatlogError, ConfigError, RetryableSummarizerError
from chatlog.settings import Settings
from dev.services import kafka_local
from dev.services.redis_local import ensure_redis_server
from dev.services.state import free_ports
from tests.conftest import KafkaCluster
from tests.llm_stub import LlmStub
from tests.processes import (
    full_chatlog,
    master_key_file,
    opened,
    running_processor,
    running_projector,
    start_processor,
    unique_settings,
    wait_until,
)
from tests.tls_certs import Certificates, make_certificates

pytestmark = pytest.mark.integration

USER, PASSWORD = "chatlog", f"pw-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class SecureStack:
    kafka: KafkaCluster  # its PLAINTEXT listener: for creating topics only
    ssl_bootstrap: str
    sasl_bootstrap: str
    redis_url: str  # rediss://, trusting `certs.ca` only
    certs: Certificates
    other_ca: Certificates  # a CA that signed none of the servers' certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> tuple[Certificates, Certificates]:
    """The servers' CA and certificates, and another CA that signed none of them."""
    base = tmp_path_factory.mktemp("certs")
    return make_certificates(base / "ours"), make_certificates(base / "other", name="another CA")


@pytest.fixture(scope="module")
def secure(certs, tmp_path_factory) -> Iterator[SecureStack]:
    base = tmp_path_factory.mktemp("secure")
    certs, other_ca = certs
    ssl_port, sasl_port, redis_port = free_ports(3)
    tls = kafka_local.TlsListeners(
        ssl_port=ssl_port,
        sasl_ssl_port=sasl_port,
        keystore=certs.server_keystore,
        truststore=certs.ca,
        users=((USER, PASSWORD),),
    )
    redis_server = _start_tls_redis(redis_port, certs, base / "redis")
    try:
        state = kafka_local.start_kafka(brokers=1, base_dir=base, tls=tls)
        cluster = KafkaCluster(state.bootstrap)
        try:
            yield SecureStack(
                kafka=cluster,
                ssl_bootstrap=f"127.0.0.1:{ssl_port}",
                sasl_bootstrap=f"127.0.0.1:{sasl_port}",
                redis_url=f"rediss://127.0.0.1:{redis_port}/0",
                certs=certs,
                other_ca=other_ca,
            )
        finally:
            cluster.close()
            kafka_local.stop_kafka(state)
    finally:
        redis_server.terminate()
        redis_server.wait(10)


def _start_tls_redis(port: int, certs: Certificates, folder: Path) -> subprocess.Popen[bytes]:
    """redis-server with TLS only (no plain port), any client that trusts the CA."""
    folder.mkdir()
    server = subprocess.Popen(
        [
            ensure_redis_server(),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(certs.server_cert),
            "--tls-key-file",
            str(certs.server_key),
            "--tls-ca-cert-file",
            str(certs.ca),
            "--tls-auth-clients",
            "no",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, ssl=True, ssl_ca_certs=str(certs.ca), socket_timeout=1)
    wait_until(_pings(client), timeout=20, what="the TLS redis-server to answer")
    client.close()
    return server


def _pings(client: redis.Redis):
    def ping() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    return ping


def sasl(secure: SecureStack, mechanism: str = "SCRAM-SHA-256", password: str = PASSWORD):
    """The librdkafka properties of a client of the SASL_SSL listener."""
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": mechanism,
        "sasl.username": USER,
        "sasl.password": password,
        "ssl.ca.location": str(secure.certs.ca),
    }


def secure_settings(secure: SecureStack, mechanism: str = "SCRAM-SHA-256", **overrides) -> Settings:
    """Fresh topics and prefix; Kafka over SASL_SSL, Redis over TLS."""
    plain = unique_settings(
        secure.kafka, secure.redis_url, f"t{uuid.uuid4().hex[:12]}", **overrides
    )
    return Settings.model_validate(
        {
            **plain.model_dump(),
            "kafka_bootstrap": secure.sasl_bootstrap,
            "kafka": sasl(secure, mechanism),
            "redis_tls_ca_file": secure.certs.ca,
        }
    )


def test_append_project_read_and_summarize_over_sasl_ssl_and_rediss(secure, tmp_path):
    # One projector serves both checks (each start costs seconds); the summarizer
    # authenticates with the other SCRAM mechanism.
    settings = secure_settings(
        secure,
        partitions=2,
        window=4,
        summary_threshold=2,
        summarizer_group=f"summarizer-{uuid.uuid4().hex[:8]}",
    )
    summarizing = settings.model_copy(update={"kafka": sasl(secure, "SCRAM-SHA-512")})
    projector_log, summarizer_log = tmp_path / "projector.log", tmp_path / "summarizer.log"
    with (
        running_projector(settings, log=projector_log) as projector,
        running_processor("summarizer", summarizing, log=summarizer_log) as summarizer,
    ):
        assert projector.poll() is None, projector_log.read_text()
        with full_chatlog(settings) as chat:
            position = chat.append("s-tls", user_id="alice", role="user", content="over TLS")
            context = chat.context("s-tls", user_id="alice", after=position)
            assert [m["content"] for m in context.to_openai()] == ["over TLS"]
            for n in range(10):
                role = "user" if n % 2 == 0 else "assistant"
                chat.append("s-sum", user_id="bob", role=role, content=f"turn {n} about TLS")

        def summarized() -> bool:
            assert summarizer.poll() is None, summarizer_log.read_text()
            view = opened(settings, wiring.live_store(settings).load(["s-sum"])["s-sum"])
            return view is not None and view.summary is not None

        wait_until(summarized, timeout=60, what="the summarizer to summarize over SASL_SSL")
    assert PASSWORD not in summarizer_log.read_text() + projector_log.read_text()


def test_a_wrong_password_stops_each_process_naming_the_setting(secure, tmp_path):
    settings = secure_settings(secure)
    wrong = settings.model_copy(update={"kafka": sasl(secure, password="not-the-password")})
    logs = {name: tmp_path / f"{name}.log" for name in ("projector", "summarizer")}
    started = time.monotonic()
    processes = {name: start_processor(name, wrong, log=log) for name, log in logs.items()}
    for name, process in processes.items():
        assert process.wait(60) == 1, logs[name].read_text()  # a setting to fix, not 75
        output = logs[name].read_text()
        assert "Kafka refused chatlog's credentials" in output, output
        assert "CHATLOG_KAFKA__SASL_PASSWORD" in output
        assert "not-the-password" not in output
    assert time.monotonic() - started < 60


def test_plaintext_and_untrusted_clients_get_the_setting_to_fix(secure):
    plaintext = Settings(kafka_bootstrap=secure.ssl_bootstrap, redis_url=secure.redis_url)
    with pytest.raises(ConfigError, match="speaks TLS") as refused:
        wiring.check_kafka_access(plaintext)
    assert refused.value.context["setting"] == "CHATLOG_KAFKA__SECURITY_PROTOCOL"

    untrusted = {**sasl(secure), "ssl.ca.location": str(secure.other_ca.ca)}
    with pytest.raises(ConfigError, match="TLS handshake") as refused:
        wiring.check_kafka_access(plaintext.model_copy(update={
            "kafka_bootstrap": secure.sasl_bootstrap, "kafka": untrusted
        }))  # fmt: skip
    assert refused.value.context["setting"] == "CHATLOG_KAFKA__SSL_CA_LOCATION"

    # The SSL listener wants a client certificate: without one, refused; with one, in.
    ssl_only = {"security.protocol": "SSL", "ssl.ca.location": str(secure.certs.ca)}
    bare = plaintext.model_copy(update={"kafka": ssl_only})
    with pytest.raises(ConfigError, match="client certificate") as refused:
        wiring.check_kafka_access(bare)
    certified = {
        **ssl_only,
        "ssl.certificate.location": str(secure.certs.client_cert),
        "ssl.key.location": str(secure.certs.client_key),
    }
    wiring.check_kafka_access(bare.model_copy(update={"kafka": certified}))
    # PLAIN, the third mechanism (the others are used by the processes above).
    wiring.check_kafka_access(
        plaintext.model_copy(
            update={"kafka_bootstrap": secure.sasl_bootstrap, "kafka": sasl(secure, "PLAIN")}
        )
    )


def test_rediss_with_the_wrong_ca_is_a_setting_to_fix(secure):
    settings = Settings(
        kafka_bootstrap=secure.sasl_bootstrap,
        redis_url=secure.redis_url,
        redis_tls_ca_file=secure.other_ca.ca,
        master_key_file=master_key_file(),
    )
    with pytest.raises(ConfigError, match="CHATLOG_REDIS_TLS_CA_FILE") as refused:
        wiring.reader(settings).context("s-any", user_id="u1")
    assert "certificate verify failed" in str(refused.value)


def test_the_llm_endpoint_over_https_with_a_private_ca(certs):
    ours, other = certs
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(ours.server_cert, ours.server_key)
    request = SummaryRequest("s1", None, (Message(1, "m1", "user", "hello", 1_000),), 100)
    with LlmStub(tls=server) as stub:
        settings = Settings(llm_base_url=stub.base_url, llm_ca_file=ours.ca, llm_api_key="sk-t")
        untrusted = settings.model_copy(update={"llm_ca_file": other.ca})

        async def summarize(settings: Settings) -> SummaryResult:
            llm, close = wiring.summarizer(settings)
            try:
                return await llm.summarize(request)
            finally:
                await close()

        assert asyncio.run(summarize(settings)).summary
        with pytest.raises(RetryableSummarizerError, match=r"not trusted.*CHATLOG_LLM_CA_FILE"):
            asyncio.run(summarize(untrusted))
    assert len(stub.requests) == 1  # the untrusted call never reached it


def test_the_embeddings_endpoint_over_https_with_a_private_ca(certs):
    ours, other = certs
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(ours.server_cert, ours.server_key)
    with LlmStub(tls=server) as stub:
        settings = Settings(
            embedding_provider="openai",
            embedding_base_url=stub.base_url,
            embedding_ca_file=ours.ca,
            embedding_api_key="sk-t",
            embedding_send_dimension=True,  # the stand-in answers the size asked for
        )
        untrusted = settings.model_copy(update={"embedding_ca_file": other.ca})
        trusted_embedder = wiring.embedder(settings)
        try:
            [vector] = trusted_embedder.embed(["hello"])
            assert len(vector) == settings.embedding.dimension
        finally:
            trusted_embedder.close()
        refused = wiring.embedder(untrusted)
        try:
            with pytest.raises(ChatlogError, match=r"not trusted.*CHATLOG_EMBEDDING_CA_FILE"):
                refused.embed(["hello"])
        finally:
            refused.close()
    assert len(stub.requests) == 1  # the untrusted calls never reached it
