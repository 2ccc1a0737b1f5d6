"""What the scenarios stand on: unique names, topics, the projector process, clean-up.

Every scenario gets its own events topic (six partitions), dead-letter topic, Redis key
prefix and consumer group, all named after one run id, so two runs (or two scenarios of
one run) never read each other's data, and the clean-up can find everything it made:
topics and groups by the names it recorded, Redis keys by SCAN on the run's prefix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from bench.plan import Plan
from chatlog import wiring
from chatlog.local_stack import resolve_state_dir
from chatlog.producers.kafka_producer import ConversationProducer
from chatlog.projections.keys import KeySpace
from chatlog.projections.redis_reader import DEFAULT_GENERATION
from chatlog.projections.redis_store import text
from chatlog.schemas.errors import TopicMissing
from chatlog.schemas.events import ConversationEvent
from chatlog.schemas.limits import Rate
from chatlog.schemas.position import Position
from chatlog.settings import Settings
from dev.services.state import read_state

__all__ = [
    "CLEAR",
    "GATEWAY_RATE",
    "SEALED",
    "Alive",
    "BenchStack",
    "ProjectorProcess",
    "ReadModelProbe",
    "Versions",
    "child_env",
    "clear_producer",
    "copy_key_directory",
    "fresh_producer",
    "publish_bulk",
    "running",
    "sealing_variants",
    "source_digest",
    "terminate",
    "variant_producer",
    "variant_settings",
]

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 6
_POM = REPO / "dev" / "services" / "pom.xml"
_STOP_WAIT_S = 20.0
_UNLINK_CHUNK = 500
_PUBLISH_CHUNK = 10_000
_NOTHING_THERE = {KafkaError.GROUP_ID_NOT_FOUND, KafkaError.UNKNOWN_TOPIC_OR_PART}


_PACKAGES = ("chatlog", "schemas", "producers", "processors", "projections")


def source_digest() -> str:
    """A short hash of the code under test (its .py and .avsc files, as on disk now).

    Taken at the start and at the end of a run: in a shared working tree, a table whose
    code changed halfway through describes no version of it, and the header says so.
    """
    digest = hashlib.sha256()
    for package in _PACKAGES:
        for path in sorted((REPO / package).rglob("*")):
            if path.suffix in {".py", ".avsc"} and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(REPO)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Versions:
    """What the numbers were measured on."""

    kafka: str
    redis: str
    python: str
    cores: int


@dataclass
class BenchStack:
    """The Kafka and Redis one run uses, and everything the run created on them."""

    base: Settings
    run_id: str = field(default_factory=lambda: time.strftime("%H%M%S") + secrets.token_hex(2))
    topics: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    replication: int = 0
    _admin: AdminClient | None = None
    _redis: redis.Redis | None = None

    @property
    def admin(self) -> AdminClient:
        """One long-lived admin client (a dropped one cancels its pending futures)."""
        if self._admin is None:
            self._admin = wiring.admin_client(self.base)
        return self._admin

    @property
    def redis(self) -> redis.Redis:
        """A Redis client for the benchmark's own probing and clean-up."""
        if self._redis is None:
            self._redis = wiring.redis_client(self.base)
        return self._redis

    @property
    def redis_root(self) -> str:
        """The prefix under which every Redis key of this run lives."""
        return f"bench:{self.run_id}"

    def scenario(self, name: str, *, partitions: int = PARTITIONS) -> Settings:
        """Settings for scenario `name`, with its topics created (and recorded)."""
        topic = f"bench.{self.run_id}.{name}"
        settings = self.base.model_copy(
            update={
                "topic": topic,
                "dlq_topic": f"{topic}.dlq",
                "keys_topic": f"{topic}.keys",
                "partitions": partitions,
                "redis_prefix": f"{self.redis_root}:{name}",
                "projector_group": f"bench-{self.run_id}-{name}",
            }
        )
        self.topics += [settings.topic, settings.dlq_topic, settings.keys_topic]
        wiring.create_topics(settings)
        found = self.admin.list_topics(settings.topic, timeout=30).topics[settings.topic]
        self.replication = len(found.partitions[0].replicas) if found.partitions else 0
        return settings

    def repetition(self, settings: Settings, rep: str) -> Settings:
        """The same topic, with a read-model prefix and consumer group of their own."""
        return settings.model_copy(
            update={
                "redis_prefix": f"{settings.redis_prefix}:{rep}",
                "projector_group": f"{settings.projector_group}-{rep}",
            }
        )

    def forget_keys(self, prefix: str, *, client: redis.Redis | None = None) -> int:
        """UNLINK every key under `prefix` (in `client`'s Redis, else the run's); returns
        how many there were."""
        on = self.redis if client is None else client
        removed = 0
        batch: list[bytes] = []
        # Our prefixes hold no glob characters (KeySpace allows [A-Za-z0-9_.:-] only).
        for key in on.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= _UNLINK_CHUNK:
                removed += int(on.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(on.unlink(*batch))
        return removed

    def cleanup(self) -> list[str]:
        """Delete the run's topics, consumer groups and Redis keys; returns what failed."""
        problems: list[str] = []
        # Each name once: the admin client refuses a request that repeats one.
        groups, topics = sorted(set(self.groups)), sorted(set(self.topics))
        # A projector with static membership (`instance_id`) stays in its group until its
        # session times out after it stopped: such a group is deleted once it has.
        deadline = time.monotonic() + self.base.session_timeout_s + 10
        while groups:
            futures = self.admin.delete_consumer_groups(groups, request_timeout=30)
            busy: list[str] = []
            for group, future in futures.items():
                try:
                    future.result(30)
                except Exception as exc:  # report, and go on deleting the rest
                    if _still_in_use(exc) and time.monotonic() < deadline:
                        busy.append(group)
                    elif not _gone(exc):
                        problems.append(f"group {group}: {exc}")
            groups = sorted(busy)
            if groups:
                time.sleep(1.0)
        if topics:
            futures = self.admin.delete_topics(topics, operation_timeout=30)
            for topic, future in futures.items():
                try:
                    future.result(30)
                except Exception as exc:
                    if not _gone(exc):
                        problems.append(f"topic {topic}: {exc}")
        try:
            self.forget_keys(self.redis_root)
        except redis.RedisError as exc:
            problems.append(f"redis keys {self.redis_root}:*: {exc}")
        if self._redis is not None:
            self._redis.close()
        return problems

    def versions(self) -> Versions:
        """Kafka (local stack's state file, else the pom), Redis, Python, cores."""
        return Versions(
            kafka=self._kafka_version(),
            redis=str(self.redis.info("server").get("redis_version", "?")),
            python=sys.version.split()[0],
            cores=os.cpu_count() or 0,
        )

    def _kafka_version(self) -> str:
        state = read_state(state_dir=resolve_state_dir(self.base.state_dir))
        if state is not None and state.kafka.bootstrap == self.base.kafka_bootstrap:
            brokers = "broker" if state.kafka.brokers == 1 else "brokers"
            return f"{state.kafka.version} ({state.kafka.brokers} {brokers}, local stack)"
        found = re.search(r"<kafka.version>([^<]+)</kafka.version>", _POM.read_text("utf-8"))
        pinned = found.group(1) if found else "?"
        return f"unknown (not the local stack; the local stack would run {pinned})"


# The gateway scenarios measure the gateway, not its limits: a user's bucket that no load
# here empties, so each request still pays the limiter's Redis call.
GATEWAY_RATE = Rate(count=100_000, unit="s", burst=100_000)


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of a child process whose `Settings.from_env()` are `settings`' own."""
    return {
        **os.environ,
        # Each projector of a group its own static member id (the default, the host
        # name, is one for every process of this machine, and the broker fences all but one).
        "CHATLOG_INSTANCE_ID": settings.instance_id,
        "CHATLOG_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CHATLOG_REDIS_URL": settings.redis_url,
        "CHATLOG_TOPIC": settings.topic,
        "CHATLOG_DLQ_TOPIC": settings.dlq_topic,
        "CHATLOG_KEYS_TOPIC": settings.keys_topic,
        "CHATLOG_REDIS_PREFIX": settings.redis_prefix,
        "CHATLOG_PROJECTOR_GROUP": settings.projector_group,
        **(
            {"CHATLOG_MASTER_KEY_FILE": str(settings.master_key_file)}
            if settings.master_key_file is not None
            else {}
        ),
    }


def clear_producer(settings: Settings) -> ConversationProducer:
    """A producer like `wiring.producer`'s, without a keyring: its events go unsealed.

    The path before sealing (and of events written before it was turned on), for the
    sealing scenario to measure the sealed one beside; everything else is the same.
    """
    return ConversationProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.topic,
        codec=wiring.codec(settings),
        config=settings.kafka,
        delivery_timeout=settings.delivery_timeout_s,
        linger_ms=settings.linger_ms,
        flush_on_sigterm=False,
    )


