"""A real Apache Kafka cluster (KRaft, loopback only) run from its Maven Central jars.

How it works, step by step:

1. Jars. `pom.xml` beside this file lists the broker (`kafka_2.13`) and the log4j2 backend.
   Maven's dependency plugin copies every runtime jar into
   `~/.cache/chatlog/kafka-<version>/libs` (or under `$XDG_CACHE_HOME`). The cache only
   saves time: a marker holding the pom's hash is written after a complete copy, so a
   half-finished download, or a changed pom, is fetched again. Kafka's command-line tools
   (`pom-tools.xml`: kafka-tools, for the benchmark's ConsumerPerformance) are fetched the
   same way into `kafka-<version>/tools` by `ensure_tool_jars`, only when asked for.
2. Config. Each node gets `<state dir>/kafka-<id>/` with its `server.properties`, its log
   dir `data/`, `server.log` (log4j2, WARN and above) and `stdout.log` (the JVM's own
   output). Every node is broker and controller at once (combined mode). One node uses the
   dynamic quorum (`controller.quorum.bootstrap.servers`, formatted `--standalone`);
   three nodes use static `controller.quorum.voters`, so killing one keeps the quorum.
3. Format. `StorageTool random-uuid` names the cluster, `StorageTool format` prepares each
   log dir.
4. Run. `kafka.Kafka server.properties` in its own session, detached from this process.
5. Ready. An AdminClient's `describe_cluster()` reports every broker.

One node can be stopped and started again on its own (`stop_kafka_node`,
`restart_kafka_node`), for fault drills: the restart runs the same `server.properties`
on the same ports and log dir, with no format, so the node rejoins the cluster it left
and catches up on what it missed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dev.services.state import (
    KafkaState,
    ServiceError,
    cache_root,
    free_ports,
    is_running,
    locked,
    port_open,
    spawn_detached,
    stop_processes,
    tail,
)

__all__ = [
    "KAFKA_VERSION",
    "ensure_jars",
    "ensure_tool_jars",
    "kafka_answers",
    "node_names",
    "restart_kafka_node",
    "start_kafka",
    "stop_kafka",
    "stop_kafka_node",
    "stopped_nodes",
]

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
_POM = _HERE / "pom.xml"
_TOOLS_POM = _HERE / "pom-tools.xml"
_LOG4J2_CONFIG = _HERE / "log4j2.xml"
# Pinned: Debian's Maven 3.8 would otherwise pick its old default dependency plugin.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.11.0"
_BROKER_JVM_OPTIONS = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    # A broker out of heap is useless; exiting makes `up` and `status` see it at once.
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_MAVEN_TIMEOUT_S = 900.0
_NODE_STOP_GRACE_S = 30.0
_TOOL_TIMEOUT_S = 120.0


def _pom_property(name: str) -> str:
    # The pom is the one place the versions are written; read them back from it.
    match = re.search(rf"<{re.escape(name)}>([^<]+)</{re.escape(name)}>", _POM.read_text())
    if match is None:
        raise ServiceError(f"{_POM} has no <{name}> property; restore the file from git")
    return match.group(1).strip()


KAFKA_VERSION = _pom_property("kafka.version")


@dataclass(frozen=True)
class _Node:
    node_id: int
    port: int
    controller_port: int
    directory: Path

    @property
    def config_file(self) -> Path:
        return self.directory / "server.properties"

    @property
    def marker(self) -> str:
        # The config path is on the java command line and unique to this node.
        return str(self.config_file)


def ensure_jars(*, version: str = KAFKA_VERSION) -> Path:
    """The folder holding every jar the broker needs, fetched with Maven on first use."""
    return _ensure(_POM, "libs", expect="kafka_2.13-*.jar", version=version)


def ensure_tool_jars(*, version: str = KAFKA_VERSION) -> Path:
    """The folder holding Kafka's command-line tools (kafka-tools) and their dependencies.

    For the benchmark (`org.apache.kafka.tools.ConsumerPerformance`); fetched with Maven
    on first use, apart from the broker's jars (see `pom-tools.xml`). Run a tool with
    `java -cp '<folder>/*' <class>`.
    """
    return _ensure(_TOOLS_POM, "tools", expect="kafka-tools-[0-9]*.jar", version=version)


def _ensure(pom: Path, folder: str, *, expect: str, version: str) -> Path:
    cache = cache_root() / f"kafka-{version}"
    libs, marker = cache / folder, cache / f"{folder}.complete"
    want = _pom_digest(version, pom=pom)

    def complete() -> bool:
        return libs.is_dir() and marker.is_file() and marker.read_text().strip() == want

    if complete():
        return libs
    # The cache is shared by every state dir; a second `up` waits for the first's fetch.
    with locked(cache):
        if not complete():
            _fetch_jars(
                version=version, libs=libs, marker=marker, digest=want, pom=pom, expect=expect
            )
    return libs


def _fetch_jars(
    *, version: str, libs: Path, marker: Path, digest: str, pom: Path, expect: str
) -> None:
    started = time.monotonic()
    log.info("fetching Kafka %s jars (%s) with Maven (first run only)…", version, pom.name)
    partial = libs.with_name(f"{libs.name}.partial")
    for stale in (libs, partial):
        shutil.rmtree(stale, ignore_errors=True)
    marker.unlink(missing_ok=True)
    _copy_dependencies(version=version, output=partial, pom=pom, expect=expect)
    partial.rename(libs)
    # Written last: without it the next run treats the folder as half-fetched.
    marker.write_text(digest + "\n")
    count = len(list(libs.glob("*.jar")))
    log.info("fetched %d jars in %.1f s into %s", count, time.monotonic() - started, libs)


def start_kafka(*, brokers: int, base_dir: Path, timeout: float = 90.0) -> KafkaState:
    """Fetch, configure, format and start a `brokers`-node cluster; wait until it answers.

    Node directories `base_dir/kafka-<id>` are wiped first. If the cluster does not come
    up, the nodes started are stopped again and ServiceError carries their log tails.
    """
    if brokers not in (1, 3):
        raise ServiceError(f"brokers must be 1 or 3, not {brokers}", brokers=brokers)
    libs = ensure_jars()
    java = _require_tool("java", package="openjdk-17-jre-headless")
    nodes = _plan_nodes(brokers=brokers, base_dir=base_dir)
    for node in nodes:
        node.config_file.write_text(_server_properties(node, nodes), encoding="utf-8")
    cluster_id = _random_uuid(java=java, libs=libs, log_dir=nodes[0].directory)
    _format_all(nodes, java=java, libs=libs, cluster_id=cluster_id)
    state = _launch(nodes, java=java, libs=libs, cluster_id=cluster_id)
    started = time.monotonic()
    try:
        _wait_ready(nodes, state, timeout=timeout)
    except BaseException:
        # Stop the nodes but keep their dirs: the error points at the logs in them, and
        # the next `up` wipes them anyway.
        _stop_nodes(state)
        raise
    log.info(
        "kafka ready at %s (%d broker%s) in %.1f s",
        state.bootstrap,
        brokers,
        "s" if brokers > 1 else "",
        time.monotonic() - started,
    )
    return state


def kafka_answers(state: KafkaState, *, timeout: float = 5.0) -> bool:
    """True when every recorded node runs and the cluster reports all its brokers."""
    alive = all(
        is_running(pid, marker=_marker(data_dir))
        for pid, data_dir in zip(state.pids, state.data_dirs, strict=True)
    )
    if not alive or not all(port_open(port) for port in state.ports):
        return False
    deadline = time.monotonic() + timeout
    admin = _admin_client(state.bootstrap)
    while time.monotonic() < deadline:
        if _broker_count(admin) == state.brokers:
            return True
        time.sleep(0.2)
    return False


def stop_kafka(state: KafkaState) -> None:
    """Stop exactly the recorded nodes and delete their directories."""
    _stop_nodes(state)
    for data_dir in state.data_dirs:
        shutil.rmtree(data_dir, ignore_errors=True)


def node_names(state: KafkaState) -> list[str]:
    """The nodes' names as `python -m dev.services stop|start` takes them: kafka-<id>."""
    return [f"kafka-{node_id}" for node_id in range(1, state.brokers + 1)]


