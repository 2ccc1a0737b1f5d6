"""Two writer processes make a new user's key at the same instant: both keys stay usable.

A user's first writer makes their data key: it looks in the key directory, finds none,
makes one, publishes it to the keys topic, waits for the acknowledgement and only then
writes it to the directory. Two writers in different processes that do so within the
same few milliseconds both find no key, and both make one. The keyring's rule (written
in `chatlog.schemas.keyring`) is that both keep theirs: each event names the key that
sealed it, and both keys are in the keys topic and the directory.

Two processes (`tests.system.key_race_writer`) start each of `USERS` new users at the
same wall-clock instant, each writing `MESSAGES` messages to the user's one session,
while a projector runs. Then every message of every user must read back, the same, from
the projected read-model, from a point-in-time read of the log (`as_of`), from every
event of the log opened with the keys, and from `chatlog tail`; and each user has one
key or two, each of which is in the keys topic, the directory and the events it sealed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from chatlog import wiring
from chatlog.processors.kafka_key_log import read_key_log
from chatlog.schemas.key_records import KeyRecord, KeysTick, decode_key_record
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope
from tests.processes import (
    ROOT,
    chatlog_env,
    log_events,
    running_projector,
    unique_settings,
    wait_until,
)

pytestmark = pytest.mark.system

WRITERS = ("a", "b")
USERS = 8
MESSAGES = 3
# Between two users' start instants: room for both writers' appends of one user (a few
# milliseconds each, more on a loaded machine) before the next user starts.
INTERVAL_S = 0.4


def _start_writer(settings, name: str, barrier: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "tests.system.key_race_writer", name, str(barrier)]
    return subprocess.Popen(
        [*argv, str(USERS), str(MESSAGES)],
        env=chatlog_env(settings),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_writers_racing_on_a_new_user_leave_every_message_readable(
    kafka, redis_url, redis_prefix, tmp_path
):
    settings = unique_settings(kafka, redis_url, redis_prefix, partitions=3)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    with running_projector(settings, log=tmp_path / "projector.log"):
        writers = {name: _start_writer(settings, name, barrier) for name in WRITERS}
        try:
            wait_until(
                lambda: (
                    all((barrier / f"ready-{n}").exists() for n in WRITERS)
                    or any(w.poll() is not None for w in writers.values())
                ),
                timeout=60,
                what="both writers to be ready",
            )
            # Written aside and renamed: a writer polling for `go` must never read it empty.
            (barrier / "go.new").write_text(f"{time.time() + 0.5} {INTERVAL_S}")
            (barrier / "go.new").rename(barrier / "go")
            outputs = {name: w.communicate(timeout=120) for name, w in writers.items()}
        finally:
            for w in writers.values():
                if w.poll() is None:
                    w.kill()
                    w.wait(10)
        for name, w in writers.items():
            assert w.returncode == 0, f"writer {name} failed:\n{outputs[name][1][-3000:]}"
        written = [json.loads(line) for out, _ in outputs.values() for line in out.splitlines()]
        assert len(written) == len(WRITERS) * USERS * MESSAGES

        # Per session: (offset, content) of every acknowledged append, in log order.
        expected: dict[str, list[tuple[int, str]]] = defaultdict(list)
        partition_of: dict[str, int] = {}
        for w in sorted(written, key=lambda w: w["offset"]):
            expected[w["session"]].append((w["offset"], w["content"]))
            partition_of[w["session"]] = w["partition"]
        last = {s: Position(partition_of[s], pairs[-1][0]) for s, pairs in expected.items()}

        # The projected read-model: every message, in log order, once.
        reader = wiring.reader(settings)
        try:
            for session, pairs in expected.items():
                user = "u" + session.removeprefix("race-")
                context = reader.context(session, user_id=user, after=last[session], timeout=60)
                assert [(m.offset, m.content) for m in context.messages] == pairs, session
        finally:
            reader.client.close()

    # The log, read at a point in time: no event set aside as undecryptable.
    history = wiring.kafka_history(settings)
    for session, pairs in expected.items():
        user = "u" + session.removeprefix("race-")
        read = history.read(session, user_id=user, as_of=last[session], timeout=30)
        assert read.skipped == 0, f"{session}: {read.skipped} event(s) did not open"
        assert [(m.offset, m.content) for m in read.context.messages] == pairs, session

    # Every event of the log, opened: which key sealed each, and that each key opens.
    sealed_by: dict[str, set[str]] = defaultdict(set)
    codec = wiring.codec(settings)
    for message in kafka.consume_all(settings.topic):
        event = codec.decode(message.value())
        assert event.sealed is not None, "an event reached the log in the clear"
        sealed_by[event.user_id].add(event.sealed.key_id)
    opened = log_events(kafka, settings)
    assert all(e.sealed is None for _, e in opened), "an event of the log does not open"
    by_session: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for offset, event in opened:
        by_session[event.session_id].append((offset, event.payload.content))
    assert {s: sorted(p) for s, p in by_session.items()} == dict(expected)

    # The keys: one or two per user, each in the topic and in the directory.
    in_topic: dict[str, set[str]] = defaultdict(set)
    for key, value in read_key_log(bootstrap_servers=kafka.bootstrap, topic=settings.keys_topic):
        record = decode_key_record(key, value)
        if isinstance(record, KeysTick):  # the projector's
            continue
        assert isinstance(record, KeyRecord), record
        in_topic[record.scope.user_id].add(record.key_id)
    directory = wiring.key_directory(settings)
    users = [f"u{i}" for i in range(USERS)]
    entries = directory.entries_many(KeyScope("default", u) for u in users)
    in_directory = {scope.user_id: set(e.keys) for scope, e in entries.items()}
    directory.client.close()
    for user in users:
        assert 1 <= len(sealed_by[user]) <= len(WRITERS), (user, sealed_by[user])
        assert sealed_by[user] == in_topic[user] == in_directory[user], user

    # And `chatlog tail` of a session whose user got two keys, if any did.
    raced = [u for u in users if len(sealed_by[u]) > 1]
    session = f"race-{(raced or users)[0].removeprefix('u')}"
    tail = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatlog.cli",
            "tail",
            "--operator",
            "--no-follow",
            "--json",
            session,
        ],
        env=chatlog_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tail.returncode == 0, tail.stderr
    tailed = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [(t["offset"], t["payload"]["content"]) for t in tailed] == expected[session]

    twice = Counter(len(keys) for keys in sealed_by.values())
    print(
        f"\nkey race: {twice[2]} of {USERS} users got a key from each writer, "
        f"{twice[1]} got one key; every message of each read back four ways"
    )
