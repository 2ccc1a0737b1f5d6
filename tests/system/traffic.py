"""Traffic for the fault tests: appends all along, and a reader that checks every read.

Every fault test asks the same two questions: did anything get lost or doubled, and did
a reader ever get a partial session? Both answers are only as good as the check behind
them, so the check is written here once:

* `Publisher` appends one message to each of its sessions every 0.1 s, from a thread,
  and records in a `Log` the offset and content the broker acknowledged;
* `Reader` reads every session's context in turn from a thread, all through the fault,
  and keeps a digest of each context it gets. Afterwards `check_against` compares each
  one with the log: a context must hold exactly its session's messages up to the
  position it reports (no gap, no duplicate, in order). That is every message, since no
  summarizer runs and the tests raise `max_overflow` so that none is dropped. Errors
  are counted by class; only those that say "no answer, retry" are expected;
* `whole` is the end state: every session served, up to its last append, exactly once;
* `PrivateRedis` is a redis-server of the test's own, which it may stall, kill and restart
  (the shared test Redis must not be touched).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from chatlog import wiring
from chatlog.producers.commands import append_message
from chatlog.producers.partitioning import partition_for
from chatlog.projections.context import Context
from chatlog.schemas.errors import ReadModelLost, ReadTimeout, SessionNotFound, StoreUnavailable
from chatlog.schemas.position import Position
from chatlog.settings import Settings
from dev.services.redis_local import ensure_redis_server
from dev.services.state import free_ports
from tests.processes import wait_until

# What a read may raise while Redis is down, stalled or lost: "no answer (in time), or
# nothing to serve yet: retry". A partial or missing session is never among them.
EXPECTED_READ_ERRORS = (StoreUnavailable, ReadTimeout, ReadModelLost)


class PrivateRedis:
    """A redis-server of this test's own, which it may stall, kill and restart."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        (self.port,) = free_ports(1)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [ensure_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.data_dir), "--save", "", "--daemonize", "no"]
        # Every acknowledged write is on disk, as a production Redis that must not lose
        # the read-model would be configured: a restart then keeps everything.
        argv += ["--appendonly", "yes", "--appendfsync", "always"]
        argv += ["--logfile", str(self.data_dir / "redis.log")]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        wait_until(lambda: _pings(client), timeout=20, what=f"redis-server on {self.port}")
        client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class Log:
    """What was appended: per session, (offset, content) in order, and where it lives."""

    sent: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, session: str, position: Position, content: str) -> None:
        with self.lock:
            self.sent.setdefault(session, []).append((position.offset, content))
            self.partitions[session] = position.partition

    def last(self) -> dict[str, int]:
        with self.lock:
            return {s: entries[-1][0] for s, entries in self.sent.items()}

    def latest(self, session: str) -> Position | None:
        """The position of the session's last append (None: none yet)."""
        with self.lock:
            entries = self.sent.get(session)
            return Position(self.partitions[session], entries[-1][0]) if entries else None

    def contents(self, session: str) -> list[str]:
        with self.lock:
            return [c for _, c in self.sent.get(session, [])]

    def up_to(self, session: str, offset: int) -> list[tuple[int, str]]:
        """The session's (offset, content) pairs up to `offset`, in order."""
        with self.lock:
            return [(o, c) for o, c in self.sent.get(session, []) if o <= offset]

    def total(self) -> int:
        with self.lock:
            return sum(len(entries) for entries in self.sent.values())


def publish_round(producer, log: Log, sessions: Sequence[str], n: int) -> None:
    """Append message `n` to every session in one batch; record what was acknowledged."""
    events = [append_message(s, user_id="u1", role="user", content=f"{s}:{n}") for s in sessions]
    for session, position in zip(sessions, producer.publish_many(events), strict=True):
        log.add(session, position, f"{session}:{n}")


class Publisher(threading.Thread):
    """Appends one message to every session every `every_s` seconds until stopped."""

    def __init__(
        self,
        settings: Settings,
        log: Log,
        sessions: Sequence[str],
        *,
        start: int = 0,
        every_s: float = 0.1,
    ) -> None:
        super().__init__(name="publisher")
        self.settings, self.log, self.sessions = settings, log, list(sessions)
        self.n, self.every_s = start, every_s
        self.halt = threading.Event()

    def __enter__(self) -> Publisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self) -> None:
        with wiring.producer(self.settings, flush_on_sigterm=False) as producer:
            while not self.halt.is_set():
                publish_round(producer, self.log, self.sessions, self.n)
                self.n += 1
                self.halt.wait(self.every_s)

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(60)
        assert not self.is_alive(), "the publisher did not stop"


def sessions_on_every_partition(
    partitions: int, *, per_partition: int = 1, prefix: str = "s"
) -> list[str]:
    """Session ids (`<prefix><n>`) that put `per_partition` sessions on each of
    `partitions` partitions, so that traffic (or a probe) reaches every partition
    whichever projector owns it."""
    chosen: list[str] = []
    count = dict.fromkeys(range(partitions), 0)
    n = 0
    while any(c < per_partition for c in count.values()):
        session = f"{prefix}{n}"
        partition = partition_for(session, partitions)
        if count[partition] < per_partition:
            count[partition] += 1
            chosen.append(session)
        n += 1
    return chosen


