"""The append scenario: how many messages a second each store takes in, one process.

What is measured? The same chat messages (about 200 bytes encoded, spread over a few
hundred sessions) are handed to each store from one thread, and the rate is the number
of messages over the time until the last one is stored:

* chatlog, batched: `producer.send(append_message(...))` per message without waiting,
  every position awaited at the end (the broker acknowledged all of them);
* chatlog, one at a time: `ChatLog.append`, which returns only once the broker has
  acknowledged the message and its position is known (the read-your-writes token);
  also with `linger.ms` 0 instead of chatlog's 2 ms (a lone append goes out at once either
  way: the producer's linger is adaptive);
* LangChain's `RedisChatMessageHistory.add_message`, and a plain Redis list (RPUSH +
  EXPIRE), one message at a time, each call waiting for Redis (`bench.peers`);
* Kafka's ProducerPerformance with the same record size and producer settings: the
  rate the broker takes records at from a Java producer, the limit for a Kafka producer
  on this machine;
* a bare confluent-kafka `Producer.produce` + `flush` of one record at a time, with
  chatlog's producer settings (acks=all, idempotence, lz4, its linger.ms, which `flush`
  does not wait out) and the very bytes chatlog sends: the limit for one append that
  waits for the broker (`ChatLog.append` one at a time is compared with it, p50 and rate).

With `--sealing both` (the default), chatlog's batched and one-at-a-time passes are each
run again right after, on the same messages, by a producer without a keyring into a topic
of its own: the sealing on/off twins (`Report.twin`).

Each repetition runs them all in that order, after one warm-up pass of each; chatlog's
time includes building and validating the event and encoding it (Avro), as the peers'
includes making their message and its JSON.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from confluent_kafka import Producer

from bench.infra import CLEAR, BenchStack, sealing_variants, variant_producer, variant_settings
from bench.kafka_tools import find_tools
from bench.measure import CpuMeter, frozen_heap, median_shares, percentile
from bench.peers import langchain_available, langchain_peer, open_peers
from bench.plan import Plan
from bench.report import Metric, Report, say
from bench.workload import Turn, chat_turns, session_name
from chatlog import wiring
from chatlog.client import ChatLog
from chatlog.producers.commands import append_message
from chatlog.producers.kafka_producer import ConversationProducer
from chatlog.schemas.events import ConversationEvent
from chatlog.schemas.position import Position

__all__ = ["append"]

_BATCHED = "events/s, batched (send per message, positions awaited at the end)"
_ONE = "events/s, one at a time (ChatLog.append waits for the position)"
_ONE_P50 = "p50 of one call, one at a time (ChatLog.append waits for the position)"
_BARE = "bare confluent-kafka produce + flush, one record at a time (limit)"


def append(stack: BenchStack, plan: Plan, report: Report) -> None:
    """Scenario: appends per second, chatlog beside LangChain, a plain list and the limit."""
    settings = stack.scenario("append")
    limit_topic = stack.scenario("append_limit")
    blocked = langchain_available()
    tools, missing = find_tools(stack, "append")

    batched = report.measure("append", _BATCHED, "events/s")
    one = report.measure("append", _ONE, "events/s")
    langchain = report.measure("append", "LangChain add_message", "events/s")
    plain = report.measure("append", "plain list", "events/s")
    limit = report.measure("append", "ProducerPerformance", "events/s")
    limit_name = "Kafka ProducerPerformance (limit)"
    report.compare(
        "append", _BATCHED, batched, limit_name if tools else f"{limit_name}: {missing}", limit
    )
    lc_name = langchain_peer("LangChain RedisChatMessageHistory.add_message", blocked)
    for row, ours in ((_BATCHED, batched), (_ONE, one)):
        report.compare("append", row, ours, lc_name, langchain if blocked is None else None)
        report.compare("append", row, ours, "plain Redis list: RPUSH + EXPIRE", plain)
    bare = report.measure("append", "bare produce + flush", "events/s")
    bare_p50 = report.measure("append", "bare produce + flush: one call, p50", "ms")
    one_p50 = report.measure("append", "ChatLog.append one at a time: one call, p50", "ms")
    report.compare("append", _ONE_P50, one_p50, _BARE, bare_p50, better="lower")
    report.compare("append", _ONE, one, _BARE, bare)
    unlingered = report.metric(
        "append", "ChatLog.append one at a time, with linger.ms 0 (chatlog: 2)", "events/s"
    )
    one_p99 = report.metric("append", "ChatLog.append one at a time: one call, p99", "ms")
    peer_p50 = report.metric("append", "plain list RPUSH + EXPIRE: one call, p50", "ms")
    # Where a waited append's time goes beside the bare round trip (goal: 1.3x of it).
    own = (
        report.metric("append", "of one call: building the event (append_message), p50", "µs"),
        report.metric(
            "append", "of one call: encoding it (redact, seal, Avro: producer.encode), p50", "µs"
        ),
    )
    twinned = CLEAR in sealing_variants(plan)
    if twinned:
        clear_settings = variant_settings(stack, "append", CLEAR)
        twins = {
            row: report.measure("append", f"{row}, {CLEAR}", unit)
            for row, unit in ((_ONE_P50, "ms"), (_ONE, "events/s"), (_BATCHED, "events/s"))
        }
        for (row, clear), sealed in zip(twins.items(), (one_p50, one, batched), strict=True):
            report.twin(
                "append", row, sealed, clear, better="lower" if row == _ONE_P50 else "higher"
            )

    count = max(plan.append_batched, plan.append_each, plan.append_peers)
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        turns = chat_turns(
            sessions=plan.append_sessions,
            count=count,
            record_bytes=plan.record_bytes,
            codec=producer.codec,
            info=producer.info,
            seed=23,
        )
        sample = [_event(producer, turn) for turn in turns[:1_000]]
        sizes = [len(producer.encode(event)) for event in sample]
        if not report.value_sizes:
            report.value_sizes += sizes
        record_size = round(statistics.mean(sizes))
        log = ChatLog(producer=producer, reader=wiring.reader(settings))
        quick = wiring.producer(settings.model_copy(update={"linger_ms": 0}))
        lingerless = ChatLog(producer=quick, reader=wiring.reader(settings))
        # The twin: the same messages, without a keyring (so unsealed and unredacted).
        unsealed = (
            ChatLog(
                producer=variant_producer(clear_settings, CLEAR),
                reader=wiring.reader(clear_settings),
            )
            if twinned
            else None
        )
        clear_record = (
            round(statistics.mean(len(unsealed.producer.encode(event)) for event in sample))
            if unsealed is not None
            else 0
        )
        # The limit's records: the bytes chatlog sends for the same turns (sealed,
        # redacted), encoded off the clock.
        values = [
            (turn.session_id.encode(), producer.encode(_event(producer, turn)))
            for turn in turns[: plan.append_each]
        ]
        raw = _bare_producer(settings.kafka_bootstrap, settings.kafka, settings.linger_ms)
        lc, listed = open_peers(settings, stack.redis, prefix=f"{stack.redis_root}:append")
        meter = CpuMeter.for_stack(stack)
        busy: list[dict[str, float]] = []
        pp_latency: list[float] = []
        try:
            # Warm-up: every session once per store (LangChain makes its clients here), and
            # the producers' first sends (metadata, connections).
            warm = turns[: max(plan.append_sessions, plan.append_each // 10)]
            _send_all(producer, warm)
            _one_at_a_time(log, warm[: plan.append_sessions])
            if unsealed is not None:
                _send_all(unsealed.producer, warm)
                _one_at_a_time(unsealed, warm[: plan.append_sessions])
            _one_at_a_time(lingerless, warm[: plan.append_sessions])
            _produce_flush(raw, settings.topic, values[: plan.append_sessions])
            for store in (lc, listed):
                if store is not None:
                    _each(store.add, warm)
            if tools is not None:
                tools.producer_performance(
                    limit_topic,
                    records=plan.producer_records // 5,
                    warmup=0,
                    record_size=record_size,
                    timeout=120,
                )
            with frozen_heap():
                for n in range(1, plan.repeat + 1):
                    meter.start()
                    batched.add(_send_all(producer, turns[: plan.append_batched]))
                    busy.append(meter.busy())
                    if unsealed is not None:
                        twins[_BATCHED].add(
                            _send_all(unsealed.producer, turns[: plan.append_batched])
                        )
                    rate, calls = _one_at_a_time(log, turns[: plan.append_each])
                    one.add(rate)
                    one_p50.add(percentile(calls, 50))
                    one_p99.add(percentile(calls, 99))
                    if unsealed is not None:
                        rate, calls = _one_at_a_time(unsealed, turns[: plan.append_each])
                        twins[_ONE].add(rate)
                        twins[_ONE_P50].add(percentile(calls, 50))
                    rate, calls = _produce_flush(raw, settings.topic, values)
                    bare.add(rate)
                    bare_p50.add(percentile(calls, 50))
                    built, encoded = _own_work(producer, turns[: plan.append_each])
                    own[0].add(percentile(built, 50))
                    own[1].add(percentile(encoded, 50))
                    unlingered.add(_one_at_a_time(lingerless, turns[: plan.append_each])[0])
                    if lc is not None:
                        langchain.add(_each(lc.add, turns[: plan.append_peers])[0])
                    rate, calls = _each(listed.add, turns[: plan.append_peers])
                    plain.add(rate)
                    peer_p50.add(percentile(calls, 50))
                    if tools is not None:
                        result, _ = tools.producer_performance(
                            limit_topic,
                            records=plan.producer_records,
                            warmup=plan.producer_records // 6,
                            record_size=record_size,
                            timeout=180,
                        )
                        limit.add(result.rate)
                        pp_latency.append(result.avg_ms)
                    say(
                        f"append r{n}: chatlog batched {batched.values[-1]:,.0f}/s, one at a "
                        f"time {one.values[-1]:,.0f}/s, p50 {one_p50.values[-1]:.2f} ms (linger "
                        f"0: {unlingered.values[-1]:,.0f}/s); bare produce + flush "
                        f"{bare.values[-1]:,.0f}/s, p50 {bare_p50.values[-1]:.2f} ms"
                        f"; LangChain {_last(langchain)}, plain list {plain.values[-1]:,.0f}/s, "
                        f"ProducerPerformance {_last(limit)}"
                        + (
                            f"; sealing off: batched {_last(twins[_BATCHED])}, one at a time "
                            f"{_last(twins[_ONE])}, p50 {twins[_ONE_P50].values[-1]:.2f} ms"
                            if twinned
                            else ""
                        )
                    )
        finally:
            raw.flush(30)
            lingerless.close()
            if unsealed is not None:
                unsealed.close()
            log.reader.client.close()
            if lc is not None:
                lc.close()
    stack.forget_keys(f"{stack.redis_root}:append")
    report.notes.append(
        f"append: the same {count:,} messages (value {record_size} B encoded by chatlog) over "
        f"{plan.append_sessions} sessions ({session_name(0)}...) for every store, one "
        f"thread; per repetition {plan.append_batched:,} batched, {plan.append_each:,} one "
        f"at a time (each linger setting), {plan.append_peers:,} per peer, after a warm-up "
        f"pass of each. chatlog's time includes `append_message` (validation) and Avro "
        f"encoding; acks=all, idempotent, lz4, linger.ms {settings.linger_ms}. The peers "
        f"wait for each Redis reply; LangChain's `add_message` is LPUSH then EXPIRE (two "
        f"round trips, ttl {listed.ttl_s} s), the plain list RPUSH + EXPIRE in one pipeline. "
        f"The bare produce + flush (the limit of one waited append): a confluent-kafka "
        f"Producer with chatlog's settings produces the {plan.append_each:,} values chatlog "
        f"sent one at a time (sealed and redacted, keyed by session), each followed by "
        f"`flush()` (which sends at once whatever linger.ms says), on chatlog's topic, "
        f"measured right after chatlog's one-at-a-time pass. "
        + (
            f"ProducerPerformance: {plan.producer_records:,} records of {record_size} B "
            f"(`--record-size`: random letters, no key, so lz4 compresses them differently "
            f"from chat text) after the first {plan.producer_records // 6:,} as warm-up "
            f"(`--warmup-records`; its steady-state line is taken), acks=all, "
            f"enable.idempotence=true, compression.type=lz4, linger.ms={settings.linger_ms}; "
            f"its mean send-to-ack latency {statistics.median(pp_latency):,.0f} ms (it queues "
            f"as fast as it can). "
            if pp_latency
            else f"ProducerPerformance not run: {missing}. "
        )
        + (
            f"Sealing off (the twins): chatlog's batched and one-at-a-time passes again, "
            f"each right after the sealed one in every repetition, on the same messages, by "
            f"a producer without a keyring (neither sealed nor redacted: {clear_record} B "
            f"a value) into a topic of its own, after a warm-up pass of each. "
            if twinned
            else ""
        )
        + (f"LangChain blocked: {blocked}. " if blocked else "")
        + f"CPU during the batched run (median, 100% = one core): "
        f"{CpuMeter.describe(median_shares(busy))}"
    )


def _own_work(
    producer: ConversationProducer, turns: Sequence[Turn]
) -> tuple[list[float], list[float]]:
    """What `ChatLog.append` does before its record is handed to librdkafka, per turn
    (µs): building and validating the event, then encoding it as it is published."""
    build: list[float] = []
    encode: list[float] = []
    for turn in turns:
        started = time.perf_counter()
        event = _event(producer, turn)
        built = time.perf_counter()
        producer.encode(event)
        build.append((built - started) * 1e6)
        encode.append((time.perf_counter() - built) * 1e6)
    return build, encode


def _last(metric: Metric) -> str:
    return f"{metric.values[-1]:,.0f}/s" if metric.values else "n/a"


def _event(producer: ConversationProducer, turn: Turn) -> ConversationEvent:
    return append_message(
        turn.session_id,
        user_id=turn.user_id,
        role=turn.role,
        content=turn.content,
        producer=producer.info,
    )


def _bare_producer(bootstrap: str, extra: dict[str, str], linger_ms: int) -> Producer:
    """A confluent-kafka producer with chatlog's producer settings (see
    `chatlog.producers.kafka_producer`), and nothing of chatlog's around it."""
    return Producer(
        {
            **extra,
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "compression.type": "lz4",
            "linger.ms": linger_ms,
        }
    )