SEALED = "sealed"
CLEAR = "clear"


def sealing_variants(plan: Plan) -> tuple[str, ...]:
    """The ways a headline row is measured in this run: sealed (as deployed, the row
    itself) and, with `--sealing both`, clear (its twin, `Report.twin`)."""
    return (SEALED, CLEAR) if plan.sealing == "both" else (SEALED,)


def variant_settings(stack: BenchStack, name: str, variant: str, **topic: Any) -> Settings:
    """Scenario `name`'s settings for `variant`, with topics and a prefix of their own:
    the sealed variant is the scenario itself; the clear one is `<name>_clear`."""
    return stack.scenario(name if variant == SEALED else f"{name}_{CLEAR}", **topic)


def variant_producer(settings: Settings, variant: str) -> ConversationProducer:
    """`wiring.producer` (sealed, as deployed) or, for the clear variant, the same
    without a keyring (`clear_producer`). Without a keyring there is no redaction either:
    it records a keyed HMAC of each original under the owner's data key, so a deployment
    with sealing off runs with ``CHATLOG_PII_MODE=off``, and so does the clear variant."""
    if variant == SEALED:
        return wiring.producer(settings, flush_on_sigterm=False)
    return clear_producer(settings)


def copy_key_directory(client: redis.Redis, source: str, target: str) -> int:
    """Copy the key directory of prefix `source` to prefix `target`; how many users.

    A repetition reads the scenario's topic into a read-model prefix of its own, and the
    key directory lives under the prefix: without a copy, the projector or replay would
    start on an empty directory and read the whole keys topic first (`catch_up_keys`,
    seconds), on the clock. Deployed, the writers write their keys through to the
    projector's own prefix, so the directory is there already: copied, off the clock.
    """
    # `<prefix>:keys:`, the part of a user's hash name before the user.
    head, into = (KeySpace(prefix).user_keys("", "").split("{")[0] for prefix in (source, target))
    names = [text(raw) for raw in client.scan_iter(match=f"{head}*", count=1000)]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.copy(name, into + name[len(head) :], replace=True)
    pipe.execute()
    return len(names)


