"""The local stack (`dev.services`) against real processes: up, reuse, status, down, and
one node stopped and started again.

Every test works in its own temporary state dir, so a stack someone runs in ./.chatlog is
left alone. The jar cache (~/.cache/chatlog) is shared: only the first start on a machine
pays for the Maven download.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient, NewTopic

from dev import services
from dev.services import redis_local, state
from dev.services.state import ServiceError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stack")
    yield directory
    services.down(state_dir=directory)


@pytest.fixture(scope="module")
def addresses(stack_dir):
    return services.up(state_dir=stack_dir)


def _recorded(directory: Path) -> dict:
    return json.loads((directory / "services.json").read_text())


def _own_pids(record: dict) -> list[int]:
    return [*record["kafka"]["pids"], record["redis"]["pid"], record["recall_redis"]["pid"]]


def _alive(pid: int) -> bool:
    # Checked from /proc directly rather than with the module under test; a zombie is dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _broker_count(bootstrap: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return len(admin.describe_cluster(request_timeout=10).result(15).nodes)


def _pings(url: str) -> bool:
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        return bool(client.ping())


def _cli(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dev.services", "--state-dir", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_up_gives_a_broker_and_a_redis_that_answer(addresses):
    assert addresses.kafka_bootstrap.startswith("127.0.0.1:")
    assert _broker_count(addresses.kafka_bootstrap) == 1
    assert _pings(addresses.redis_url)


def test_up_gives_a_redis_with_the_query_engine_for_the_recall_index(addresses):
    assert addresses.recall_redis_url not in ("", addresses.redis_url)
    name = f"probe-{uuid.uuid4().hex[:8]}"
    with redis.Redis.from_url(addresses.recall_redis_url) as client:
        assert client.info("server")["redis_version"] == "7.4.1"
        created = client.execute_command(
            "FT.CREATE", name, "ON", "HASH", "PREFIX", "1", f"{name}:", "SCHEMA",
            "v", "VECTOR", "HNSW", "6", "TYPE", "FLOAT32", "DIM", "4", "DISTANCE_METRIC", "COSINE",
        )  # fmt: skip
        client.execute_command("FT.DROPINDEX", name)
    assert created == b"OK"
    # The read-model's Redis is Debian's plain one: the recall index needs the other.
    with (
        redis.Redis.from_url(addresses.redis_url) as plain,
        pytest.raises(redis.ResponseError, match="unknown command"),
    ):
        plain.execute_command("FT._LIST")


def test_up_writes_the_addresses_where_settings_and_shells_find_them(stack_dir, addresses):
    expected = {
        "CHATLOG_KAFKA_BOOTSTRAP": addresses.kafka_bootstrap,
        "CHATLOG_REDIS_URL": addresses.redis_url,
        "CHATLOG_RECALL_REDIS_URL": addresses.recall_redis_url,
        "CHATLOG_MASTER_KEY_FILE": str(stack_dir / "master.key"),
    }
    assert services.read_addresses(state_dir=stack_dir) == expected
    # The stack keeps a master key of its own, readable by its owner only, across `down`.
    assert (stack_dir / "master.key").stat().st_mode & 0o777 == 0o600
    env_lines = (stack_dir / "services.env").read_text().splitlines()
    assert env_lines == [f"{key}={value}" for key, value in expected.items()]


def test_a_second_up_reuses_the_running_processes(stack_dir, addresses):
    before = _recorded(stack_dir)
    assert services.up(state_dir=stack_dir) == addresses
    assert _recorded(stack_dir) == before


def test_status_reports_the_running_stack(stack_dir, addresses):
    assert services.status(state_dir=stack_dir) == addresses


def test_cli_status_and_env_print_the_stack(stack_dir, addresses):
    shown = _cli(stack_dir, "status")
    assert shown.returncode == 0, shown.stderr
    assert addresses.kafka_bootstrap in shown.stdout
    assert addresses.redis_url in shown.stdout
    assert addresses.recall_redis_url in shown.stdout
    exported = _cli(stack_dir, "env")
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.splitlines() == [
        f"export CHATLOG_KAFKA_BOOTSTRAP={addresses.kafka_bootstrap}",
        f"export CHATLOG_REDIS_URL={addresses.redis_url}",
        f"export CHATLOG_RECALL_REDIS_URL={addresses.recall_redis_url}",
        f"export CHATLOG_MASTER_KEY_FILE={stack_dir / 'master.key'}",
    ]


def test_up_with_another_broker_count_asks_for_down_first(stack_dir, addresses):
    with pytest.raises(ServiceError, match="down"):
        services.up(brokers=3, state_dir=stack_dir)
    assert services.status(state_dir=stack_dir) == addresses


def test_cli_reports_a_missing_stack_in_one_line_and_exit_1(tmp_path):
    shown = _cli(tmp_path, "status")
    assert shown.returncode == 1
    assert shown.stdout == ""
    assert len(shown.stderr.strip().splitlines()) == 1
    assert "up" in shown.stderr


def test_up_replaces_a_stack_whose_process_died(tmp_path):
    services.up(state_dir=tmp_path)
    old = _recorded(tmp_path)
    try:
        os.kill(old["redis"]["pid"], signal.SIGKILL)
        assert services.status(state_dir=tmp_path) is None
        fresh = services.up(state_dir=tmp_path)
        new = _recorded(tmp_path)
        assert set(_own_pids(new)).isdisjoint(_own_pids(old))
        assert not any(_alive(pid) for pid in _own_pids(old))
        assert _broker_count(fresh.kafka_bootstrap) == 1
        assert _pings(fresh.redis_url)
    finally:
        services.down(state_dir=tmp_path)


def test_down_stops_exactly_its_own_processes(tmp_path):
    services.up(state_dir=tmp_path)
    record = _recorded(tmp_path)
    # A second redis-server of the same binary: `pkill redis-server` would stop it too.
    (decoy_port,) = state.free_ports(1)
    binary = redis_local.find_redis_server()
    assert binary is not None
    decoy = subprocess.Popen(
        [binary, "--port", str(decoy_port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    decoy_url = f"redis://127.0.0.1:{decoy_port}/0"
    try:
        _wait_until(lambda: state.port_open(decoy_port))
        services.down(state_dir=tmp_path)
        assert not any(_alive(pid) for pid in _own_pids(record))
        assert decoy.poll() is None
        assert _pings(decoy_url)
        assert services.read_addresses(state_dir=tmp_path) is None
        data_dirs = [
            *record["kafka"]["data_dirs"],
            record["redis"]["data_dir"],
            record["recall_redis"]["data_dir"],
        ]
        assert not any(Path(data_dir).exists() for data_dir in data_dirs)
    finally:
        decoy.terminate()
        decoy.wait(10)


def _wait_until(condition, *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_kafka_node_killed_and_started_again_keeps_its_data_ports_and_records_its_pid(
    stack_dir, addresses
):
    admin = AdminClient({"bootstrap.servers": addresses.kafka_bootstrap})
    topic = f"kept.{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    before = _recorded(stack_dir)
    (old_pid,) = before["kafka"]["pids"]
    try:
        services.stop_node("kafka-1", kill=True, state_dir=stack_dir)
        assert not _alive(old_pid)
        assert services.stopped_nodes(state_dir=stack_dir) == ["kafka-1"]
        assert services.status(state_dir=stack_dir) is None
        shown = _cli(stack_dir, "status")
        assert shown.returncode == 1
        assert "start kafka-1" in shown.stderr, shown.stderr
        services.start_node("kafka-1", state_dir=stack_dir)
    finally:
        services.start_node("kafka-1", state_dir=stack_dir)
    after = _recorded(stack_dir)
    (new_pid,) = after["kafka"]["pids"]
    assert new_pid != old_pid
    assert _alive(new_pid)
    # Only the pid changed: same ports, same data dir, so the same cluster.
    assert {**after["kafka"], "pids": None} == {**before["kafka"], "pids": None}
    assert after["redis"] == before["redis"]
    assert services.status(state_dir=stack_dir) == addresses
    assert _broker_count(addresses.kafka_bootstrap) == 1
    fresh = AdminClient({"bootstrap.servers": addresses.kafka_bootstrap})
    assert topic in fresh.list_topics(timeout=10).topics


def test_redis_stopped_and_started_again_answers_on_its_port_empty(stack_dir, addresses):
    with redis.Redis.from_url(addresses.redis_url) as client:
        client.set("kept", "1")
    old_pid = _recorded(stack_dir)["redis"]["pid"]
    try:
        stopped = _cli(stack_dir, "stop", "redis")
        assert stopped.returncode == 0, stopped.stderr
        assert not _alive(old_pid)
        shown = _cli(stack_dir, "status")
        assert shown.returncode == 1
        assert "start redis" in shown.stderr, shown.stderr
        started = _cli(stack_dir, "start", "redis")
        assert started.returncode == 0, started.stderr
    finally:
        services.start_node("redis", state_dir=stack_dir)
    new_pid = _recorded(stack_dir)["redis"]["pid"]
    assert new_pid != old_pid
    assert _alive(new_pid)
    assert services.status(state_dir=stack_dir) == addresses
    with redis.Redis.from_url(addresses.redis_url) as client:
        assert client.get("kept") is None  # persistence is off: a restart is empty


def test_the_recall_redis_stopped_and_started_again_has_its_module_and_is_empty(
    stack_dir, addresses
):
    with redis.Redis.from_url(addresses.recall_redis_url) as client:
        client.set("kept", "1")
    old_pid = _recorded(stack_dir)["recall_redis"]["pid"]
    try:
        services.stop_node("redis-stack", kill=True, state_dir=stack_dir)
        assert services.stopped_nodes(state_dir=stack_dir) == ["redis-stack"]
        shown = _cli(stack_dir, "status")
        assert shown.returncode == 1
        assert "start redis-stack" in shown.stderr, shown.stderr
    finally:
        services.start_node("redis-stack", state_dir=stack_dir)
    assert _recorded(stack_dir)["recall_redis"]["pid"] != old_pid
    assert services.status(state_dir=stack_dir) == addresses
    with redis.Redis.from_url(addresses.recall_redis_url) as client:
        assert client.get("kept") is None
        assert client.execute_command("FT._LIST") == []
        assert client.json().get("nothing") is None  # RedisJSON, for LangGraph's Redis saver


def test_a_stack_recorded_before_the_recall_index_gets_one_on_up(tmp_path):
    addresses = services.up(state_dir=tmp_path)
    try:
        services.stop_node("redis-stack", state_dir=tmp_path)
        record = _recorded(tmp_path)
        del record["recall_redis"]
        (tmp_path / "services.json").write_text(json.dumps(record))
        upgraded = services.up(state_dir=tmp_path)
        # The rest is reused as it ran; only the recall index's Redis is new.
        assert (upgraded.kafka_bootstrap, upgraded.redis_url) == (
            addresses.kafka_bootstrap,
            addresses.redis_url,
        )
        assert upgraded.recall_redis_url
        assert _pings(upgraded.recall_redis_url)
        assert _recorded(tmp_path)["kafka"] == record["kafka"]
    finally:
        services.down(state_dir=tmp_path)


def test_start_and_stop_leave_a_node_already_in_that_state_as_it_is(stack_dir, addresses):
    before = _recorded(stack_dir)
    services.start_node("redis", state_dir=stack_dir)
    services.start_node("kafka-1", state_dir=stack_dir)
    assert _recorded(stack_dir) == before
    try:
        services.stop_node("redis", state_dir=stack_dir)
        services.stop_node("redis", kill=True, state_dir=stack_dir)
        assert services.stopped_nodes(state_dir=stack_dir) == ["redis"]
    finally:
        services.start_node("redis", state_dir=stack_dir)
    assert services.status(state_dir=stack_dir) == addresses


def test_a_node_the_stack_does_not_have_is_refused_naming_those_it_has(stack_dir, addresses):
    with pytest.raises(ServiceError, match="kafka-1, redis"):
        services.stop_node("kafka-2", state_dir=stack_dir)
    refused = _cli(stack_dir, "start", "zookeeper")
    assert refused.returncode == 1
    assert "kafka-1, redis" in refused.stderr
    assert services.status(state_dir=stack_dir) == addresses
