"""The audit trail and the export against the real Kafka and Redis.

The chain: writers that take a partition from each other (in one process, and in two
processes at once) leave one intact chain; a record forged with a plain producer makes
`chatlog audit --verify` fail naming its partition and offset. The wiring: a session
created, an export, an operator's `tail` and `context --as-of`, an erasure (its keys and
sessions), a replay and a key rotation each leave their record, naming the user by
pseudonym only, so `chatlog audit --user` finds them after the user is erased. The
export: every session of the user from the log, decrypted, redactions applied, summaries
in; an erased user is refused.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from confluent_kafka import Producer, TopicPartition

from chatlog import wiring
from chatlog.client import AsyncChatLog
from chatlog.processors.kafka_audit import KafkaAuditWriter, read_audit
from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.processors.kafka_export import KafkaExporter
from chatlog.processors.kafka_history import ranges_records
from chatlog.producers.commands import new_event
from chatlog.producers.kafka_producer import AsyncConversationProducer
from chatlog.projections.opening import EventOpener
from chatlog.schemas.audit import AuditAction, AuditCodec, AuditRecord
from chatlog.schemas.errors import Erased, NotAudited, SessionNotFound, UnknownUser
from chatlog.schemas.events import SummaryUpdated
from chatlog.schemas.key_records import ErasureRecord
from chatlog.schemas.sealing import KeyScope
from chatlog.settings import Settings
from tests.processes import (
    ROOT,
    chatlog_env,
    full_chatlog,
    log_events,
    running_projector,
    unique_settings,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(kafka, redis_url, redis_prefix) -> Settings:
    return unique_settings(kafka, redis_url, redis_prefix, audit_partitions=2)


def cli(
    settings: Settings, *args: str, principal: str | None = None
) -> subprocess.CompletedProcess:
    env = chatlog_env(settings)
    if principal is not None:
        env["CHATLOG_PRINCIPAL"] = principal
    return subprocess.run(
        [sys.executable, "-m", "chatlog.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def writer(settings: Settings, partition: int) -> KafkaAuditWriter:
    return KafkaAuditWriter(
        bootstrap_servers=settings.kafka_bootstrap, topic=settings.audit_topic, partition=partition
    )


def note(n: int, principal: str = "tests") -> AuditRecord:
    return AuditRecord(action=AuditAction.OPERATOR_READ, principal=principal, session_id=f"s-{n}")


def raw_values(settings: Settings) -> list[bytes]:
    """The audit topic's committed values, as they are on the topic."""
    consumer = groupless_consumer(settings.kafka_bootstrap, purpose="test-audit")
    try:
        ends = kafka_ends(consumer, settings.audit_topic)
        return [m.value() for m in ranges_records(consumer, settings.audit_topic, ends, 30)]
    finally:
        consumer.close()


def kafka_ends(consumer, topic: str) -> dict[int, tuple[int, int]]:
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions
    }


def scan(settings: Settings):
    return read_audit(bootstrap_servers=settings.kafka_bootstrap, topic=settings.audit_topic)


def test_writers_that_take_a_partition_from_each_other_keep_one_chain(settings):
    first, second = writer(settings, 0), writer(settings, 0)
    try:
        first.append([note(0), note(1)])
        second.append([note(2)])  # fences `first`
        first.append([note(3)])  # fenced: starts over, reads the chain's head again
        second.append([note(4), note(5)])
        assert first.reopened >= 1
        assert second.reopened >= 1
    finally:
        first.close()
        second.close()
    found = scan(settings)
    assert found.intact, [str(b) for c in found.chains for b in c.breaks]
    [chain, empty] = found.chains
    assert chain.records == 6
    assert empty.records == 0
    assert sorted(r.session_id for _, r in found.records) == [f"s-{n}" for n in range(6)]


_WRITE = """
import sys
from chatlog.processors.kafka_audit import KafkaAuditWriter
from chatlog.schemas.audit import AuditAction, AuditRecord
bootstrap, topic, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
writer = KafkaAuditWriter(bootstrap_servers=bootstrap, topic=topic, partition=0)
for n in range(count):
    writer.append([AuditRecord(action=AuditAction.OPERATOR_READ, principal=name,
                               session_id=f"{name}-{n}")])
writer.close()
print(writer.reopened)
"""


