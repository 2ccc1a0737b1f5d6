"""Helpers for tests that run chatlog's processes and wait on the read-model."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from chatlog.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def unique_settings(kafka, redis_url: str, redis_prefix: str, **overrides) -> Settings:
    """Settings on a fresh events topic, DLQ, Redis prefix and consumer group."""
    topic = kafka.create_topic("events", partitions=overrides.pop("partitions", 6))
    dlq = kafka.create_topic("dlq", partitions=1)
    return Settings(
        kafka_bootstrap=kafka.bootstrap,
        redis_url=redis_url,
        topic=topic,
        dlq_topic=dlq,
        redis_prefix=redis_prefix,
        projector_group=f"projector-{uuid.uuid4().hex[:8]}",
        **overrides,
    )


def chatlog_env(settings: Settings) -> dict[str, str]:
    """The environment a chatlog process needs to use `settings` (and nothing else)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATLOG_")}
    for name, value in settings.describe().items():
        if value is not None:
            env[name] = str(value)
    return env


def start_projector(settings: Settings, *, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`chatlog run projector` as a child process (its output appended to `log`)."""
    with open(log or os.devnull, "ab") as out:
        # The child gets its own copy of the descriptor; ours closes with the block.
        return subprocess.Popen(
            [sys.executable, "-m", "chatlog.cli", "run", "projector"],
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
    """A projector process for the duration of the block."""
    process = start_projector(settings, **kwargs)
    try:
        yield process
    finally:
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
