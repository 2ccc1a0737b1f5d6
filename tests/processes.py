"""Helpers for tests that run chatlog's processes and wait on the read-model."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from confluent_kafka import ConsumerGroupState, KafkaError, KafkaException

from chatlog import wiring
from chatlog.client import ChatLog
from chatlog.producers.kafka_topics import keys_topic_config
from chatlog.projections.view import SessionView
from chatlog.schemas.events import ConversationEvent
from chatlog.schemas.master_keys import new_master_key
from chatlog.schemas.sealing import KeyScope
from chatlog.schemas.transport import kafka_setting
from chatlog.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def unique_settings(kafka, redis_url: str, redis_prefix: str, **overrides) -> Settings:
    """Settings on a fresh events topic, DLQ, keys topic, audit topic, Redis prefix and
    consumer group, with the tests' master key."""
    topic = kafka.create_topic("events", partitions=overrides.pop("partitions", 6))
    dlq = kafka.create_topic("dlq", partitions=1)
    keys = create_keys_topic(kafka)
    audit = kafka.create_topic("audit", partitions=overrides.pop("audit_partitions", 2))
    return Settings(
        kafka_bootstrap=kafka.bootstrap,
        redis_url=redis_url,
        topic=topic,
        dlq_topic=dlq,
        keys_topic=keys,
        audit_topic=audit,
        redis_prefix=redis_prefix,
        projector_group=f"projector-{uuid.uuid4().hex[:8]}",
        master_key_file=master_key_file(),
        **overrides,
    )


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete every Redis key under `prefix` (a module's own prefix, after its tests)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{prefix}*", count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


def delete_recall_prefix(recall_redis_url: str, prefix: str) -> None:
    """Drop the recall index of every generation under `prefix`, then delete its keys
    (the documents with them)."""
    import redis

    from chatlog.projections.redis_vectors import recall_generations

    client = redis.Redis.from_url(recall_redis_url)
    try:
        for generation in recall_generations(client, prefix=prefix):
            client.execute_command("FT.DROPINDEX", f"{prefix}:{generation}:recall")
    finally:
        client.close()
    delete_prefix(recall_redis_url, prefix)


def full_chatlog(settings: Settings, *, principal: str | None = None) -> ChatLog:
    """`ChatLog.from_settings` (every part, the audit trail included), its reads waiting
    up to 30 s: a loaded test machine can take longer than the default to project."""
    slow_reads = settings.model_copy(update={"read_timeout_s": 30.0})
    return ChatLog.from_settings(slow_reads, principal=principal, flush_on_sigterm=False)


def opened(settings: Settings, view: SessionView | None) -> SessionView | None:
    """A stored (sealed) view opened with its owner's keys, as a reader opens it."""
    if view is None:
        return None
    entries = wiring.key_directory(settings).entries(KeyScope(view.tenant, view.user_id))
    return wiring.view_opener(settings).open(view, entries)


def create_keys_topic(kafka, *, partitions: int = 2) -> str:
    """A fresh keys topic, compacted as `chatlog topics create` makes it."""
    day_ms = 24 * 3600 * 1000
    return kafka.create_topic("keys", partitions=partitions, config=keys_topic_config(day_ms))


def log_events(kafka, settings: Settings) -> list[tuple[int, ConversationEvent]]:
    """(offset, event) of every event in the events topic, opened with the owners' keys,
    in partition order (an event that does not open is left sealed)."""
    codec, opener = wiring.codec(settings), wiring.opener(settings)
    messages = kafka.consume_all(settings.topic)
    events = [codec.decode(m.value()) for m in messages]
    opened = opener.open_batch(events)
    return [
        (m.offset(), o if isinstance(o, ConversationEvent) else e)
        for m, e, o in zip(messages, events, opened, strict=True)
    ]


@functools.cache
def master_key_file() -> Path:
    """The tests' master key: one random key for the whole test run, in a file of its own."""
    folder = Path(tempfile.mkdtemp(prefix="chatlog-tests-"))
    path = folder / "master.key"
    path.write_text(new_master_key("tests-1") + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def chatlog_env(settings: Settings) -> dict[str, str]:
    """The environment a chatlog process needs to use `settings` (and nothing else)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLOG_")}
    for name, value in settings.describe().items():
        if value is not None:
            env[name] = str(value)
    # `describe` masks the secrets, as `chatlog config` shows them.
    if settings.auth_secret is not None:
        env["CHATLOG_AUTH_SECRET"] = settings.auth_secret.get_secret_value()
    for prop, value in settings.kafka.items():
        env[kafka_setting(prop)] = value
    return env


def chatlog_cli(
    settings: Settings, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`chatlog ARGS...` run to its end on `settings`: its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "chatlog.cli", *args],
        env=chatlog_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_projector(settings: Settings, *, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`chatlog run projector` as a child process (its output appended to `log`)."""
    return start_processor("projector", settings, log=log)


def start_processor(
    name: str, settings: Settings, *, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """`chatlog run <name>` as a child process (its output appended to `log`)."""
    with open(log or os.devnull, "ab") as out:
        # The child gets its own copy of the descriptor; ours closes with the block.
        return subprocess.Popen(
            [sys.executable, "-m", "chatlog.cli", "run", name],
            env=chatlog_env(settings),
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )


def stop(process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM) -> int:
    """Signal `process` and reap it; returns its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        _dump_stacks(process.pid)
        process.kill()
        return process.wait(10)


def _dump_stacks(pid: int) -> None:
    """Where a process that would not stop is stuck (when py-spy is installed)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if Path(spy).exists():
        dump = subprocess.run(
            [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, check=False
        )
        print(f"process {pid} did not stop:\n{dump.stdout}{dump.stderr}", file=sys.stderr)


@contextlib.contextmanager
def running_projector(settings: Settings, **kwargs) -> Iterator[subprocess.Popen[bytes]]:
    """A projector process for the duration of the block, once it has made a read-model
    live (or has exited, for a test that expects it to)."""
    with running_processor("projector", settings, **kwargs) as process:
        # On a fresh prefix the projector creates the first generation when it starts;
        # until then reads are refused (`ReadModelLost`), as before any projector ever
        # ran in production.
        generations = wiring.generations(settings)
        try:
            wait_until(
                lambda: process.poll() is not None or generations.live() is not None,
                timeout=60,
                what="the projector to make a read-model live",
            )
        finally:
            generations.client.close()
        yield process


LOG_TAIL_LINES = 60  # of a processor's log, printed when a block using it fails


@contextlib.contextmanager
def running_processor(name: str, settings: Settings, **kwargs) -> Iterator[subprocess.Popen[bytes]]:
    """`chatlog run <name>` for the duration of the block; on a failure in the block, the
    tail of its log is printed, so that a failed run says what the process was doing."""
    process = start_processor(name, settings, **kwargs)
    try:
        yield process
    except BaseException:
        stop(process)
        log = kwargs.get("log")
        if log is not None and Path(log).exists():
            tail = Path(log).read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            print(f"--- the last lines of {name}'s log ---", *tail, sep="\n")
        raise
    else:
        stop(process)


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, every: float = 0.05
) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


# What describe_consumer_groups answers before the group coordinator is up; librdkafka
# does not flag all of them retriable.
_COORDINATOR_NOT_READY = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


def wait_for_group(kafka, group_id: str, *, timeout: float = 60.0) -> None:
    """Wait until consumer group `group_id` is stable with partitions assigned."""

    def assigned() -> bool:
        try:
            description = kafka.admin().describe_consumer_groups([group_id])[group_id].result(10)
        except KafkaException as e:
            # A broker that has just started has no group coordinator yet.
            if e.args and e.args[0].code() in _COORDINATOR_NOT_READY:
                return False
            raise
        return description.state == ConsumerGroupState.STABLE and any(
            member.assignment.topic_partitions for member in description.members
        )

    wait_until(assigned, timeout=timeout, what=f"consumer group {group_id} to get partitions")


def owners(kafka, group_id: str, *, stable: bool = False) -> dict[str, set[int]]:
    """Each member's partitions, by group.instance.id, as the broker sees the group; if
    `stable`, none while it rebalances (a member listed then may not have joined yet)."""
    described = kafka.admin().describe_consumer_groups([group_id])[group_id].result(10)
    if stable and described.state != ConsumerGroupState.STABLE:
        return {}
    return {
        m.group_instance_id: {tp.partition for tp in m.assignment.topic_partitions}
        for m in described.members
    }


def free_port() -> int:
    """A TCP port free on the loopback interface right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_gateway(
    settings: Settings,
    *,
    log: Path | None = None,
    timeout: float = 60.0,
    args: Sequence[str] = (),
) -> Iterator[str]:
    """`chatlog serve [args]` as a child process on a free port for the duration of the
    block, once it answers /healthz; yields its base URL."""
    import httpx

    assert settings.auth_secret or settings.auth_jwks_url, "the gateway needs a token key"
    port = free_port()
    with open(log or os.devnull, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatlog.cli", "serve", "--port", str(port), *args],
            env=chatlog_env(settings),
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"chatlog serve exited with {process.returncode}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, timeout=timeout, what="chatlog serve to answer /healthz", every=0.1)
        yield url
    except BaseException:
        stop(process)
        if log is not None and Path(log).exists():
            tail = Path(log).read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            print("--- the last lines of chatlog serve's log ---", *tail, sep="\n")
        raise
    else:
        assert stop(process) == 0, "chatlog serve did not stop cleanly on SIGTERM"


def run_shell(settings: Settings, script: str, *, gateway: str) -> subprocess.CompletedProcess[str]:
    """`script` in bash (-euo pipefail), as a reader's shell would run it: `chatlog` on
    the PATH, the settings' environment and ``$GATEWAY``; it must succeed."""
    env = chatlog_env(settings)
    env["GATEWAY"] = gateway
    # `chatlog` as installed beside this interpreter, as a reader's shell would find it.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    return ran


def run_docs_block(
    page: str, after: str, settings: Settings, *, gateway: str, count: int = 1
) -> list[str]:
    """Run the first `count` ``sh`` blocks after the text `after` in docs/`page` as one
    script (`run_shell`); its output lines."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    blocks = text.split(after, 1)[1].split("```sh\n")[1 : count + 1]
    script = "\n".join(part.split("```", 1)[0] for part in blocks)
    return run_shell(settings, script, gateway=gateway).stdout.splitlines()