def stopped_nodes(state: KafkaState) -> list[int]:
    """The ids of the recorded nodes whose process does not run."""
    return [
        index + 1
        for index, (pid, data_dir) in enumerate(zip(state.pids, state.data_dirs, strict=True))
        if not is_running(pid, marker=_marker(data_dir))
    ]


def stop_kafka_node(state: KafkaState, node_id: int, *, kill: bool = False) -> None:
    """Stop node `node_id` (SIGTERM, a controlled shutdown; or SIGKILL, a crash); keep its
    directory, so `restart_kafka_node` brings it back with its data."""
    index = node_id - 1
    # A controlled shutdown hands its partitions' leadership over first, which may take
    # longer than `down`'s grace on a busy machine; SIGKILL only if it never finishes.
    stop_processes(
        [(state.pids[index], _marker(state.data_dirs[index]))], grace=_NODE_STOP_GRACE_S, kill=kill
    )


def restart_kafka_node(state: KafkaState, node_id: int, *, timeout: float = 90.0) -> KafkaState:
    """Start the stopped node `node_id` again as it was; wait until it answers and the
    cluster reports every broker. Returns `state` with the node's new pid."""
    libs = ensure_jars(version=state.version)
    java = _require_tool("java", package="openjdk-17-jre-headless")
    nodes = _recorded_nodes(state)
    node = nodes[node_id - 1]
    if not node.config_file.is_file():
        raise ServiceError(
            f"Kafka node {node_id} has no {node.config_file}; its data is gone, so it cannot "
            f"be restarted: run `python -m dev.services down` and `up` for a new stack",
            service="kafka",
            node_id=node_id,
        )
    started = time.monotonic()
    pid = _spawn_node(node, java=java, libs=libs)
    pids = list(state.pids)
    pids[node_id - 1] = pid
    restarted = dataclasses.replace(state, pids=tuple(pids))
    try:
        _wait_node_ready(node, pid, restarted, timeout=timeout)
    except BaseException:
        stop_processes([(pid, node.marker)])
        raise
    log.info(
        "kafka node %d (pid %d) is back in the cluster at %s in %.1f s",
        node_id,
        pid,
        state.bootstrap,
        time.monotonic() - started,
    )
    return restarted