def test_two_processes_writing_one_partition_at_once_keep_one_chain(settings):
    count = 15
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WRITE,
                settings.kafka_bootstrap,
                settings.audit_topic,
                name,
                str(count),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("writer-a", "writer-b")
    ]
    outputs = [p.communicate(timeout=240) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    found = scan(settings)
    assert found.intact, [str(b) for c in found.chains for b in c.breaks]
    assert found.chains[0].records == 2 * count
    by_writer = [r.principal for _, r in found.records]
    assert (by_writer.count("writer-a"), by_writer.count("writer-b")) == (count, count)


def test_a_forged_record_fails_verification_naming_its_partition_and_offset(settings):
    honest = writer(settings, 1)
    honest.append([note(0), note(1)])
    honest.close()
    forged = AuditCodec().encode(
        AuditRecord(action=AuditAction.OPERATOR_READ, principal="nobody", prev_hash=b"\0" * 32)
    )
    plain = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    offsets: list[int] = []
    plain.produce(
        settings.audit_topic,
        value=forged,
        partition=1,
        on_delivery=lambda err, msg: offsets.append(msg.offset()),
    )
    plain.flush(30)
    [forged_at] = offsets
    later = writer(settings, 1)  # a writer that comes after chains to what it finds
    later.append([note(2)])
    later.close()

    found = scan(settings)
    assert not found.intact
    chain = found.chains[1]
    assert [(b.partition, b.offset) for b in chain.breaks] == [(1, forged_at)]
    assert found.chains[0].intact

    verified = cli(settings, "audit", "--verify")
    assert verified.returncode == 1, verified.stderr
    assert f"chain BROKEN at partition 1 offset {forged_at}:" in verified.stdout
    assert "partition 0: empty" in verified.stdout
    as_json = cli(settings, "audit", "--verify", "--json")
    assert as_json.returncode == 1
    [broken] = [c for c in json.loads(as_json.stdout)["chains"] if not c["intact"]]
    assert [b["offset"] for b in broken["breaks"]] == [forged_at]
    assert cli(settings, "audit").returncode == 0  # listing alone does not judge


def test_export_reads_every_session_from_the_log_and_the_trail_records_it_all(settings, kafka):
    card = "my card is 4111 1111 1111 1111"
    chat = full_chatlog(settings, principal="support:dana")
    try:
        with running_projector(settings):
            chat.start_session("erin-1", user_id="erin", title="Refund")
            chat.append("erin-1", user_id="erin", role="user", content="hello")
            chat.append("erin-1", user_id="erin", role="user", content=card, message_id="m-card")
            redaction = chat.redact("erin-1", "m-card", user_id="erin")
            with pytest.raises(SessionNotFound):  # refused, and recorded as refused
                chat.redact("erin-1", "m-card", user_id="mallory")
            chat.producer.publish(
                new_event(
                    "erin-1",
                    user_id="erin",
                    payload=SummaryUpdated(
                        summary="erin asked for a refund", through_offset=0, model="m"
                    ),
                )
            )
            chat.start_session("erin-2", user_id="erin")
            last = chat.append("erin-2", user_id="erin", role="assistant", content="refunded")
            chat.append("bob-1", user_id="bob", role="user", content="bob's own words")
            chat.context("erin-2", user_id="erin", after=last)  # projected
            # Gone from Redis as an expired session would be: the export reads the log.
            client = redis.Redis.from_url(settings.redis_url)
            client.delete(*client.keys(f"{settings.redis_prefix}*erin-1*"))
            client.close()

            document = chat.export_user("erin")
            assert document["format"] == "chatlog-export"
            assert document["version"] == 1
            first, second = document["sessions"]
            assert first["session_id"] == "erin-1"
            assert first["title"] == "Refund"
            assert [m["content"] for m in first["messages"]] == ["hello", None]
            assert first["messages"][1]["redacted"]
            assert card not in json.dumps(document)
            assert first["summary"]["text"] == "erin asked for a refund"
            assert [m["content"] for m in second["messages"]] == ["refunded"]
            assert "bob" not in json.dumps(document["sessions"])

            tail = cli(
                settings, "tail", "erin-1", "--operator", "--no-follow", principal="oncall:ed"
            )
            assert tail.returncode == 0, tail.stderr
            as_of = cli(
                settings,
                "context",
                "erin-2",
                "--user",
                "erin",
                "--as-of",
                str(last),
                principal="oncall:ed",
            )
            assert as_of.returncode == 0, as_of.stderr
            # Every read command shows whichever user the operator names: audited too.
            live = cli(settings, "context", "erin-2", "--user", "erin", principal="oncall:ed")
            assert live.returncode == 0, live.stderr
            listing = cli(settings, "sessions", "erin", principal="oncall:ed")
            assert listing.returncode == 0, listing.stderr

            erasure = chat.erase_user("erin")
            assert erasure.sessions_removed >= 1  # erin-2; erin-1 had left Redis
        with pytest.raises(Erased, match="erased"):
            chat.export_user("erin")
        with pytest.raises(UnknownUser):
            chat.export_user("nobody")
    finally:
        chat.close()

    listed = cli(settings, "audit", "--user", "erin", "--verify", "--json")
    assert listed.returncode == 0, listed.stderr
    result = json.loads(listed.stdout)
    assert all(c["intact"] for c in result["chains"])
    seen = [(r["action"], r["outcome"], r["principal"], r["session_id"]) for r in result["records"]]
    dana = "support:dana"
    assert seen[:3] == [
        ("session_created", "ok", dana, "erin-1"),
        ("message_redacted", "ok", dana, "erin-1"),
        ("session_created", "ok", dana, "erin-2"),
    ]
    assert ("user_exported", "ok", dana, None) in seen
    [redacted] = [r for r in result["records"] if r["action"] == "message_redacted"]
    assert (redacted["outcome"], redacted["session_id"]) == ("ok", "erin-1")
    assert redacted["details"] == {"message_id": "m-card", "position": str(redaction)}
    assert ("operator_read", "ok", "oncall:ed", "erin-2") in seen  # the as-of read names her
    assert ("user_erased", "ok", dana, None) in seen
    assert seen.count(("key_destroyed", "ok", dana, None)) == len(erasure.key_ids)
    assert "erin-2" in {s for a, _, _, s in seen if a == "session_erased"}
    assert seen[-1] == ("user_exported", "refused", dana, None)
    reads = [
        (r["session_id"], r["details"]["via"])
        for r in result["records"]
        if r["action"] == "operator_read" and r["principal"] == "oncall:ed"
    ]
    assert reads == [("erin-2", "context --as-of"), ("erin-2", "context"), (None, "sessions")]
    exported = next(r for r in result["records"] if r["action"] == "user_exported")
    assert exported["details"] == {"sessions": "2"}

    everything = cli(settings, "audit", "--json")
    records = json.loads(everything.stdout)["records"]
    [tail_read] = [r for r in records if r["details"].get("via") == "tail"]
    assert (tail_read["session_id"], tail_read["user"]) == ("erin-1", None)
    assert any(r["action"] == "user_exported" and r["outcome"] == "refused" for r in records)
    [mallory] = [r for r in records if r["action"] == "message_redacted" and r["outcome"] != "ok"]
    assert (mallory["outcome"], mallory["details"]["error"]) == ("refused", "SessionNotFound")
    # No user id anywhere in the trail's bytes: pseudonyms only.
    raw = b"".join(raw_values(settings))
    assert b"erin" not in raw.replace(b"erin-1", b"").replace(b"erin-2", b"")


def test_cli_export_writes_the_document_and_refuses_an_unknown_user(settings, tmp_path: Path):
    published = cli(
        settings, "publish", "f-1", "--user", "fay", "--role", "user", "--content", "hi"
    )
    assert published.returncode == 0, published.stderr
    out = tmp_path / "fay.json"
    out.write_text("an older export")  # replaced, and made private too
    out.chmod(0o644)  # as the usual umask (022) leaves a new file: readable by everyone
    exported = cli(settings, "export", "--user", "fay", "--output", str(out), "--json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["sessions"] == 1
    document = json.loads(out.read_text())
    assert [m["content"] for m in document["sessions"][0]["messages"]] == ["hi"]
    # Every message of a person in clear: not for the machine's other users.
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    unknown = cli(settings, "export", "--user", "nobody")
    assert unknown.returncode == 1
    assert "nothing to export" in unknown.stderr


def test_replay_and_key_rotation_are_recorded(settings):
    published = cli(
        settings, "publish", "g-1", "--user", "gil", "--role", "user", "--content", "hi"
    )
    assert published.returncode == 0, published.stderr
    replayed = cli(settings, "replay", "--handover", "0.1", principal="ops:rita")
    assert replayed.returncode == 0, replayed.stderr
    rotated = cli(settings, "keys", "rotate", principal="ops:rita")
    assert rotated.returncode == 0, rotated.stderr
    records = json.loads(cli(settings, "audit", "--verify", "--json").stdout)["records"]
    seen = [(r["action"], r["outcome"], r["principal"]) for r in records]
    assert seen == [
        ("replay_started", "ok", "ops:rita"),
        ("replay_finished", "ok", "ops:rita"),
        ("keys_rotated", "ok", "ops:rita"),
    ]
    assert records[1]["details"]["mode"] == "rebuild"
    assert records[1]["details"]["events"] == "1"
    assert records[2]["details"]["current"] == "1"  # gil's key, already under the current one


def test_the_asyncio_client_exports_and_audits_too(settings):
    async def run() -> dict:
        producer = wiring.producer(settings, flush_on_sigterm=False)
        log = AsyncChatLog(
            producer=AsyncConversationProducer(producer),
            reader=wiring.async_reader(settings),
            exporter=wiring.exporter(settings),
            audit=wiring.audit_trail(settings),
            principal="async:ida",
        )
        async with log:
            await log.start_session("ida-1", user_id="ida", title="Hi")
            await log.append("ida-1", user_id="ida", role="user", content="async hello")
            return await log.export_user("ida")

    document = asyncio.run(run())
    assert [m["content"] for m in document["sessions"][0]["messages"]] == ["async hello"]
    records = [r for _, r in scan(settings).records]
    assert [(r.action, r.principal) for r in records] == [
        ("session_created", "async:ida"),
        ("user_exported", "async:ida"),
    ]


def test_a_stored_operation_whose_audit_record_fails_says_so_and_is_not_lost(settings, kafka):
    # The audit topic is missing (an upgrade before `chatlog topics create`): the
    # session's start and the redaction are stored all the same, and the caller is told
    # exactly that (`NotAudited`, with the position), not "not stored".
    unaudited = settings.model_copy(update={"audit_topic": f"missing.{uuid.uuid4().hex}"})
    chat = full_chatlog(unaudited, principal="support:dana")
    try:
        with running_projector(settings):
            with pytest.raises(NotAudited, match=r"stored at \d+:0, but its audit record") as why:
                chat.start_session("lea-1", user_id="lea", title="Hi")
            partition = why.value.context["position"].partition(":")[0]
            chat.append("lea-1", user_id="lea", role="user", content="hello", message_id="m-1")
            with pytest.raises(NotAudited, match=f"the redaction is stored at {partition}:2"):
                chat.redact("lea-1", "m-1", user_id="lea")
    finally:
        chat.close()
    kinds = [type(e.payload).__name__ for _, e in log_events(kafka, settings)]
    assert kinds == ["SessionStarted", "MessageAppended", "MessageRedacted"]


def test_an_erasure_that_lands_while_the_export_scans_refuses_the_export(settings):
    """An export racing an erasure hands nothing out: the user's keys, read once before
    the scan, are checked again once it is done."""
    chat = full_chatlog(settings, principal="support:dana")
    try:
        for n in range(3):
            chat.append("ann-1", user_id="ann", role="user", content=f"turn {n}")
    finally:
        chat.close()
    directory = wiring.key_directory(settings)
    reading = wiring.opener(settings)

    class ErasedMidScan(EventOpener):
        """Opens as the exporter's opener does; the erasure lands at the first event."""

        erased = False

        def open_batch(self, events, **kwargs):
            if not self.erased:
                self.erased = True
                directory.erase(ErasureRecord(KeyScope("default", "ann"), datetime.now(UTC), ()))
            return super().open_batch(events, **kwargs)

    opener = ErasedMidScan(reading.keyring, directory)
    exporter = KafkaExporter(
        bootstrap_servers=settings.kafka_bootstrap,
        topic=settings.topic,
        opener=opener,
        codec=wiring.codec(settings),
        config=settings.kafka,
    )
    with pytest.raises(Erased):
        exporter.export("ann")
    assert opener.erased  # the erasure did land during the scan
