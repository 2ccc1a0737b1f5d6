"""A real redis-server on a free loopback port, with persistence off.

`redis-server` comes from Debian's package. A machine that has never run the project
lacks it, so when this process is root it installs the package with apt-get (the same
command a developer would type; `dev.services.debian`); otherwise it says which command
to run.

The server runs in the foreground of its own session (`--daemonize no`, detached by
`spawn_detached`) so that the pid recorded is the server's own. Its data dir and log
live in `<state dir>/redis/`, and its process title names that dir, which is how `down`
recognises it later even though Redis rewrites its command line.

For fault drills the server can be stopped on its own (`stop_redis_server`) and started
again on the same port and data dir (`restart_redis`). With persistence off, a restarted
server is *empty*: what it held is gone, which is what chatlog's projector calls data
loss (see docs/replay.md), not an outage it waits out.

The same code runs another Redis program (`RedisProgram`): the stack's second server,
Redis Stack with the query engine for the recall index (`dev.services.redis_stack_local`),
is started here with its own binary, module and library path.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dev.services.debian import ensure_programs, find_program
from dev.services.state import (
    RedisState,
    ServiceError,
    free_ports,
    is_running,
    port_open,
    spawn_detached,
    stop_processes,
    tail,
)

__all__ = [
    "RedisProgram",
    "ensure_redis_server",
    "find_redis_server",
    "redis_answers",
    "restart_redis",
    "start_redis",
    "stop_redis",
    "stop_redis_server",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RedisProgram:
    """How to run one kind of redis-server: its binary, the arguments it needs beyond the
    port, data dir and log (modules to load), and what its environment adds."""

    binary: str
    arguments: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    name: str = "redis-server"


def debian_redis() -> RedisProgram:
    """Debian's redis-server, installed with apt-get if missing."""
    return RedisProgram(ensure_redis_server())


def find_redis_server() -> str | None:
    """The path of `redis-server` on PATH or in the usual system dirs, or None."""
    return find_program("redis-server")


def ensure_redis_server() -> str:
    """The path of `redis-server`, installed from Debian's packages if missing."""
    (found,) = ensure_programs(["redis-server"], packages=["redis-server"], service="redis")
    return found


def start_redis(
    *,
    base_dir: Path,
    folder: str = "redis",
    program: RedisProgram | None = None,
    timeout: float = 20.0,
) -> RedisState:
    """Start `program` (Debian's redis-server) in `base_dir/folder` on a free port; wait
    until it answers PING."""
    program = program or debian_redis()
    data_dir = base_dir / folder
    # The dir of a stopped stack holds nothing worth keeping (persistence is off).
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    (port,) = free_ports(1)
    return _launch(program, port=port, data_dir=data_dir, timeout=timeout)


def restart_redis(
    state: RedisState, *, program: RedisProgram | None = None, timeout: float = 20.0
) -> RedisState:
    """Start the recorded server again on its port and data dir; wait until it answers PING.

    Persistence is off, so it starts empty. Returns `state` with the new pid. Fails if
    another program took the port meanwhile.
    """
    program = program or debian_redis()
    data_dir = Path(state.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if port_open(state.port):
        raise ServiceError(
            f"port {state.port} is taken by another program, so {program.name} cannot start "
            f"on it again; find it with `ss -ltnp 'sport = :{state.port}'`, or run "
            f"`python -m dev.services down` and `up` for a new stack",
            service="redis",
            port=state.port,
        )
    return _launch(program, port=state.port, data_dir=data_dir, timeout=timeout)


def _launch(program: RedisProgram, *, port: int, data_dir: Path, timeout: float) -> RedisState:
    argv = [
        program.binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        str(data_dir),
        "--logfile",
        str(data_dir / "redis.log"),
        # Redis rewrites its command line; keep the data dir in it so `down` and the
        # liveness check can tell this server from any other redis-server.
        "--proc-title-template",
        f"{{title}} {{listen-addr}} {data_dir}",
        *program.arguments,
    ]
    started = time.monotonic()
    env = {**os.environ, **program.env} if program.env else None
    pid = spawn_detached(argv, log_file=data_dir / "stdout.log", env=env)
    state = RedisState(
        url=f"redis://127.0.0.1:{port}/0", pid=pid, port=port, data_dir=str(data_dir)
    )
    try:
        _wait_ready(state, name=program.name, timeout=timeout)
    except BaseException:
        # Keep the data dir: the error quotes its log, and the next `up` wipes it.
        stop_processes([(state.pid, state.data_dir)])
        raise
    log.info("%s ready at %s in %.1f s", program.name, state.url, time.monotonic() - started)
    return state


def redis_answers(state: RedisState, *, timeout: float = 2.0) -> bool:
    """True when the recorded server runs and answers PING."""
    if not is_running(state.pid, marker=state.data_dir) or not port_open(state.port):
        return False
    return _ping(state.port, timeout=timeout)


def stop_redis(state: RedisState) -> None:
    """Stop exactly the recorded server and delete its data dir."""
    stop_redis_server(state)
    shutil.rmtree(state.data_dir, ignore_errors=True)


def stop_redis_server(state: RedisState, *, kill: bool = False) -> None:
    """Stop exactly the recorded server (SIGTERM, or SIGKILL with `kill`); keep its dir."""
    stop_processes([(state.pid, state.data_dir)], kill=kill)


def _wait_ready(state: RedisState, *, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    data_dir = Path(state.data_dir)
    while not (port_open(state.port) and _ping(state.port, timeout=1.0)):
        if not is_running(state.pid, marker=state.data_dir):
            raise ServiceError(
                f"{name} (pid {state.pid}) exited during start-up; its log:\n"
                f"{tail(data_dir / 'redis.log')}\n{tail(data_dir / 'stdout.log')}",
                service="redis",
            )
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{name} did not answer PING on 127.0.0.1:{state.port} within "
                f"{timeout:g} s; its log:\n{tail(data_dir / 'redis.log')}",
                service="redis",
            )
        time.sleep(0.05)


def _ping(port: int, *, timeout: float) -> bool:
    # Imported here so that reading the state file never loads the Redis client.
    import redis  # noqa: PLC0415

    client = redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
