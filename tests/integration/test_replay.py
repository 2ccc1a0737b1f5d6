"""Replay end to end: rebuild from the log into a new generation and switch with no
downtime; verify the live generation against the log; recover from lost Redis data.
Real Kafka, real Redis, the projector as a process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from chatlog import wiring
from chatlog.processors import kafka_replay
from chatlog.processors.kafka_replay import ReplayProgress
from chatlog.processors.replay import rebuild, verify
from chatlog.producers.commands import append_message, new_event
from chatlog.schemas.errors import ChatlogError, Interrupted
from chatlog.schemas.events import MessageRedacted, SessionClosed, SummaryUpdated, UserErased
from chatlog.settings import Settings
from tests.processes import (
    ROOT,
    chatlog_env,
    running_projector,
    start_projector,
    stop,
    unique_settings,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(kafka, redis_url, redis_prefix) -> Settings:
    return unique_settings(kafka, redis_url, redis_prefix, partitions=4)


def user(session: int) -> str:
    return f"u{session % 97}"


def events(total: int, sessions: int, start: int = 0) -> list:
    """Messages over `sessions`, with a redaction, a summary, a close and an erasure."""
    out = []
    for n in range(start, start + total):
        s = n % sessions
        out.append(
            append_message(
                f"s{s}", user_id=user(s), role="user" if n % 2 else "assistant", content=f"m{n}"
            )
        )
    extras = [
        (1, MessageRedacted(message_id=out[1].payload.message_id)),
        (2, SummaryUpdated(summary="earlier turns", through_offset=5, model="test")),
        (3, SessionClosed()),
        (4, UserErased()),
    ]
    out.extend(new_event(f"s{s}", user_id=user(s), payload=payload) for s, payload in extras)
    return out


def publish(settings: Settings, batch: list) -> dict[int, int]:
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        for start in range(0, len(batch), 5000):
            producer.publish_many(batch[start : start + 5000])
    return ends(settings)


def ends(settings: Settings) -> dict[int, int]:
    admin = wiring.admin_client(settings)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "ends"})
    try:
        partitions = admin.list_topics(settings.topic, timeout=10).topics[settings.topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(settings.topic, p), timeout=10)[1]
            for p in partitions.partitions
        }
    finally:
        consumer.close()


def projected(settings: Settings, until: dict[int, int]) -> bool:
    store = wiring.generation_store(settings, wiring.generations(settings).live() or "g1")
    marks = store.progress()
    return all(marks.get(p, -1) >= end - 1 for p, end in until.items() if end)


def test_a_replay_of_100000_events_equals_the_live_read_model_key_for_key(settings):
    with running_projector(settings):
        until = publish(settings, events(100_000, 2_000))
        wait_until(lambda: projected(settings, until), timeout=120, what="live projection")
        report = rebuild(wiring.replay_parts(settings), keep_old=True, handover_s=0.5)
    generations = wiring.generations(settings)
    assert (report.replaced, report.generation, generations.live()) == ("g1", "g2", "g2")
    assert report.events == 100_004
    comparison = generations.compare("g1", "g2")
    assert comparison.sessions == 2_000
    assert comparison.users == 97
    assert comparison.differences == []


def test_a_replay_by_worker_processes_equals_the_live_read_model(settings):
    with running_projector(settings):
        until = publish(settings, events(4_000, 200))
        wait_until(lambda: projected(settings, until), timeout=60, what="live projection")
        reports: list[tuple[str, int]] = []
        report = rebuild(
            wiring.replay_parts(settings),
            keep_old=True,
            handover_s=0.5,
            workers=2,
            on_progress=lambda progress: reports.append((progress.phase, progress.done)),
        )
    assert (report.replaced, report.generation) == ("g1", "g2")
    assert report.events == 4_004
    # The rebuild phase's last report counts the workers' last records too.
    assert [done for phase, done in reports if phase == "rebuild"][-1] == 4_004
    comparison = wiring.generations(settings).compare("g1", "g2")
    assert comparison.sessions == 200
    assert comparison.differences == []


def test_a_rebuild_reads_one_partition_at_a_time_and_drops_its_views_when_done(
    settings, monkeypatch
):
    until = publish(settings, events(2_000, 40))
    store = wiring.generation_store(settings, "g1")
    wiring.generations(settings).create("g1")
    # Fewer than a partition's ~500 records, so that each is read alone at first.
    monkeypatch.setattr(kafka_replay, "READ_AHEAD_RECORDS", 200)
    replay = wiring.kafka_replay(settings, store, batch_size=100)
    batches: list[set[int]] = []
    done: list[int] = []  # partitions whose views were dropped, in order
    left: list[set[int]] = []  # the partitions of the views cached after each drop
    read_by: list[int] = []  # how many batches had been read at each drop
    fetched: list[tuple[int, dict[int, int]]] = []  # each partition assigned, and positions
    handle, forget = replay.core.handle, replay.core.forget_partitions
    fetch = replay._fetch

    def recorded(records):  # type: ignore[no-untyped-def]
        batches.append({r.partition for r in records})
        return handle(records)

    def forgotten(partitions):  # type: ignore[no-untyped-def]
        forget(partitions)
        done.extend(partitions)
        read_by.append(len(batches))
        left.append({view.partition for view in replay.core._cache.values()})

    def fetching(partition):  # type: ignore[no-untyped-def]
        fetched.append((partition, dict(replay.position)))
        fetch(partition)

    replay.core.handle = recorded  # type: ignore[method-assign]
    replay.core.forget_partitions = forgotten  # type: ignore[method-assign]
    replay._fetch = fetching  # type: ignore[method-assign]
    try:
        ends_seen = replay.start()
        assert ends_seen == until
        replay.run_to(ends_seen, ReplayProgress("rebuild"))
    finally:
        replay.close()
    read = sorted(p for p, end in until.items() if end)
    assert len(read) > 2
    # Each partition after the first is assigned once the one before it has at most
    # READ_AHEAD_RECORDS left, never earlier: ...
    assert [p for p, _ in fetched] == read[1:]
    for (_, position), before in zip(fetched, read, strict=False):
        assert 0 <= until[before] - position[before] <= 200
    # ... so batches mix at most two partitions, begun in order, ...
    assert all(len(b) <= 2 for b in batches)
    begun = [min(n for n, b in enumerate(batches) if p in b) for p in read]
    assert begun == sorted(begun)
    for k in range(2, len(read)):
        assert begun[k] >= read_by[k - 2]
    assert done == read  # ... each done in turn, its views then dropped,
    assert all(not (left[n] & set(done[: n + 1])) for n in range(len(done)))
    for partition, count in zip(done, read_by, strict=True):  # and never read again
        assert all(partition not in b for b in batches[count:])
    assert store.progress() == {p: end - 1 for p, end in until.items() if end}


def test_a_replay_during_live_traffic_switches_without_a_failed_read(settings):
    publish(settings, events(20_000, 500))
    failures: list[str] = []
    done = threading.Event()
    appended = [0]

    def traffic() -> None:
        chat = wiring.reader(settings)
        with wiring.producer(settings, flush_on_sigterm=False) as producer:
            n = 0
            while not done.is_set():
                session = f"live{n % 50}"
                position = producer.append(session, user_id="carol", role="user", content=str(n))
                try:
                    context = chat.context(session, user_id="carol", after=position, timeout=10)
                    if context.messages[-1].content != str(n):
                        failures.append(f"{session}: {context.messages[-1].content} != {n}")
                except ChatlogError as exc:
                    failures.append(f"{session}: {exc}")
                n += 1
        appended[0] = n

    with running_projector(settings):
        wait_until(lambda: projected(settings, ends(settings)), timeout=60, what="projection")
        writer = threading.Thread(target=traffic)
        writer.start()
        try:
            report = rebuild(wiring.replay_parts(settings), handover_s=3.0)
            time.sleep(1.0)  # traffic continues in the new generation
        finally:
            done.set()
            writer.join(60)
        wait_until(lambda: projected(settings, ends(settings)), timeout=60, what="catch up")
        result = verify(wiring.replay_parts(settings))
    assert failures == []
    assert appended[0] > 50
    assert report.generation == "g2"
    assert not wiring.generations(settings).exists("g1")  # the old one is deleted
    assert result.live == "g2"
    assert result.differences == []


def test_an_interrupted_replay_leaves_the_live_generation_serving_and_resumes(settings):
    with running_projector(settings):
        until = publish(settings, events(40_000, 400))
        wait_until(lambda: projected(settings, until), timeout=60, what="live projection")
        stop_replay = threading.Event()

        def interrupt_halfway(progress: ReplayProgress) -> None:
            if progress.done >= 10_000:
                stop_replay.set()

        with pytest.raises(Interrupted):
            rebuild(
                wiring.replay_parts(settings, batch_size=2_000),
                stop=stop_replay,
                on_progress=interrupt_halfway,
            )
        generations = wiring.generations(settings)
        assert generations.live() == "g1"
        assert generations.rebuild_in_progress()["generation"] == "g2"
        context = wiring.reader(settings).context("s7", user_id=user(7))
        assert context.message_count == 100

        report = rebuild(wiring.replay_parts(settings), handover_s=0.5)
    assert report.resumed
    assert report.generation == "g2"
    assert 0 < report.events < 40_004  # it went on from where it was stopped
    assert verify(wiring.replay_parts(settings)).differences == []
    assert wiring.generations(settings).rebuild_in_progress() == {}


def test_verify_names_the_keys_that_differ_from_the_log(settings, redis_url):
    with running_projector(settings):
        until = publish(settings, events(3_000, 100))
        wait_until(lambda: projected(settings, until), timeout=60, what="live projection")
        assert verify(wiring.replay_parts(settings)).differences == []
        client = redis.Redis.from_url(redis_url)
        keys = wiring.live_store(settings).keys
        client.lset(keys.messages("s10"), 0, b'{"forged": true}')
        client.hset(keys.meta("s11"), "message_count", 999)
        result = verify(wiring.replay_parts(settings))
        assert sorted((d.name, d.detail.split(" (")[0]) for d in result.differences) == [
            ("s10", "messages differ"),
            ("s11", "meta differs"),
        ]
        cli = subprocess.run(
            [sys.executable, "-m", "chatlog.cli", "replay", "--verify"],
            env=chatlog_env(settings),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "session s10: messages differ" in cli.stdout
    assert "session s11: meta differs" in cli.stdout


def test_lost_redis_data_stops_the_projector_loudly_or_is_reprojected(
    settings, redis_url, tmp_path
):
    with running_projector(settings):
        until = publish(settings, events(5_000, 100))
        wait_until(lambda: projected(settings, until), timeout=60, what="live projection")
        time.sleep(2)  # the projector commits its offsets every second
    client = redis.Redis.from_url(redis_url)
    client.unlink(*client.keys(f"{settings.redis_prefix}:*"))  # Redis lost everything

    log = tmp_path / "projector.log"
    process = start_projector(settings, log=log)
    assert process.wait(60) == 1
    assert "Redis has lost part of the read-model" in log.read_text()
    assert "chatlog replay" in log.read_text()

    rebuilding = settings.model_copy(update={"on_data_loss": "rebuild"})
    with running_projector(rebuilding):
        wait_until(lambda: projected(settings, until), timeout=60, what="re-projection")
        assert verify(wiring.replay_parts(settings)).differences == []
        # And while it runs: the pointer vanishing is noticed, and the log re-projected.
        client.unlink(*client.keys(f"{settings.redis_prefix}:*"))
        wait_until(lambda: projected(settings, until), timeout=60, what="second re-projection")
        assert verify(wiring.replay_parts(settings)).differences == []


def test_a_projector_that_finds_the_pointer_gone_while_running_stops(settings, redis_url, tmp_path):
    log = tmp_path / "projector.log"
    process = start_projector(settings, log=log)
    try:
        until = publish(settings, events(1_000, 10))
        wait_until(lambda: projected(settings, until), timeout=60, what="live projection")
        redis.Redis.from_url(redis_url).delete(wiring.generations(settings).keys.pointer)
        assert process.wait(30) == 1
    finally:
        stop(process)
    assert "the pointer to the live generation is gone" in log.read_text()