def _stop_nodes(state: KafkaState) -> None:
    targets = zip(state.pids, state.data_dirs, strict=True)
    stop_processes([(pid, _marker(data_dir)) for pid, data_dir in targets])


def _recorded_nodes(state: KafkaState) -> list[_Node]:
    return [
        _Node(node_id=index + 1, port=port, controller_port=controller, directory=Path(data_dir))
        for index, (port, controller, data_dir) in enumerate(
            zip(state.ports, state.controller_ports, state.data_dirs, strict=True)
        )
    ]


def _still_running(pid: int, node: _Node) -> bool:
    """A second look, a moment later, before calling a node dead."""
    time.sleep(0.5)
    return is_running(pid, marker=node.marker)


def _marker(data_dir: str) -> str:
    return str(Path(data_dir) / "server.properties")


def _pom_digest(version: str, *, pom: Path) -> str:
    # A changed pom (say, another log4j2 version) must invalidate the cached jars.
    return hashlib.sha256(pom.read_bytes() + version.encode()).hexdigest()


def _copy_dependencies(*, version: str, output: Path, pom: Path, expect: str) -> None:
    mvn = _require_tool("mvn", package="maven")
    # Maven writes nothing into the pom's folder for this goal, but run it from a scratch
    # copy anyway: the package may be installed read-only.
    with tempfile.TemporaryDirectory(prefix="chatlog-kafka-pom-") as scratch:
        copy = Path(scratch) / "pom.xml"
        shutil.copyfile(pom, copy)
        argv = [
            mvn,
            "-B",
            "-q",
            "-Dstyle.color=never",
            "-f",
            str(copy),
            f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={output}",
            f"-Dkafka.version={version}",
        ]
        result = _run(argv, timeout=_MAVEN_TIMEOUT_S, cwd=Path(scratch))
    if result.returncode != 0 or not any(output.glob(expect)):
        raise ServiceError(
            f"Maven could not fetch the Kafka {version} jars of {pom.name} "
            f"(exit {result.returncode}); "
            f"check that Maven Central is reachable and retry. Maven said:\n"
            f"{_last_lines(result.stdout + result.stderr)}",
            service="kafka",
            version=version,
        )


def _require_tool(name: str, *, package: str) -> str:
    # /usr/bin too: CI may run with a PATH that leaves it out.
    path = shutil.which(name) or shutil.which(name, path="/usr/bin")
    if path is None:
        raise ServiceError(
            f"`{name}` is not installed; install it with "
            f"`apt-get update && apt-get install -y {package}`",
            tool=name,
        )
    return path


def _plan_nodes(*, brokers: int, base_dir: Path) -> list[_Node]:
    ports = free_ports(2 * brokers)
    nodes = []
    for index in range(brokers):
        directory = base_dir / f"kafka-{index + 1}"
        # A leftover dir holds another cluster's id and would refuse to format.
        shutil.rmtree(directory, ignore_errors=True)
        (directory / "data").mkdir(parents=True)
        nodes.append(
            _Node(
                node_id=index + 1,
                port=ports[2 * index],
                controller_port=ports[2 * index + 1],
                directory=directory,
            )
        )
    return nodes


