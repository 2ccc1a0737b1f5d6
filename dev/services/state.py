"""What the local stack is: the state file, and the processes it names.

`up` records what it started in `<state dir>/services.json` (the full record: pids, ports,
data dirs, Kafka version) and `<state dir>/services.env` (the addresses, one
`KEY=value` a line, for shells and for tools that read dotenv files). The state dir is
`$CHATLOG_STATE_DIR`, else `./.chatlog` relative to the working directory, so each
checkout has its own stack and a test can use a temporary one.

A pid in the state file is only trusted while the process behind it is alive *and* its
command line still names what we started (the node's config file, the Redis port): pids
are reused, and `down` must never signal a stranger. This module therefore also holds the
few process primitives both services share: free ports, a detached spawn, a liveness
check and a stop. It imports only the standard library, so reading the addresses (what
the settings loader does) stays cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from chatlog.local_stack import ADDRESSES_FILE

__all__ = [
    "KAFKA_BOOTSTRAP_ENV",
    "MASTER_KEY_FILE_ENV",
    "RECALL_REDIS_URL_ENV",
    "REDIS_URL_ENV",
    "Addresses",
    "KafkaState",
    "RedisState",
    "ServiceError",
    "StackState",
    "cache_root",
    "ensure_master_key",
    "free_ports",
    "is_running",
    "locked",
    "port_open",
    "read_state",
    "remove_state",
    "spawn_detached",
    "stop_processes",
    "tail",
    "write_state",
]

KAFKA_BOOTSTRAP_ENV = "CHATLOG_KAFKA_BOOTSTRAP"
REDIS_URL_ENV = "CHATLOG_REDIS_URL"
RECALL_REDIS_URL_ENV = "CHATLOG_RECALL_REDIS_URL"
MASTER_KEY_FILE_ENV = "CHATLOG_MASTER_KEY_FILE"
MASTER_KEY_NAME = "master.key"

_JSON_NAME = "services.json"
_ENV_NAME = ADDRESSES_FILE
_LOCK_NAME = ".lock"
_KILL_WAIT_S = 5.0


class ServiceError(RuntimeError):
    """A local service (Kafka broker, Redis server) could not be fetched or started.

    A development tool's error, not chatlog's: the package's errors (`ChatlogError`) are
    what chatlog raises in production, and this one never reaches an application.
    """

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.context = context


@dataclass(frozen=True)
class Addresses:
    """Where the running stack answers, and the master key file it keeps."""

    kafka_bootstrap: str
    redis_url: str
    master_key_file: str = ""
    # The Redis with the query engine that holds the recall index ("": none recorded).
    recall_redis_url: str = ""

    def as_env(self) -> dict[str, str]:
        """The addresses as the environment variables chatlog's settings read."""
        env = {KAFKA_BOOTSTRAP_ENV: self.kafka_bootstrap, REDIS_URL_ENV: self.redis_url}
        if self.recall_redis_url:
            env[RECALL_REDIS_URL_ENV] = self.recall_redis_url
        if self.master_key_file:
            env[MASTER_KEY_FILE_ENV] = self.master_key_file
        return env


@dataclass(frozen=True)
class KafkaState:
    """One local Kafka cluster; the lists are indexed by node (node id = index + 1)."""

    bootstrap: str
    version: str
    brokers: int
    cluster_id: str
    pids: tuple[int, ...]
    ports: tuple[int, ...]
    controller_ports: tuple[int, ...]
    data_dirs: tuple[str, ...]


@dataclass(frozen=True)
class RedisState:
    """One local redis-server."""

    url: str
    pid: int
    port: int
    data_dir: str


@dataclass(frozen=True)
class StackState:
    """Everything `up` started, as recorded in the state file."""

    kafka: KafkaState
    redis: RedisState
    # The local master key (`ensure_master_key`); "" in a state file written before it.
    master_key_file: str = ""
    # Redis Stack, for the recall index; None in a state file written before it.
    recall_redis: RedisState | None = None

    @property
    def addresses(self) -> Addresses:
        """The addresses clients connect to."""
        recall = self.recall_redis.url if self.recall_redis else ""
        return Addresses(self.kafka.bootstrap, self.redis.url, self.master_key_file, recall)


def write_state(state: StackState, *, state_dir: Path) -> None:
    """Record `state`; each file is replaced whole so a reader never sees half of one."""
    state_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "kafka": asdict(state.kafka),
        "redis": asdict(state.redis),
        "master_key_file": state.master_key_file,
        "recall_redis": asdict(state.recall_redis) if state.recall_redis else None,
    }
    _replace_file(state_dir / _JSON_NAME, json.dumps(record, indent=2) + "\n")
    env = "".join(f"{key}={value}\n" for key, value in state.addresses.as_env().items())
    _replace_file(state_dir / _ENV_NAME, env)


