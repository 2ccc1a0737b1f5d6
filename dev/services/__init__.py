"""The local Kafka + Redis stack that chatlog's tests, demo and CLI run against.

What is "the stack"? One real Apache Kafka cluster (1 or 3 KRaft nodes, run from the
Maven Central jars by `kafka_local`), one real `redis-server` for the read-model (from
Debian's package, run by `redis_local`), and one Redis Stack server with the query
engine for the recall index (`redis_stack_local`), all on free loopback ports, all
started by `up` and stopped by `down`. No Docker is needed. What runs is recorded in a
state dir (`state`): `$CHATLOG_STATE_DIR`, else `./.chatlog`, where `services.env`
holds the addresses::

    CHATLOG_KAFKA_BOOTSTRAP=127.0.0.1:PORT
    CHATLOG_REDIS_URL=redis://127.0.0.1:PORT/0
    CHATLOG_RECALL_REDIS_URL=redis://127.0.0.1:PORT/0

`up` is idempotent: a recorded stack whose processes run and answer is reused as is; a
stale record (a process gone) is cleaned up and the stack started anew. `down` stops only
the pids it recorded, after checking that each still is the process it started.

For fault drills, one node of a running stack can be stopped and started again:
`stop_node("kafka-2", kill=True)` SIGKILLs that broker, as a crash would;
`start_node("kafka-2")` runs it again with the same config, ports and data dir, and
returns once the cluster reports every broker. `"redis"` names the read-model's Redis
server and `"redis-stack"` the recall index's; each comes back on its port *empty*
(persistence is off). The new pid is recorded, so
`down` still stops exactly what runs. Meanwhile `status` is None and `stopped_nodes`
names what is down; note that `up` treats a stack with a node down as stale and starts
a fresh one, data gone.

From a shell: `python -m dev.services up|down|status|env|stop NODE|start NODE`. Failures
raise `dev.services.state.ServiceError`, whose message says what failed and how to fix it.
"""

from __future__ import annotations

# Submodules and `__all__` only: the package's namespace is its public surface.
import dataclasses
import logging
import pathlib
import time

from chatlog.local_stack import read_addresses, resolve_state_dir
from dev.services import kafka_local, redis_local, redis_stack_local, state
from dev.services.redis_local import RedisProgram
from dev.services.state import Addresses, RedisState

__all__ = [
    "RECALL_REDIS_NODE",
    "REDIS_NODE",
    "Addresses",
    "down",
    "node_names",
    "read_addresses",
    "start_node",
    "status",
    "stop_node",
    "stopped_nodes",
    "up",
]

REDIS_NODE = "redis"
RECALL_REDIS_NODE = "redis-stack"
_RECALL_FOLDER = "redis-stack"

_log = logging.getLogger(__name__)


def up(*, brokers: int = 1, state_dir: pathlib.Path | None = None) -> Addresses:
    """Start the stack, or reuse the one already running; return its addresses.

    Raises ServiceError when a stack with another broker count runs (stop it with `down`
    first), or when Kafka or Redis cannot be fetched or started.
    """
    if brokers not in (1, 3):
        raise state.ServiceError(f"brokers must be 1 or 3, not {brokers}", brokers=brokers)
    directory = resolve_state_dir(state_dir)
    with state.locked(directory):
        existing = state.read_state(state_dir=directory)
        if existing is not None:
            if _answers(existing):
                if not existing.master_key_file:  # recorded before the stack kept a key
                    key_file = str(state.ensure_master_key(state_dir=directory))
                    existing = dataclasses.replace(existing, master_key_file=key_file)
                    state.write_state(existing, state_dir=directory)
                if existing.recall_redis is None:  # recorded before the recall index
                    recall = _start_recall_redis(directory)
                    existing = dataclasses.replace(existing, recall_redis=recall)
                    state.write_state(existing, state_dir=directory)
                return _reuse(existing, brokers=brokers)
            _log.info("the recorded stack in %s no longer runs; cleaning it up", directory)
            _stop(existing, state_dir=directory)
        return _start(brokers=brokers, state_dir=directory).addresses


