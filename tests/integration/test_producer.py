"""The producer against a real broker: positions, order, placement, refusals, failures."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from chatlog.producers.commands import append_message
from chatlog.producers.kafka_producer import AsyncConversationProducer, ConversationProducer
from chatlog.producers.partitioning import partition_for
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import (
    BrokerUnavailable,
    InvalidEvent,
    InvalidId,
    OutcomeUnknown,
    PublishTimeout,
    QueueFull,
    TopicMissing,
)
from chatlog.schemas.position import Position

pytestmark = pytest.mark.integration
CODEC = EventCodec()


@pytest.fixture
def topic(kafka):
    return kafka.create_topic("producer", partitions=6)


@pytest.fixture
def producer(kafka, topic):
    with ConversationProducer(
        bootstrap_servers=kafka.bootstrap, topic=topic, flush_on_sigterm=False
    ) as producer:
        yield producer


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_append_returns_the_position_the_event_is_stored_at(kafka, topic, producer):
    position = producer.append("s-1", user_id="u-1", role="user", content="order 7731?")
    assert isinstance(position, Position)
    [message] = kafka.consume_all(topic)
    assert (message.partition(), message.offset()) == (position.partition, position.offset)
    assert message.key() == b"s-1"
    event = CODEC.decode(message.value())
    assert event.payload.content == "order 7731?"
    assert event.producer.client == "chatlog-python"


def test_order_per_session_survives_1000_interleaved_sessions(kafka, topic, producer):
    sessions = [f"s-{i}" for i in range(1000)]
    per_session = 5
    # Every session's turns, shuffled across sessions but in order within each.
    queue = [(s, n) for n in range(per_session) for s in sessions]
    random.Random(7).shuffle(queue)
    next_turn = dict.fromkeys(sessions, 0)
    ordered = []
    for session, _ in queue:
        ordered.append((session, next_turn[session]))
        next_turn[session] += 1

    def publish(chunk):
        events = [
            append_message(s, user_id=f"u-{s}", role="user", content=str(n)) for s, n in chunk
        ]
        producer.publish_many(events)

    # Four threads each publish a slice of sessions, so threads interleave too.
    slices = [[item for item in ordered if hash(item[0]) % 4 == k] for k in range(4)]
    threads = [threading.Thread(target=publish, args=(chunk,)) for chunk in slices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    seen: dict[str, list[int]] = {}
    for message in kafka.consume_all(topic):
        event = CODEC.decode(message.value())
        seen.setdefault(event.session_id, []).append(int(event.payload.content))
        assert message.partition() == partition_for(event.session_id, 6)
    assert len(seen) == 1000
    assert all(turns == list(range(per_session)) for turns in seen.values())


def test_a_session_always_lands_on_its_murmur2_partition(producer):
    for i in range(200):
        session = f"session-{i}-{random.random()}"
        position = producer.append(session, user_id="u", role="user", content="x")
        assert position.partition == partition_for(session, 6), session


def test_rejected_events_publish_nothing(kafka, topic, producer):
    producer.append("s-ok", user_id="u", role="user", content="accepted")
    before = kafka.end_offsets(topic)
    with pytest.raises(InvalidId, match="session_id contains ':'"):
        producer.append("a:b", user_id="u", role="user", content="x")
    with pytest.raises(InvalidEvent, match="role"):
        producer.append("s-ok", user_id="u", role="robot", content="x")
    good = append_message("s-ok", user_id="u", role="user", content="fine")
    bad = good.model_copy(update={"payload": good.payload.model_copy(update={"role": "robot"})})
    with pytest.raises(Exception, match="robot"):
        producer.publish_many([good, bad])
    producer.flush(5)
    assert kafka.end_offsets(topic) == before
    # What was accepted before the refusals is still there.
    assert [CODEC.decode(m.value()).payload.content for m in kafka.consume_all(topic)] == [
        "accepted"
    ]


def test_send_returns_a_future_and_publish_many_keeps_batch_order(producer):
    future = producer.send(append_message("s-f", user_id="u", role="user", content="a"))
    first = future.result(10)
    events = [append_message("s-f", user_id="u", role="user", content=str(i)) for i in range(50)]
    positions = producer.publish_many(events)
    assert [p.offset for p in positions] == list(range(first.offset + 1, first.offset + 51))


def test_async_producer_appends_and_batches(kafka, topic, producer):
    async def run():
        aproducer = AsyncConversationProducer(producer)
        one = await aproducer.append("s-a", user_id="u", role="user", content="hello")
        many = await aproducer.publish_many(
            [
                append_message("s-a", user_id="u", role="assistant", content=str(i))
                for i in range(20)
            ]
        )
        return one, many

    one, many = asyncio.run(run())
    assert [p.offset for p in many] == list(range(one.offset + 1, one.offset + 21))


def test_missing_topic_fails_fast_with_the_fix(kafka):
    started = time.monotonic()
    with pytest.raises(TopicMissing, match="chatlog topics create"):
        ConversationProducer(bootstrap_servers=kafka.bootstrap, topic="no.such.topic.here")
    assert time.monotonic() - started < 15


def test_unreachable_broker_fails_fast_with_the_fix():
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="CHATLOG_KAFKA_BOOTSTRAP"):
        ConversationProducer(
            bootstrap_servers=f"127.0.0.1:{_closed_port()}", check_timeout=2, flush_on_sigterm=False
        )
    assert time.monotonic() - started < 10


def test_broker_lost_after_start_gives_a_clear_error_not_a_hang():
    producer = ConversationProducer(
        bootstrap_servers=f"127.0.0.1:{_closed_port()}",
        check_topic=False,
        delivery_timeout=2,
        flush_on_sigterm=False,
    )
    started = time.monotonic()
    # Not acknowledged in time: unknown outcome even when the broker is down, since a
    # lost broker may have written the event before it went.
    with pytest.raises(PublishTimeout, match="check CHATLOG_KAFKA_BOOTSTRAP") as caught:
        producer.append("s", user_id="u", role="user", content="x")
    assert isinstance(caught.value, OutcomeUnknown)
    assert "broker_error" in caught.value.context
    assert time.monotonic() - started < 10
    producer.close(timeout=1)  # the failed event left the queue: nothing is pending


def test_full_queue_raises_queue_full_after_the_timeout():
    producer = ConversationProducer(
        bootstrap_servers=f"127.0.0.1:{_closed_port()}",
        check_topic=False,
        config={"queue.buffering.max.messages": 5},
        queue_timeout=0.5,
        delivery_timeout=30,
        flush_on_sigterm=False,
    )
    for i in range(5):
        producer.send(append_message("s", user_id="u", role="user", content=str(i)))
    started = time.monotonic()
    with pytest.raises(QueueFull, match=r"stayed full for 0\.5 s"):
        producer.send(append_message("s", user_id="u", role="user", content="overflow"))
    assert 0.4 < time.monotonic() - started < 5
    # close() says plainly that five events never reached a broker.
    with pytest.raises(PublishTimeout, match="5 events were still unacknowledged"):
        producer.close(timeout=0.2)


def test_sigterm_flushes_pending_events(kafka, topic):
    # A long linger keeps events in the local queue until something flushes them.
    script = textwrap.dedent(
        f"""
        import sys, time
        from chatlog.producers.commands import append_message
        from chatlog.producers.kafka_producer import ConversationProducer
        p = ConversationProducer(bootstrap_servers={kafka.bootstrap!r}, topic={topic!r},
                                 linger_ms=20000, delivery_timeout=60)
        for i in range(100):
            p.send(append_message("s-term", user_id="u", role="user", content=str(i)))
        print("queued", flush=True)
        time.sleep(60)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        ready = child.stdout.readline().strip()
        if ready != "queued":
            child.kill()
            pytest.fail(f"the child did not start: {child.communicate(timeout=30)[1]}")
        assert sum(kafka.end_offsets(topic).values()) == 0
        child.terminate()
        child.communicate(timeout=30)
    assert child.returncode == -15  # it still dies of SIGTERM, after flushing
    contents = [CODEC.decode(m.value()).payload.content for m in kafka.consume_all(topic)]
    assert contents == [str(i) for i in range(100)]