def fresh_producer(settings: Settings, *, timeout: float = 30.0) -> ConversationProducer:
    """`wiring.producer` for topics just created: on three brokers, the broker it asks may
    not list the keys topic yet for a moment (seen under load), which is `TopicMissing`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return wiring.producer(settings, flush_on_sigterm=False)
        except TopicMissing:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def publish_bulk(
    producer: ConversationProducer, events: Sequence[ConversationEvent]
) -> list[Position]:
    """`publish_many` in chunks: librdkafka's local queue holds 100,000 messages at most."""
    positions: list[Position] = []
    for start in range(0, len(events), _PUBLISH_CHUNK):
        positions += producer.publish_many(events[start : start + _PUBLISH_CHUNK])
    return positions


def terminate(process: subprocess.Popen[Any], wait_s: float = _STOP_WAIT_S) -> None:
    """SIGTERM a child that still runs, wait up to `wait_s`, then kill it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ProjectorProcess:
    """`bench.projector_child` in a child process, stopped by SIGTERM."""

    def __init__(
        self, settings: Settings, stack: BenchStack, *, env: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.stack = stack
        self.env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self.totals: dict[str, Any] = {}
        # Files, not pipes: nobody reads the child while it runs, and a full pipe would
        # block it. Both are closed in `stop`.
        self._out = tempfile.TemporaryFile()  # noqa: SIM115
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        stack.groups.append(settings.projector_group)

    def start(self) -> float:
        """Spawn the projector; returns the moment it was spawned (perf_counter)."""
        started = time.perf_counter()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.projector_child"],
            cwd=REPO,
            env={**child_env(self.settings), **self.env},
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
        )
        return started

    @property
    def pid(self) -> int:
        """The child's process id (0 before `start`)."""
        return self._process.pid if self._process is not None else 0

    def check_alive(self) -> None:
        """Raise, with the child's last words, if it has exited."""
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(
                f"the projector exited with {self._process.returncode}:\n{self._tail()}"
            )

    def wait_assigned(
        self, *, timeout: float = 60.0, partitions: int = PARTITIONS, members: int = 1
    ) -> float:
        """Wait until the group has every partition assigned; returns when (perf_counter).

        The broker's view of the group is the observable moment the projector can start
        fetching; it is seen at most one poll (20 ms) late, which slightly flatters the
        throughput over a run of several seconds. With `members` > 1 (several projectors
        in the group), it waits until that many members each hold some of them.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(Exception):  # the group does not exist yet
                held = self.assignment()
                if len(held) >= members and min(held) > 0 and sum(held) >= partitions:
                    return time.perf_counter()
            time.sleep(0.02)
        raise TimeoutError(
            f"the group {self.settings.projector_group} did not have {partitions} partitions "
            f"over {members} member(s) within {timeout:g} s:\n{self._tail()}"
        )

    def assignment(self) -> list[int]:
        """How many partitions each member of the projector's group holds (broker's view)."""
        group = self.settings.projector_group
        described = self.stack.admin.describe_consumer_groups([group], request_timeout=5)[
            group
        ].result(5)
        return sorted(len(member.assignment.topic_partitions) for member in described.members)

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait, then kill if it hangs; returns its totals (empty if none).

        The totals stay in `totals` for whoever started it with `running`.
        """
        process = self._process
        if process is None:
            return {}
        terminate(process)
        self._out.seek(0)
        lines = self._out.read().decode(errors="replace").strip().splitlines()
        self._out.close()
        self._err.close()
        self._process = None
        with contextlib.suppress(ValueError, IndexError):
            self.totals = json.loads(lines[-1])
        return self.totals

    def _tail(self, lines: int = 20) -> str:
        self._err.seek(0)
        return "\n".join(self._err.read().decode(errors="replace").splitlines()[-lines:])