def down(*, state_dir: pathlib.Path | None = None) -> None:
    """Stop the recorded stack's processes, delete their data dirs and the state file."""
    directory = resolve_state_dir(state_dir)
    if not directory.is_dir():
        _log.info("nothing to stop: %s does not exist", directory)
        return
    with state.locked(directory):
        existing = state.read_state(state_dir=directory)
        if existing is None:
            _log.info("nothing to stop: no stack recorded in %s", directory)
            return
        started = time.monotonic()
        _stop(existing, state_dir=directory)
        _log.info(
            "stopped kafka (pid %s), redis (pid %d) and redis-stack (pid %s) in %.1f s",
            ", ".join(map(str, existing.kafka.pids)),
            existing.redis.pid,
            existing.recall_redis.pid if existing.recall_redis else "-",
            time.monotonic() - started,
        )


def status(*, state_dir: pathlib.Path | None = None) -> Addresses | None:
    """The addresses of the recorded stack if all its processes run and answer, else None."""
    existing = state.read_state(state_dir=resolve_state_dir(state_dir))
    if existing is None or not _answers(existing):
        return None
    return existing.addresses


def node_names(*, state_dir: pathlib.Path | None = None) -> list[str]:
    """The names `stop_node` and `start_node` take for the recorded stack: kafka-1 (to
    kafka-3), redis and redis-stack."""
    return _node_names(_recorded(resolve_state_dir(state_dir)))


def stopped_nodes(*, state_dir: pathlib.Path | None = None) -> list[str]:
    """The recorded stack's nodes whose process does not run (stopped, or crashed)."""
    stack = _recorded(resolve_state_dir(state_dir))
    down = [f"kafka-{node_id}" for node_id in kafka_local.stopped_nodes(stack.kafka)]
    for name, server in _redis_nodes(stack).items():
        if not state.is_running(server.pid, marker=server.data_dir):
            down.append(name)
    return down


def stop_node(name: str, *, kill: bool = False, state_dir: pathlib.Path | None = None) -> None:
    """Stop one node of the running stack (SIGTERM, or SIGKILL with `kill`), keeping its
    data dir for `start_node`. A node that is not running is left as it is."""
    directory = resolve_state_dir(state_dir)
    with state.locked(directory):
        stack = _recorded(directory)
        node_id = _node_id(stack, name)
        started = time.monotonic()
        if node_id is None:
            server = _redis_nodes(stack)[name]
            pid = server.pid
            was_running = state.is_running(pid, marker=server.data_dir)
            redis_local.stop_redis_server(server, kill=kill)
        else:
            pid = stack.kafka.pids[node_id - 1]
            was_running = node_id not in kafka_local.stopped_nodes(stack.kafka)
            kafka_local.stop_kafka_node(stack.kafka, node_id, kill=kill)
    if was_running:
        how = "killed" if kill else "stopped"
        _log.info("%s %s (pid %d) in %.1f s", how, name, pid, time.monotonic() - started)
    else:
        _log.info("%s (pid %d) was not running", name, pid)


def start_node(name: str, *, state_dir: pathlib.Path | None = None) -> None:
    """Start a stopped node of the stack again as it was, and record its new pid.

    A Kafka node runs its own config on its own ports and log dir and has rejoined when
    this returns: the cluster reports every broker and the node answers. Redis answers
    PING on its port, empty. A node that is running is left as it is.
    """
    directory = resolve_state_dir(state_dir)
    with state.locked(directory):
        stack = _recorded(directory)
        node_id = _node_id(stack, name)
        if node_id is None:
            server = _redis_nodes(stack)[name]
            if state.is_running(server.pid, marker=server.data_dir):
                _log.info("%s (pid %d) is running already", name, server.pid)
                return
            if name == RECALL_REDIS_NODE:
                recall = redis_local.restart_redis(server, program=_recall_program())
                stack = dataclasses.replace(stack, recall_redis=recall)
            else:
                stack = dataclasses.replace(stack, redis=redis_local.restart_redis(server))
        else:
            if node_id not in kafka_local.stopped_nodes(stack.kafka):
                _log.info("%s (pid %d) is running already", name, stack.kafka.pids[node_id - 1])
                return
            kafka = kafka_local.restart_kafka_node(stack.kafka, node_id)
            stack = dataclasses.replace(stack, kafka=kafka)
        state.write_state(stack, state_dir=directory)