def test_a_failed_start_leaves_no_thread_behind(kafka):
    def pollers():
        return [t for t in threading.enumerate() if t.name == "chatlog-producer-poll"]

    before = len(pollers())
    with pytest.raises(TopicMissing):
        ConversationProducer(bootstrap_servers=kafka.bootstrap, topic="no.such.topic.here")
    with pytest.raises(BrokerUnavailable):
        ConversationProducer(
            bootstrap_servers=f"127.0.0.1:{_closed_port()}", check_timeout=1, flush_on_sigterm=False
        )
    assert len(pollers()) == before


def lingering_producer(kafka, topic: str) -> ConversationProducer:
    """A producer whose linger.ms is a minute: a record that waited it out would miss
    any of the tests' timeouts."""
    return ConversationProducer(
        bootstrap_servers=kafka.bootstrap,
        topic=topic,
        linger_ms=60_000,
        delivery_timeout=120,
        flush_on_sigterm=False,
    )


def test_a_lone_waited_publish_goes_out_at_once_and_sends_keep_lingering(kafka, topic):
    # linger.ms of a minute: any publish that waited it out would miss its 10 s timeout.
    with lingering_producer(kafka, topic) as producer:
        alone = producer.append("s-lone", user_id="u", role="user", content="hi", timeout=10)
        batch = producer.publish_many(
            [append_message("s-lone", user_id="u", role="user", content=str(i)) for i in (1, 2)],
            timeout=10,
        )
        assert [alone.offset, *(p.offset for p in batch)] == [0, 1, 2]
        # Behind a pending send, a publish is not alone: it lingers with it for the batch.
        pending = producer.send(append_message("s-lone", user_id="u", role="user", content="a"))
        with pytest.raises(PublishTimeout):
            producer.append("s-lone", user_id="u", role="user", content="b", timeout=1)
        assert not pending.done()
        assert producer.flush(30) == 0
    contents = [CODEC.decode(m.value()).payload.content for m in kafka.consume_all(topic)]
    assert contents == ["hi", "1", "2", "a", "b"]


def test_a_lone_awaited_async_publish_goes_out_at_once_without_blocking_the_loop(kafka, topic):
    # As the blocking one above, with an event loop: the poller thread sends the lone
    # record at once (a flush on the loop would block it); behind a pending record, the
    # awaited one lingers with it for the batch.
    with lingering_producer(kafka, topic) as producer:
        aproducer = AsyncConversationProducer(producer)

        async def run() -> tuple[int, bool]:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            ticker = asyncio.create_task(tick())
            alone = await asyncio.wait_for(
                aproducer.append("s-lone", user_id="u", role="user", content="hi"), 10
            )
            ticker.cancel()
            pending = producer.send(append_message("s-lone", user_id="u", role="user", content="a"))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    aproducer.append("s-lone", user_id="u", role="user", content="b"), 1
                )
            assert ticks > 0  # the loop ran while the lone record was on its way
            return alone.offset, pending.done()

        assert asyncio.run(run()) == (0, False)
        assert producer.flush(30) == 0
    contents = [CODEC.decode(m.value()).payload.content for m in kafka.consume_all(topic)]
    assert contents == ["hi", "a", "b"]