def _produce_flush(
    raw: Producer, topic: str, values: Sequence[tuple[bytes, bytes]]
) -> tuple[float, list[float]]:
    """`produce` + `flush` per record: the rate and each round trip's time (ms)."""
    calls: list[float] = []
    started = time.perf_counter()
    for key, value in values:
        before = time.perf_counter()
        raw.produce(topic, value=value, key=key)
        if raw.flush(30):
            raise RuntimeError("bare produce + flush: a record was not acknowledged in 30 s")
        calls.append((time.perf_counter() - before) * 1000)
    return len(values) / (time.perf_counter() - started), calls


def _send_all(producer: ConversationProducer, turns: Sequence[Turn]) -> float:
    """Send every message without waiting, then wait for every position; the rate."""
    started = time.perf_counter()
    futures: list[Future[Position]] = [producer.send(_event(producer, turn)) for turn in turns]
    for future in futures:
        future.result(timeout=60)
    return len(turns) / (time.perf_counter() - started)


def _one_at_a_time(log: ChatLog, turns: Sequence[Turn]) -> tuple[float, list[float]]:
    """`ChatLog.append` per message; the rate and each call's time (ms)."""
    return _each(
        lambda turn: log.append(
            turn.session_id, user_id=turn.user_id, role=turn.role, content=turn.content
        ),
        turns,
    )


def _each(add: Callable[[Turn], object], turns: Sequence[Turn]) -> tuple[float, list[float]]:
    """`add` per message (a peer's, or chatlog's); the rate and each call's time (ms)."""
    calls: list[float] = []
    started = time.perf_counter()
    for turn in turns:
        before = time.perf_counter()
        add(turn)
        calls.append((time.perf_counter() - before) * 1000)
    return len(turns) / (time.perf_counter() - started), calls
