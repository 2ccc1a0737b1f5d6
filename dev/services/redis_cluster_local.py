"""A local three-master Redis Cluster on free loopback ports, for chatlog's cluster tests.

What runs? Three `redis-server --cluster-enabled yes` processes (Debian's package, as the
stack's single server), persistence off, no replicas: enough to spread hash slots over
three masters, which is what chatlog's cluster code must get right (one slot per
session's keys, work over many sessions grouped by slot, SCAN on every master, sharded
pub/sub on the session's shard). Each node gets a client port and a cluster-bus port of
its own (`--cluster-port`), both picked free, so no "port + 10000" can collide.

The slots are handed out with CLUSTER ADDSLOTSRANGE (a third each) and the nodes meet
with CLUSTER MEET: no `redis-cli --cluster create`, whose prompts and output vary by
version. `start_cluster` returns once every node says ``cluster_state:ok`` and knows
three masters.

The record lives in ``<state dir>/redis-cluster/cluster.json``, beside the stack's own
(`dev.services.state`), so a stack runs with or without a cluster; `dev.services.down`
stops both.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dev.services import redis_local
from dev.services.state import RedisState, ServiceError, free_ports, stop_processes

__all__ = [
    "ClusterState",
    "cluster_answers",
    "read_cluster",
    "start_cluster",
    "stop_cluster",
]

log = logging.getLogger(__name__)

MASTERS = 3
SLOTS = 16384
_DIR = "redis-cluster"
_RECORD = "cluster.json"


@dataclass(frozen=True)
class ClusterState:
    """One local Redis Cluster: its nodes, in slot order (node 0 holds slot 0)."""

    nodes: tuple[RedisState, ...]

    @property
    def url(self) -> str:
        """A URL of one node: the cluster client discovers the others from it."""
        return self.nodes[0].url


def read_cluster(*, base_dir: Path) -> ClusterState | None:
    """The recorded cluster, or None."""
    path = base_dir / _DIR / _RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return ClusterState(tuple(RedisState(**node) for node in record["nodes"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ServiceError(
            f"the cluster record {path} is unreadable ({exc}); stop its redis-server "
            f"processes by hand and delete {path.parent}",
            path=str(path),
        ) from exc


def cluster_answers(cluster: ClusterState) -> bool:
    """True when every recorded node runs, answers, and the cluster says it is ok."""
    return all(redis_local.redis_answers(node) for node in cluster.nodes) and all(
        _cluster_ok(node.port) for node in cluster.nodes
    )


def start_cluster(*, base_dir: Path, timeout: float = 30.0) -> ClusterState:
    """Start a three-master cluster in `base_dir/redis-cluster`; return once it is ok."""
    binary = redis_local.ensure_redis_server()
    root = base_dir / _DIR
    shutil.rmtree(root, ignore_errors=True)  # nothing in a stopped cluster is worth keeping
    ports = free_ports(2 * MASTERS)
    nodes: list[RedisState] = []
    started = time.monotonic()
    try:
        for n in range(MASTERS):
            data_dir = root / f"node-{n + 1}"
            data_dir.mkdir(parents=True)
            nodes.append(
                redis_local.launch(
                    redis_local.RedisProgram(
                        binary,
                        arguments=(
                            "--cluster-enabled",
                            "yes",
                            "--cluster-port",
                            str(ports[MASTERS + n]),
                            "--cluster-config-file",
                            str(data_dir / "nodes.conf"),
                            "--cluster-node-timeout",
                            "5000",
                        ),
                    ),
                    port=ports[n],
                    data_dir=data_dir,
                    timeout=timeout,
                )
            )
        _form(nodes, bus_port=ports[MASTERS], timeout=timeout)
        cluster = ClusterState(tuple(nodes))
        (root / _RECORD).write_text(
            json.dumps({"nodes": [asdict(node) for node in nodes]}, indent=2) + "\n",
            encoding="utf-8",
        )
    except BaseException:
        stop_processes([(node.pid, node.data_dir) for node in nodes])
        raise
    log.info(
        "redis cluster ready at %s (%d masters) in %.1f s",
        ", ".join(f"127.0.0.1:{node.port}" for node in nodes),
        MASTERS,
        time.monotonic() - started,
    )
    return cluster


def stop_cluster(*, base_dir: Path) -> None:
    """Stop exactly the recorded nodes and delete the cluster's dir."""
    cluster = read_cluster(base_dir=base_dir)
    if cluster is not None:
        stop_processes([(node.pid, node.data_dir) for node in cluster.nodes])
    shutil.rmtree(base_dir / _DIR, ignore_errors=True)


def _form(nodes: list[RedisState], *, bus_port: int, timeout: float) -> None:
    """A third of the slots to each node, then every node meets the first."""
    import redis  # noqa: PLC0415  (reading the record never loads the client)

    clients = [redis.Redis(host="127.0.0.1", port=node.port) for node in nodes]
    try:
        share = SLOTS // len(nodes)
        for n, client in enumerate(clients):
            last = SLOTS - 1 if n == len(nodes) - 1 else (n + 1) * share - 1
            client.execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER ADDSLOTSRANGE", n * share, last
            )
        for client in clients[1:]:
            # The bus port too: it is not the default port + 10000 here.
            client.execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER MEET", "127.0.0.1", nodes[0].port, bus_port
            )
        deadline = time.monotonic() + timeout
        while not all(_cluster_ok(node.port) for node in nodes):
            if time.monotonic() > deadline:
                info = _info_fields(
                    clients[0].execute_command(  # type: ignore[no-untyped-call]
                        "CLUSTER INFO"
                    )
                )
                raise ServiceError(
                    f"the local Redis Cluster did not form within {timeout:g} s; node 1 "
                    f"says: {info}",
                    service="redis-cluster",
                )
            time.sleep(0.1)
    finally:
        for client in clients:
            client.close()


def _cluster_ok(port: int) -> bool:
    """Whether the node on `port` says the cluster is ok and knows every master."""
    import redis  # noqa: PLC0415

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)
    try:
        info = client.execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER INFO"
        )
    except redis.RedisError:
        return False
    finally:
        client.close()
    fields = _info_fields(info)
    return fields.get("cluster_state") == "ok" and fields.get("cluster_size") == str(MASTERS)


def _info_fields(info: object) -> dict[str, str]:
    """CLUSTER INFO as fields, whether redis-py parsed it or not."""
    if isinstance(info, dict):
        return {str(k): str(v) for k, v in info.items()}
    raw = info.decode() if isinstance(info, bytes) else str(info)
    return dict(line.strip().split(":", 1) for line in raw.splitlines() if ":" in line)
