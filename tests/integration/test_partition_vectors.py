"""The partition vectors of docs/other-languages.md hold on a real broker: chatlog's producer
puts each session id on the partition the doc gives, for 6 and 12 partitions, and a
librdkafka producer left at its default partitioner (CRC32) on the one the doc warns of."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from chatlog.producers.kafka_producer import ConversationProducer
from tests.partition_vectors import documented

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("partitions", [6, 12])
def test_chatlogs_producer_puts_each_session_where_the_doc_says(kafka, partitions):
    topic = kafka.create_topic("vectors", partitions=partitions)
    table = documented()
    with ConversationProducer(
        bootstrap_servers=kafka.bootstrap, topic=topic, flush_on_sigterm=False
    ) as producer:
        placed = {
            session: producer.append(session, user_id="u", role="user", content="x").partition
            for session in table
        }
    assert placed == {session: row[f"partition of {partitions}"] for session, row in table.items()}


def test_librdkafkas_default_partitioner_is_the_crc32_column(kafka):
    topic = kafka.create_topic("vectors-crc32", partitions=6)
    table = documented()
    # No `partitioner` set: librdkafka's default, consistent_random.
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    placed: dict[str, int] = {}

    def delivered(err, msg) -> None:
        assert err is None, err
        placed[msg.key().decode()] = msg.partition()

    for session in table:
        producer.produce(topic, key=session.encode(), value=b"x", on_delivery=delivered)
    assert producer.flush(30) == 0
    assert placed == {session: row["wrong: CRC32, of 6"] for session, row in table.items()}
    # And it is indeed wrong for chatlog: most ids land elsewhere than murmur2 puts them.
    assert sum(placed[s] != row["partition of 6"] for s, row in table.items()) >= 4