def read_state(*, state_dir: Path) -> StackState | None:
    """The recorded stack, or None when there is no state file."""
    path = state_dir / _JSON_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        kafka, redis = record["kafka"], record["redis"]
        return StackState(
            kafka=KafkaState(
                bootstrap=str(kafka["bootstrap"]),
                version=str(kafka["version"]),
                brokers=int(kafka["brokers"]),
                cluster_id=str(kafka["cluster_id"]),
                pids=tuple(int(pid) for pid in kafka["pids"]),
                ports=tuple(int(port) for port in kafka["ports"]),
                controller_ports=tuple(int(port) for port in kafka["controller_ports"]),
                data_dirs=tuple(str(d) for d in kafka["data_dirs"]),
            ),
            redis=_redis_state(redis),
            master_key_file=str(record.get("master_key_file", "")),
            recall_redis=_redis_state(record["recall_redis"])
            if record.get("recall_redis")
            else None,
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ServiceError(
            f"the state file {path} is unreadable ({exc}); stop any chatlog Kafka/Redis "
            f"processes by hand, delete {state_dir} and run `python -m dev.services up`",
            path=str(path),
        ) from exc


def _redis_state(record: Mapping[str, object]) -> RedisState:
    return RedisState(
        url=str(record["url"]),
        pid=int(str(record["pid"])),
        port=int(str(record["port"])),
        data_dir=str(record["data_dir"]),
    )


def ensure_master_key(*, state_dir: Path) -> Path:
    """The local stack's master key file, made once (mode 0600) and kept across `down`.

    Kept, because what it wrapped may outlive a stack (a copy of the keys topic, a test's
    data); made here, so that the embedded default seals every user's data with no setup.
    """
    # Imported here: reading the state file must stay cheap (standard library only).
    from chatlog.schemas.master_keys import new_master_key  # noqa: PLC0415

    path = state_dir / MASTER_KEY_NAME
    if path.exists():
        return path
    state_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(new_master_key("local-1") + "\n")
    os.replace(partial, path)
    return path


def cache_root() -> Path:
    """Where downloads shared by every state dir are kept: ~/.cache/chatlog (or under
    $XDG_CACHE_HOME). A cache only saves time: each user marks what it completed."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chatlog"


def remove_state(*, state_dir: Path) -> None:
    """Forget the stack: the env file first, so nobody reads addresses of a dead stack."""
    for name in (_ENV_NAME, _JSON_NAME):
        (state_dir / name).unlink(missing_ok=True)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` so two `up`/`down` runs never interleave."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / _LOCK_NAME).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports, picked by the kernel (bind to port 0).

    All sockets stay open until every port is picked, so the kernel cannot hand out the
    same port twice; another program may still take one before we bind it, which the
    start-up timeout then reports.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_open(port: int, *, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def spawn_detached(
    argv: Sequence[str], *, log_file: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start `argv` in its own session with stdout and stderr appended to `log_file`, in
    `env` (default: this process's environment).

    posix_spawn rather than subprocess.Popen: the process must outlive this one, and a
    Popen object dropped while its child runs warns (ResourceWarning) on collection.
    `argv[0]` must be an absolute path (posix_spawn does not search PATH).
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_file), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    return os.posix_spawn(
        argv[0],
        list(argv),
        dict(os.environ if env is None else env),
        file_actions=file_actions,
        setsid=True,
    )


def is_running(pid: int, *, marker: str) -> bool:
    """True when `pid` is alive (not a zombie) and its command line contains `marker`."""
    proc = Path("/proc") / str(pid)
    try:
        # The state letter follows the parenthesised command name, which may hold spaces.
        state_letter = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    if state_letter == "Z":
        _reap(pid)
        return False
    if not cmdline.strip():
        # Alive, but its command line is not readable for a moment (a process in the
        # middle of exec, seen under load as a Kafka node reported dead while starting).
        return True
    return marker in cmdline


def stop_processes(
    targets: Sequence[tuple[int, str]], *, grace: float = 10.0, kill: bool = False
) -> None:
    """SIGTERM each `(pid, marker)` still running, wait up to `grace` s, then SIGKILL.

    With `kill`, SIGKILL at once: a crash, with no chance to shut down cleanly. Only pids
    that pass `is_running` with their marker are signalled, so a pid reused by an
    unrelated process is left alone. Returns once every target has exited.
    """
    alive = [(pid, marker) for pid, marker in targets if is_running(pid, marker=marker)]
    if not kill:
        _signal_all(alive, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [(pid, marker) for pid, marker in alive if is_running(pid, marker=marker)]
    _signal_all(alive, signal.SIGKILL)
    deadline = time.monotonic() + _KILL_WAIT_S
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [(pid, marker) for pid, marker in alive if is_running(pid, marker=marker)]
    if alive:
        # Only a process stuck in the kernel (uninterruptible I/O) survives SIGKILL.
        pids = ", ".join(str(pid) for pid, _ in alive)
        raise ServiceError(
            f"pid {pids} did not exit after SIGKILL; check it with `ps -o pid,stat,args -p "
            f"{pids}` and run `python -m dev.services down` again once it is gone",
            pids=[pid for pid, _ in alive],
        )


def tail(path: Path, *, lines: int = 25) -> str:
    """The last `lines` lines of a log file, or a note that it does not exist."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


def _signal_all(targets: Sequence[tuple[int, str]], signum: signal.Signals) -> None:
    for pid, _ in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _reap(pid: int) -> None:
    # A child of this process (a test that ran `up` then `down`) stays a zombie until
    # waited for; processes started by an earlier CLI run were adopted by init instead.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _replace_file(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