def _server_properties(node: _Node, nodes: Sequence[_Node]) -> str:
    replicas = len(nodes)
    min_isr = 1 if replicas == 1 else 2
    if replicas == 1:
        quorum = f"controller.quorum.bootstrap.servers=127.0.0.1:{node.controller_port}"
    else:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
        quorum = f"controller.quorum.voters={voters}"
    listeners = f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
    lines = [
        "# Written by dev.services.kafka_local; rewritten on every `up`.",
        "process.roles=broker,controller",
        f"node.id={node.node_id}",
        quorum,
        f"listeners={listeners}",
        f"advertised.listeners={listeners}",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={node.directory / 'data'}",
        # chatlog creates its topics explicitly; a typo must fail, not make a topic.
        "auto.create.topics.enable=false",
        "num.partitions=1",
        f"default.replication.factor={replicas}",
        f"min.insync.replicas={min_isr}",
        f"offsets.topic.replication.factor={replicas}",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={min_isr}",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
        # The internal topics default to 50 partitions each; a handful is plenty here and
        # makes the first consumer group or transaction ready sooner.
        "offsets.topic.num.partitions=5",
        "transaction.state.log.num.partitions=5",
        "share.coordinator.state.topic.num.partitions=5",
        # Tests start consumers one after another; the 3 s default only slows them.
        "group.initial.rebalance.delay.ms=0",
        # The log cleaner allocates this buffer up front; the 128 MB default is wasted here.
        "log.cleaner.dedupe.buffer.size=8388608",
    ]
    return "\n".join(lines) + "\n"


def _java(
    java: str, *, libs: Path, log_dir: Path, main: str, options: Sequence[str] = ()
) -> list[str]:
    return [
        java,
        *options,
        f"-Dlog4j2.configurationFile={_LOG4J2_CONFIG}",
        f"-Dchatlog.kafka.log.dir={log_dir}",
        "-cp",
        f"{libs}/*",  # the JVM expands the wildcard itself, no shell needed
        main,
    ]


def _random_uuid(*, java: str, libs: Path, log_dir: Path) -> str:
    argv = [*_java(java, libs=libs, log_dir=log_dir, main="kafka.tools.StorageTool"), "random-uuid"]
    result = _checked(argv, what="StorageTool random-uuid")
    return result.stdout.strip().splitlines()[-1].strip()


def _format_all(nodes: Sequence[_Node], *, java: str, libs: Path, cluster_id: str) -> None:
    started = time.monotonic()
    format_node = functools.partial(
        _format, java=java, libs=libs, cluster_id=cluster_id, standalone=len(nodes) == 1
    )
    # Each format is a JVM start (about a second); format the nodes in parallel. list()
    # collects the results so that a failed format raises here.
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        list(pool.map(format_node, nodes))
    log.info(
        "formatted %d Kafka log dir%s in %.1f s",
        len(nodes),
        "s" if len(nodes) > 1 else "",
        time.monotonic() - started,
    )


def _format(node: _Node, *, java: str, libs: Path, cluster_id: str, standalone: bool) -> None:
    argv = [
        *_java(java, libs=libs, log_dir=node.directory, main="kafka.tools.StorageTool"),
        "format",
        "-t",
        cluster_id,
        "-c",
        str(node.config_file),
    ]
    if standalone:
        # A single dynamic-quorum controller must be told it is the whole quorum; with
        # static controller.quorum.voters the flag is refused.
        argv.append("--standalone")
    _checked(argv, what=f"StorageTool format for Kafka node {node.node_id}")


def _launch(nodes: Sequence[_Node], *, java: str, libs: Path, cluster_id: str) -> KafkaState:
    pids = [_spawn_node(node, java=java, libs=libs) for node in nodes]
    log.info(
        "started Kafka %s node%s (pid %s)",
        KAFKA_VERSION,
        "s" if len(nodes) > 1 else "",
        ", ".join(map(str, pids)),
    )
    return KafkaState(
        bootstrap=",".join(f"127.0.0.1:{n.port}" for n in nodes),
        version=KAFKA_VERSION,
        brokers=len(nodes),
        cluster_id=cluster_id,
        pids=tuple(pids),
        ports=tuple(n.port for n in nodes),
        controller_ports=tuple(n.controller_port for n in nodes),
        data_dirs=tuple(str(n.directory) for n in nodes),
    )


def _spawn_node(node: _Node, *, java: str, libs: Path) -> int:
    argv = [
        *_java(
            java, libs=libs, log_dir=node.directory, main="kafka.Kafka", options=_BROKER_JVM_OPTIONS
        ),
        str(node.config_file),
    ]
    return spawn_detached(argv, log_file=node.directory / "stdout.log")


