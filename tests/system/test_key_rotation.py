"""Rotating the master key under traffic, as docs/privacy.md tells an operator to.

A writer appends to a growing set of users (a new one each second, so that keys are made
in every phase) and a reader checks every read, both ways a reader of chatlog reads:
the projected read-model (waiting for the session's last append) and a point-in-time
read of the log, which opens the events itself. A projector runs. Then the steps of
the docs, with traffic all along:

1. everything runs with master key k1 only;
2. every process is given ``k2,k1`` (the new one first) and restarted: the projector
   is restarted, the writer and the reader build new clients;
3. `chatlog keys rotate` re-wraps every data key wrapped under k1 (before it, k2 alone
   opens nothing of a user whose key was made under k1: the check is not vacuous);
4. k1 is dropped: every process is restarted with ``k2`` only.

No read or write may fail, and every read must be whole. Afterwards nothing wrapped
under k1 is left in the key directory (the rotation rewrote it), so nothing needs k1:
a projector with k2 only, on an empty read-model *and* an empty key directory, rebuilds
every session from the log and the keys topic, where records wrapped under k1 may still
lie until compaction (each Kafka key's last record is its k2 wrapping).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from chatlog import wiring
from chatlog.processors.kafka_key_log import read_key_log
from chatlog.producers.commands import append_message
from chatlog.schemas.errors import SessionNotFound
from chatlog.schemas.key_records import KeyRecord, KeysTick, decode_key_record
from chatlog.schemas.master_keys import new_master_key
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope
from chatlog.settings import Settings
from tests.processes import (
    ROOT,
    chatlog_env,
    start_projector,
    stop,
    unique_settings,
    wait_until,
)
from tests.system.traffic import Log

pytestmark = pytest.mark.system

PHASE_S = 3.0  # traffic in each phase
NEW_USER_EVERY = 10  # rounds of 0.1 s


def _key_file(folder: Path, name: str, *entries: str) -> Path:
    path = folder / f"{name}.key"
    path.write_text(",".join(entries) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def _user(session: str) -> str:
    return session.removeprefix("s-")


class Traffic:
    """A writer and a reader thread whose clients are rebuilt from new settings on demand
    (`use`), as restarted processes would be; every failure is kept, none stops them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = Log()
        self.halt = threading.Event()
        self.failures: list[str] = []
        self.outcomes: Counter[str] = Counter()
        # What each read served: (how, session, the offset it reports, its messages).
        self.served: list[tuple[str, str, int, tuple[tuple[int, str], ...]]] = []
        self._swapped = {"writer": threading.Event(), "reader": threading.Event()}
        self._threads = [
            threading.Thread(target=self._write, name="writer"),
            threading.Thread(target=self._read, name="reader"),
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        for thread in self._threads:
            thread.join(60)
        assert not any(t.is_alive() for t in self._threads), "traffic did not stop"

    def use(self, settings: Settings) -> None:
        """Rebuild both threads' clients from `settings`; returns once both did."""
        for swapped in self._swapped.values():
            swapped.clear()
        self.settings = settings
        for name, swapped in self._swapped.items():
            assert swapped.wait(60), f"the {name} did not take the new settings"

    def partial(self) -> list[str]:
        """The reads that did not serve exactly the logged messages up to their offset."""
        return [
            f"{kind} {session} at offset {offset}: {len(got)} messages"
            for kind, session, offset, got in self.served
            if list(got) != self.log.up_to(session, offset)
        ]

    def _fail(self, what: str) -> None:
        self.failures.append(what)
        time.sleep(0.05)

    def _write(self) -> None:
        settings = self.settings
        producer = wiring.producer(settings, flush_on_sigterm=False)
        sessions: list[str] = []
        n = 0
        try:
            while not self.halt.is_set():
                if settings is not self.settings:
                    settings = self.settings
                    fresh = wiring.producer(settings, flush_on_sigterm=False)
                    producer.close()
                    producer = fresh
                self._swapped["writer"].set()
                if n % NEW_USER_EVERY == 0:
                    sessions.append(f"s-{uuid.uuid4().hex[:8]}")
                contents = [f"{s}:{n}" for s in sessions]
                events = [
                    append_message(s, user_id=_user(s), role="user", content=c)
                    for s, c in zip(sessions, contents, strict=True)
                ]
                try:
                    positions = producer.publish_many(events)
                except Exception as exc:
                    self._fail(f"write {n}: {exc!r}")
                    continue
                for session, position, content in zip(sessions, positions, contents, strict=True):
                    self.log.add(session, position, content)
                self.outcomes["written"] += len(positions)
                n += 1
                self.halt.wait(0.1)
        finally:
            producer.close()

    def _read(self) -> None:
        settings = self.settings
        reader, history = wiring.reader(settings), wiring.kafka_history(settings)
        n = 0
        try:
            while not self.halt.is_set():
                if settings is not self.settings:
                    settings = self.settings
                    reader.client.close()
                    reader, history = wiring.reader(settings), wiring.kafka_history(settings)
                self._swapped["reader"].set()
                sessions = sorted(self.log.last())
                if not sessions:
                    time.sleep(0.05)
                    continue
                session = sessions[n % len(sessions)]
                n += 1
                last = self.log.latest(session)
                assert last is not None
                try:
                    if n % 2:
                        context = reader.context(
                            session, user_id=_user(session), after=last, timeout=30
                        )
                        kind = "projected"
                    else:
                        read = history.read(session, user_id=_user(session), as_of=last)
                        if read.skipped:
                            self._fail(f"as_of {session}: {read.skipped} event(s) did not open")
                            continue
                        context = read.context
                        kind = "as_of"
                except Exception as exc:
                    self._fail(f"read {session}: {exc!r}")
                    continue
                # Checked at the end: the writer logs a batch once all of it is acknowledged,
                # and the projector may have applied it before.
                got = tuple((m.offset, m.content) for m in context.messages)
                self.served.append((kind, session, context.position.offset, got))
                self.outcomes[kind] += 1
        finally:
            reader.client.close()


def _rotate(settings: Settings) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "chatlog.cli", "keys", "rotate", "--json"],
        env=chatlog_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _wrappings(settings: Settings, users: list[str]) -> Counter[str]:
    """How many keys in the directory are wrapped under each master key."""
    directory = wiring.key_directory(settings)
    try:
        entries = directory.entries_many(KeyScope("default", u) for u in users)
    finally:
        directory.client.close()
    return Counter(w.kek_id for e in entries.values() for w in e.keys.values())