class Alive(Protocol):
    """What a probe checks while it waits: a projector, or a group of them, still runs."""

    def check_alive(self) -> None:
        """Raise, with the last words, if it has exited."""


class ReadModelProbe:
    """Reads `last_offset` straight from the meta hashes, to see how far a projection got."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def keys(self) -> KeySpace:
        """The live generation's key space (the projector names it at start-up)."""
        keys = KeySpace(self.prefix)
        live = self.client.get(keys.pointer)
        return keys.with_generation(text(live) if live else DEFAULT_GENERATION)

    def behind(self, expected: Mapping[str, Position], sessions: Sequence[str]) -> list[str]:
        """The sessions among `sessions` whose view has not reached its expected offset."""
        keys = self.keys()
        pipe = self.client.pipeline(transaction=False)
        for session_id in sessions:
            pipe.hget(keys.meta(session_id), "last_offset")
        return [
            session_id
            for session_id, raw in zip(sessions, pipe.execute(), strict=True)
            if raw is None or int(raw) < expected[session_id].offset
        ]

    def wait_applied(
        self,
        expected: Mapping[str, Position],
        projector: Alive,
        *,
        timeout: float,
        poll_s: float = 0.01,
    ) -> float:
        """Wait until every session's view holds its last event; returns when (perf_counter).

        Polling all sessions every 10 ms would take CPU from the projector on a 2-core
        machine, so the probe first watches only the session that holds each partition's
        last event (each partition is projected in log order), and checks every session
        once those are there; should that full check fail, it keeps checking every session.
        """
        tails: dict[int, str] = {}
        for session_id, position in expected.items():
            known = tails.get(position.partition)
            if known is None or position.offset > expected[known].offset:
                tails[position.partition] = session_id
        watch = sorted(tails.values())
        everyone = sorted(expected)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.behind(expected, watch):
                behind = self.behind(expected, everyone)
                if not behind:
                    return time.perf_counter()
                watch = behind
            projector.check_alive()
            time.sleep(poll_s)
        late = self.behind(expected, everyone)
        raise TimeoutError(
            f"{len(late)} of {len(everyone)} sessions not projected within {timeout:g} s "
            f"(e.g. {late[:3]})"
        )


def _gone(exc: Exception) -> bool:
    """True when a delete failed only because there was nothing to delete.

    A projector stopped before it committed anything leaves no group behind.
    """
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(error, KafkaError) and error.code() in _NOTHING_THERE


def _still_in_use(exc: Exception) -> bool:
    """True when a group could not be deleted only because it still has a member."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(error, KafkaError) and error.code() == KafkaError.NON_EMPTY_GROUP


@contextlib.contextmanager
def running(settings: Settings, stack: BenchStack) -> Iterator[ProjectorProcess]:
    """A started projector that is stopped however the block ends."""
    projector = ProjectorProcess(settings, stack)
    try:
        projector.start()
        yield projector
    finally:
        projector.stop()
