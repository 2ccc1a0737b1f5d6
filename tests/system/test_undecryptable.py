"""A field that does not open is a dead letter `undecryptable`; the partition moves on.

Two records that a running projector cannot open reach one partition of the events
topic, between events that it can:

* a tampered ciphertext: an event sealed under its owner's real key, encoded, one byte
  of the sealed field flipped in the encoded bytes, and published by a plain Kafka
  producer keyed by its session, as another producer or a corruption would;
* an event of another user, sealed by a producer whose master key the projector does
  not have: its data key is in the key directory, wrapped under a master key that is
  not among the projector's.

Both must go to the dead-letter topic unchanged, with the header `chatlog.dlq.reason:
undecryptable` naming their partition and offset; every other event of the partition,
before and after them, in the same session and in another, is projected once; and the
projector keeps running.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from chatlog import wiring
from chatlog.producers.commands import append_message
from chatlog.producers.partitioning import partition_for
from chatlog.schemas.errors import SessionNotFound
from chatlog.schemas.master_keys import new_master_key
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope, seal_event
from tests.processes import running_projector, unique_settings, wait_until

pytestmark = pytest.mark.system

PARTITIONS = 3


def _sessions_on(partition: int, prefix: str, count: int) -> list[str]:
    names = (f"{prefix}{n}" for n in range(10_000))
    found = [s for s in names if partition_for(s, PARTITIONS) == partition]
    return found[:count]


def _tampered(settings, producer, session: str, user: str) -> bytes:
    """A sealed event's bytes as the codec writes them, one byte of its sealed content
    flipped (the last: GCM's tag)."""
    key = wiring.keyring(settings, producer).for_writing(KeyScope("default", user))
    event = seal_event(append_message(session, user_id=user, role="user", content="x"), key)
    assert event.sealed is not None
    data = bytearray(wiring.codec(settings).encode(event))
    blob = event.sealed.fields["content"]
    at = data.index(blob) + len(blob) - 1
    data[at] ^= 0x01
    return bytes(data)


def test_a_tampered_field_and_a_foreign_master_key_are_dead_lettered_and_the_partition_moves_on(
    kafka, redis_url, redis_prefix, tmp_path
):
    settings = unique_settings(kafka, redis_url, redis_prefix, partitions=PARTITIONS)
    rogue_key = tmp_path / "rogue.key"
    rogue_key.write_text(new_master_key("rogue-1") + "\n", encoding="utf-8")
    rogue = settings.model_copy(update={"master_key_file": rogue_key})
    partition = 1
    alice, other, mallory = _sessions_on(partition, "s", 3)
    log: dict[str, list[tuple[int, str]]] = {alice: [], other: []}
    with running_projector(settings, log=tmp_path / "projector.log") as projector:
        with wiring.producer(settings, flush_on_sigterm=False) as producer:

            def append(session: str, n: int) -> None:
                content = f"{session}:{n}"
                position = producer.append(session, user_id="alice", role="user", content=content)
                log[session].append((position.offset, content))

            for n in range(3):
                append(alice, n)
            raw = Producer({"bootstrap.servers": kafka.bootstrap})
            raw.produce(
                settings.topic,
                key=alice.encode(),
                value=_tampered(settings, producer, alice, "alice"),
                partition=partition,
            )
            assert raw.flush(30) == 0
            with wiring.producer(rogue, flush_on_sigterm=False) as stranger:
                foreign = stranger.append(mallory, user_id="mallory", role="user", content="m")
            assert foreign.partition == partition
            for n in range(3, 6):
                append(alice, n)
                append(other, n)

        reader = wiring.reader(settings)
        try:
            for session, pairs in log.items():
                last = Position(partition, pairs[-1][0])
                context = reader.context(session, user_id="alice", after=last, timeout=60)
                assert [(m.offset, m.content) for m in context.messages] == pairs, session
            with pytest.raises(SessionNotFound):
                reader.context(mallory, user_id="mallory")
        finally:
            reader.client.close()
        assert projector.poll() is None, "the projector exited"

    wait_until(
        lambda: sum(kafka.end_offsets(settings.dlq_topic).values()) >= 2,
        timeout=30,
        what="two dead letters",
    )
    letters = kafka.consume_all(settings.dlq_topic)
    assert len(letters) == 2
    originals = {
        m.offset(): m
        for m in kafka.consume_all(settings.topic)
        if m.partition() == partition and m.key() in (alice.encode(), mallory.encode())
    }
    tampered_offset = log[alice][2][0] + 1
    for letter, offset in zip(letters, (tampered_offset, foreign.offset), strict=True):
        headers = {k: v.decode() for k, v in letter.headers()}
        assert headers["chatlog.dlq.reason"] == "undecryptable", headers
        assert headers["chatlog.dlq.error.class"] == "Undecryptable", headers
        assert (headers["chatlog.dlq.partition"], headers["chatlog.dlq.offset"]) == (
            str(partition),
            str(offset),
        )
        assert letter.value() == originals[offset].value(), "the dead letter was changed"
    print(
        f"\nundecryptable: tampered {partition}:{tampered_offset} and foreign master key "
        f"{partition}:{foreign.offset} dead-lettered; {sum(map(len, log.values()))} others "
        f"projected"
    )