def test_rotating_the_master_key_under_traffic_fails_nothing_and_the_old_one_can_go(
    kafka, redis_url, redis_prefix, tmp_path
):
    k1, k2 = new_master_key("k1"), new_master_key("k2")
    base = unique_settings(kafka, redis_url, redis_prefix, window=1000, max_overflow=0)
    old, both, new = (
        base.model_copy(update={"master_key_file": _key_file(tmp_path, name, *entries)})
        for name, entries in (("old", [k1]), ("both", [k2, k1]), ("new", [k2]))
    )
    logs = tmp_path / "projector.log"
    projector = start_projector(old, log=logs)
    try:
        with Traffic(old) as traffic:
            time.sleep(PHASE_S)
            phase1_users = len(traffic.log.last())

            stop(projector)  # every process restarted with k2,k1
            projector = start_projector(both, log=logs)
            traffic.use(both)
            time.sleep(PHASE_S)

            # Before the rotation, k2 alone opens nothing of the first user (a key made
            # under k1): the session reads as never written.
            first = next(iter(traffic.log.last()))
            with pytest.raises(SessionNotFound):
                wiring.kafka_history(new).read(
                    first, user_id=_user(first), as_of=traffic.log.latest(first)
                )

            started = time.monotonic()
            rotated = _rotate(both)
            rotate_s = time.monotonic() - started
            time.sleep(PHASE_S)
            users = [_user(s) for s in traffic.log.last()]
            assert _wrappings(both, users) == {"k2": len(users)}, "the directory still holds k1"

            stop(projector)  # k1 dropped and destroyed
            projector = start_projector(new, log=logs)
            traffic.use(new)
            time.sleep(PHASE_S)
        assert projector.poll() is None, "the projector exited"
    finally:
        assert stop(projector) == 0
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.partial() == [], traffic.partial()[:5]
    assert rotated["rewrapped"] >= phase1_users > 0, rotated
    assert rotated["rewrapped"] + rotated["current"] <= len(users)
    assert rotated["erased"] == 0

    # With k2 alone, every session reads whole from the log, the first users' included.
    history = wiring.kafka_history(new)
    for session, offset in traffic.log.last().items():
        at = Position(traffic.log.partitions[session], offset)
        read = history.read(session, user_id=_user(session), as_of=at)
        assert read.skipped == 0, f"{session}: {read.skipped} event(s) did not open with k2"
        got = [(m.offset, m.content) for m in read.context.messages]
        assert got == traffic.log.up_to(session, offset), session

    # Nothing needs k1 any more: with k2 alone, an empty read-model and an empty key
    # directory (a fresh prefix), a projector rebuilds every session from the log and
    # the keys topic.
    rebuilt = new.model_copy(
        update={
            "redis_prefix": f"{redis_prefix}rebuilt",
            "projector_group": f"{new.projector_group}-rebuilt",
        }
    )
    last = traffic.log.last()
    partitions = dict(traffic.log.partitions)
    try:
        fresh = start_projector(rebuilt, log=tmp_path / "rebuilt.log")
        reader = wiring.reader(rebuilt)
        try:
            wait_until(
                lambda: wiring.generations(rebuilt).live() is not None,
                timeout=60,
                what="the rebuilding projector to make a read-model live",
            )
            for session, offset in last.items():
                context = reader.context(
                    session,
                    user_id=_user(session),
                    after=Position(partitions[session], offset),
                    timeout=60,
                )
                got = [(m.offset, m.content) for m in context.messages]
                assert got == traffic.log.up_to(session, offset), session
        finally:
            reader.client.close()
            assert stop(fresh) == 0
    finally:
        client = wiring.redis_client(rebuilt)
        for key in client.scan_iter(f"{rebuilt.redis_prefix}*", count=1000):
            client.unlink(key)
        client.close()
    assert kafka.end_offsets(base.dlq_topic) == {0: 0}, "something was dead-lettered"

    # The keys topic: each key's last record is its k2 wrapping; older k1 records of the
    # same keys remain until compaction removes them.
    latest: dict[bytes, bytes | None] = {}
    in_topic: Counter[str] = Counter()
    for key, value in read_key_log(bootstrap_servers=kafka.bootstrap, topic=base.keys_topic):
        latest[key] = value
        record = decode_key_record(key, value)
        if isinstance(record, KeysTick):  # the projector's
            continue
        assert isinstance(record, KeyRecord)
        in_topic[record.wrapped.kek_id] += 1
    kinds = Counter(
        r.wrapped.kek_id
        for r in (decode_key_record(k, v) for k, v in latest.items())
        if isinstance(r, KeyRecord)
    )
    assert kinds == {"k2": len(last)}, kinds
    print(
        f"\nrotation: {len(last)} users, {phase1_users} made under k1; rotate re-wrapped "
        f"{rotated['rewrapped']:g} ({rotated['current']:g} already k2) in {rotate_s:.1f} s "
        f"(process included); traffic: {traffic.outcomes['written']} appends, "
        f"{traffic.outcomes['projected']} projected and {traffic.outcomes['as_of']} as_of "
        f"reads checked, 0 failed; keys topic records by master key before compaction: "
        f"{dict(in_topic)}"
    )