@dataclass(frozen=True, slots=True)
class Served:
    """One context the reader got, small enough to keep thousands of."""

    session: str
    offset: int  # the position the context reports
    count: int
    digest: int  # of its messages' (offset, content) pairs, in order
    at: float  # time.monotonic() when it arrived
    waited_for: int  # the offset of the append it waited for (`after=`); -1: none


def _digest(pairs: Sequence[tuple[int, str]]) -> int:
    return hash(tuple(pairs))


class Reader(threading.Thread):
    """Reads every session's context in turn until stopped; keeps what it got.

    Every other round of reads waits for each session's last acknowledged append
    (`after=`, bounded by `after_timeout_s`), as a chat back end does right after its
    user's message, so that the read-your-writes path is checked through the fault too.
    """

    def __init__(
        self,
        settings: Settings,
        log: Log,
        sessions: Sequence[str],
        *,
        after_timeout_s: float = 0.5,
    ) -> None:
        super().__init__(name="reader")
        self.reader = wiring.reader(settings)
        self.log, self.sessions, self.after_timeout_s = log, list(sessions), after_timeout_s
        self.halt = threading.Event()
        self.served: list[Served] = []
        # By outcome: "served" or the class name of what was raised.
        self.outcomes: Counter[str] = Counter()
        self.unexpected: list[BaseException] = []

    def __enter__(self) -> Reader:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            session = self.sessions[n % len(self.sessions)]
            # Every other round: each session is read both ways.
            after = self.log.latest(session) if n // len(self.sessions) % 2 else None
            n += 1
            try:
                context = self.reader.context(
                    session, user_id="u1", after=after, timeout=self.after_timeout_s
                )
            except EXPECTED_READ_ERRORS as exc:
                self.outcomes[type(exc).__name__] += 1
                time.sleep(0.02)  # as a client would back off; not a busy loop on a refusal
                continue
            except Exception as exc:  # a session not found that exists is a lost one
                self.outcomes[type(exc).__name__] += 1
                self.unexpected.append(exc)
                continue
            self.outcomes["served"] += 1
            self.served.append(_served(context, -1 if after is None else after.offset))
            time.sleep(0.002)

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(30)
        assert not self.is_alive(), "the reader did not stop"
        self.reader.client.close()

    def served_after(self, moment: float) -> float | None:
        """Seconds from `moment` to the first context served after it (None: none)."""
        return next((s.at - moment for s in self.served if s.at > moment), None)

    def check_against(self, log: Log, *, never_back: bool = True) -> int:
        """Assert every context it got was whole; returns how many were checked.

        Whole: exactly the session's messages up to the position it reports, and that
        position at least the append a read-your-writes read waited for. `never_back`:
        also that no session's position ever went back between two reads, which holds
        unless the test restores an older copy of Redis on purpose."""
        assert not self.unexpected, self.unexpected[:3]
        seen: dict[str, int] = {}
        for got in self.served:
            expected = log.up_to(got.session, got.offset)
            last = expected[-1][0] if expected else None
            assert last == got.offset, (
                f"{got.session} was served at offset {got.offset}, not one of its appends"
            )
            assert (got.count, got.digest) == (len(expected), _digest(expected)), (
                f"{got.session} at offset {got.offset} was served {got.count} messages, not "
                f"the {len(expected)} the log has up to there: a partial view"
            )
            assert got.offset >= got.waited_for, (
                f"{got.session} was served at offset {got.offset}, before the append at "
                f"{got.waited_for} that the read waited for"
            )
            if never_back:
                assert got.offset >= seen.get(got.session, -1), (
                    f"{got.session} was served at offset {got.offset} after "
                    f"{seen[got.session]}: it went back"
                )
            seen[got.session] = got.offset
        return len(self.served)

    def summary(self) -> str:
        return ", ".join(f"{n} {outcome}" for outcome, n in self.outcomes.most_common())


def _served(context: Context, waited_for: int) -> Served:
    pairs = [(m.offset, m.content) for m in context.messages]
    offset = context.position.offset
    return Served(
        context.session_id, offset, len(pairs), _digest(pairs), time.monotonic(), waited_for
    )


def whole(settings: Settings, log: Log, last: dict[str, int]) -> bool:
    """Every session is served up to `last`, holding each appended message once, in order."""
    reader = wiring.reader(settings)
    try:
        for session, offset in last.items():
            context = reader.context(session, user_id="u1")
            if context.position.offset < offset:
                return False
            expected = log.up_to(session, context.position.offset)
            assert [(m.offset, m.content) for m in context.messages] == expected, session
            assert context.message_count == len(expected), f"{session} lost or doubled"
    except (ReadModelLost, SessionNotFound, StoreUnavailable):  # not yet, or not again yet
        return False
    finally:
        reader.client.close()
    return True