def _recorded(directory: pathlib.Path) -> state.StackState:
    stack = state.read_state(state_dir=directory)
    if stack is None:
        raise state.ServiceError(
            f"no stack recorded in {directory}; start one with `python -m dev.services up`"
        )
    return stack


def _node_names(stack: state.StackState) -> list[str]:
    return [*kafka_local.node_names(stack.kafka), *_redis_nodes(stack)]


def _redis_nodes(stack: state.StackState) -> dict[str, RedisState]:
    """The stack's Redis servers by node name."""
    nodes = {REDIS_NODE: stack.redis}
    if stack.recall_redis is not None:
        nodes[RECALL_REDIS_NODE] = stack.recall_redis
    return nodes


def _recall_program() -> RedisProgram:
    return redis_stack_local.redis_stack_program()


def _start_recall_redis(directory: pathlib.Path) -> RedisState:
    return redis_local.start_redis(
        base_dir=directory, folder=_RECALL_FOLDER, program=_recall_program()
    )


def _node_id(stack: state.StackState, name: str) -> int | None:
    """The Kafka node id `name` stands for; None for a Redis server."""
    names = _node_names(stack)
    if name not in names:
        raise state.ServiceError(
            f"no node {name!r} in the stack at {stack.kafka.bootstrap}; its nodes are "
            f"{', '.join(names)}",
            node=name,
        )
    return None if name in _redis_nodes(stack) else names.index(name) + 1


def _answers(stack: state.StackState) -> bool:
    # Redis first: it answers in milliseconds, Kafka's check may wait a few seconds. A
    # stack recorded before the recall index had none: `up` adds it.
    return all(
        redis_local.redis_answers(server) for server in _redis_nodes(stack).values()
    ) and kafka_local.kafka_answers(stack.kafka)


def _reuse(stack: state.StackState, *, brokers: int) -> Addresses:
    if stack.kafka.brokers != brokers:
        raise state.ServiceError(
            f"a {stack.kafka.brokers}-broker stack already runs at {stack.kafka.bootstrap}; "
            f"run `python -m dev.services down` first to start a {brokers}-broker one",
            brokers=stack.kafka.brokers,
        )
    _log.info(
        "reusing the running stack: kafka at %s (pid %s), redis at %s (pid %d), redis-stack at %s",
        stack.kafka.bootstrap,
        ", ".join(map(str, stack.kafka.pids)),
        stack.redis.url,
        stack.redis.pid,
        stack.recall_redis.url if stack.recall_redis else "-",
    )
    return stack.addresses


def _start(*, brokers: int, state_dir: pathlib.Path) -> state.StackState:
    # Redis first: it is quick, and it surfaces a missing package before the jar download.
    redis_state = redis_local.start_redis(base_dir=state_dir)
    try:
        recall_state = _start_recall_redis(state_dir)
    except BaseException:
        redis_local.stop_redis(redis_state)
        raise
    try:
        kafka_state = kafka_local.start_kafka(brokers=brokers, base_dir=state_dir)
    except BaseException:
        redis_local.stop_redis(recall_state)
        redis_local.stop_redis(redis_state)
        raise
    key_file = str(state.ensure_master_key(state_dir=state_dir))
    stack = state.StackState(
        kafka=kafka_state, redis=redis_state, master_key_file=key_file, recall_redis=recall_state
    )
    try:
        state.write_state(stack, state_dir=state_dir)
    except BaseException:
        _stop(stack, state_dir=state_dir)
        raise
    return stack


def _stop(stack: state.StackState, *, state_dir: pathlib.Path) -> None:
    # The state file goes last, so an interrupted stop can be run again.
    kafka_local.stop_kafka(stack.kafka)
    for server in _redis_nodes(stack).values():
        redis_local.stop_redis(server)
    state.remove_state(state_dir=state_dir)