def _wait_node_ready(node: _Node, pid: int, state: KafkaState, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    admin = None
    while True:
        if not is_running(pid, marker=node.marker) and not _still_running(pid, node):
            raise ServiceError(
                f"Kafka node {node.node_id} (pid {pid}) exited as it restarted; see its logs "
                f"in {node.directory}:\n{_log_tails([node])}",
                service="kafka",
                node_id=node.node_id,
            )
        if port_open(node.port):
            admin = admin or _admin_client(state.bootstrap)
            # The broker count alone is not enough: a node killed a moment ago is still
            # counted until its session with the controller expires (about 9 s), so the
            # new process must answer a request of its own too.
            if _broker_count(admin) == state.brokers and _node_serves(admin, node.node_id):
                return
        if time.monotonic() > deadline:
            raise ServiceError(
                f"Kafka node {node.node_id} did not rejoin the cluster at {state.bootstrap} "
                f"within {timeout:g} s; see its logs in {node.directory}:\n{_log_tails([node])}",
                service="kafka",
                node_id=node.node_id,
            )
        time.sleep(0.2)


def _wait_ready(nodes: Sequence[_Node], state: KafkaState, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    admin = None
    while True:
        for node, pid in zip(nodes, state.pids, strict=True):
            if not is_running(pid, marker=node.marker) and not _still_running(pid, node):
                raise ServiceError(
                    f"Kafka node {node.node_id} (pid {pid}) exited during start-up; "
                    f"see its logs in {node.directory}:\n{_log_tails(nodes)}",
                    service="kafka",
                    node_id=node.node_id,
                )
        # Connect only once every listener is up: librdkafka would retry (and log) a
        # refused connection in the background otherwise.
        if all(port_open(node.port) for node in nodes):
            admin = admin or _admin_client(state.bootstrap)
            if _broker_count(admin) == len(nodes):
                return
        if time.monotonic() > deadline:
            raise ServiceError(
                f"Kafka did not report {len(nodes)} broker(s) at {state.bootstrap} within "
                f"{timeout:g} s; see the logs in {nodes[0].directory.parent}:\n"
                f"{_log_tails(nodes)}",
                service="kafka",
                bootstrap=state.bootstrap,
            )
        time.sleep(0.2)


def _admin_client(bootstrap: str) -> Any:
    # Imported here so that reading the state file never loads librdkafka.
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    # log_level 0: a broker that is down is reported by describe_cluster failing, not by
    # librdkafka printing connection errors on stderr from its own threads.
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})


def _broker_count(admin: Any, *, timeout: float = 2.0) -> int:
    from confluent_kafka import KafkaException  # noqa: PLC0415

    try:
        future = admin.describe_cluster(request_timeout=timeout)
        return len(future.result(timeout=timeout + 1.0).nodes)
    except (KafkaException, TimeoutError):
        return 0


def _node_serves(admin: Any, node_id: int, *, timeout: float = 2.0) -> bool:
    from confluent_kafka import KafkaException  # noqa: PLC0415
    from confluent_kafka.admin import ConfigResource, ResourceType  # noqa: PLC0415

    # A broker's own configs are described by that broker and no other: an answer means
    # this node is up and serving requests.
    resource = ConfigResource(ResourceType.BROKER, str(node_id))
    try:
        futures = admin.describe_configs([resource], request_timeout=timeout)
        futures[resource].result(timeout=timeout + 1.0)
    except (KafkaException, TimeoutError):
        return False
    return True


def _log_tails(nodes: Sequence[_Node]) -> str:
    parts = []
    for node in nodes:
        for name in ("stdout.log", "server.log"):
            parts.append(f"--- node {node.node_id} {name} ---\n{tail(node.directory / name)}")
    return "\n".join(parts)


def _checked(argv: Sequence[str], *, what: str) -> subprocess.CompletedProcess[str]:
    result = _run(argv, timeout=_TOOL_TIMEOUT_S)
    if result.returncode != 0:
        raise ServiceError(
            f"{what} failed (exit {result.returncode}):\n"
            f"{_last_lines(result.stdout + result.stderr)}",
            service="kafka",
        )
    return result


def _run(
    argv: Sequence[str], *, timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(  # noqa: S603 - argv is built here, never from user input
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(
            f"`{' '.join(argv[:2])} …` did not finish within {timeout:.0f} s", service="kafka"
        ) from exc


def _last_lines(text: str, *, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
