"""Sealing (`sealing`): what encrypting every personal field costs, beside the same path clear.

What is measured? The same events, built once, published twice: through
`wiring.producer` (every personal field sealed under its owner's AES-256-GCM data key,
as deployed) and through a producer without a keyring (`bench.infra.clear_producer`: the
events go clear, as before sealing). The projector, the replay and the reader are the
same code for both: a clear event is not opened. Each repetition measures the two one
after the other, sealed first in odd repetitions and clear first in even ones, so that
a busy neighbour or a warming cache favours neither; the ratio is taken per repetition.

1. projection: a projector process drains each topic into a fresh prefix (as in the
   projection scenario: partitions assigned → every view applied);
2. replay: `bench.replay_child rebuild` (the code `chatlog replay` runs) of each topic;
3. the core: a slice of the same records through `ProjectionCore` into an
   `InMemoryViewStore`, in this process (decode, verify, fold: no Kafka, no Redis);
4. context reads of 20-message sessions, sealed and clear alternating call by call;
5. appends: `ChatLog.append` one at a time (p50) and `send` per message, batched;
6. `erase_user` of users with 100 sessions each, beside other sessions in Redis.

The sealed topic's repetitions get the writers' key directory copied into their prefix
first (`copy_key_directory`), as deployed; what a cold directory costs (a catch-up from
the keys topic) is a detail row of its own.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Literal

from bench.infra import (
    BenchStack,
    ProjectorProcess,
    ReadModelProbe,
    child_env,
    clear_producer,
    copy_key_directory,
    publish_bulk,
    running,
)
from bench.kafka_tools import run_process
from bench.measure import frozen_heap, percentile
from bench.plan import Plan
from bench.report import Metric, Report, say
from bench.workload import chat_events, chat_turns, last_positions, records_for, user_of
from chatlog import wiring
from chatlog.client import ChatLog
from chatlog.processors.kafka_key_log import catch_up_keys
from chatlog.processors.projection import ProjectionCore, Record
from chatlog.producers.commands import append_message
from chatlog.producers.kafka_producer import ConversationProducer
from chatlog.projections.store import InMemoryViewStore
from chatlog.schemas.events import ConversationEvent
from chatlog.schemas.position import Position
from chatlog.settings import Settings

__all__ = ["sealing"]

CLEAR = "the same, not sealed (no keyring)"
GOAL_RATE = "goal: >= 85% (at most 15% slower)"
GOAL_READ = "goal: <= +0.1 ms"
ERASED_SESSIONS = 100  # per erased user, as the issue asks
_READ_SESSIONS = 10
_READ_SIZE = 20
_KINDS = ("sealed", "clear")


def _sealing_producer(settings: Settings) -> ConversationProducer:
    """`wiring.producer`, with redaction off: the clear producer has no keyring and so
    redacts nothing, and these rows price sealing alone (the pii scenario prices
    redaction)."""
    return wiring.producer(settings.model_copy(update={"pii_mode": "off"}), flush_on_sigterm=False)


def _order(n: int) -> tuple[str, str]:
    """Sealed first in odd repetitions, clear first in even ones."""
    return _KINDS if n % 2 else (_KINDS[1], _KINDS[0])


def sealing(stack: BenchStack, plan: Plan, report: Report) -> None:
    """The sealing scenario: see the module docstring."""
    topics = {kind: stack.scenario(f"sealing_{kind}") for kind in _KINDS}
    producers: dict[str, ConversationProducer] = {
        "sealed": _sealing_producer(topics["sealed"]),
        "clear": clear_producer(topics["clear"]),
    }
    try:
        say(f"sealing: {plan.sealing_events:,} events over {plan.sealing_sessions:,} sessions")
        events = chat_events(
            sessions=plan.sealing_sessions,
            count=plan.sealing_events,
            record_bytes=plan.record_bytes,
            codec=producers["clear"].codec,
            info=producers["clear"].info,
            seed=37,
        ).events
        positions = {kind: publish_bulk(producers[kind], events) for kind in _KINDS}
        sizes = {
            kind: statistics.mean(len(producers[kind].encode(e)) for e in events[:1_000])
            for kind in _KINDS
        }
        _catch_up_row(stack, report, topics["sealed"])
        _projection(stack, plan, report, topics, events, positions)
        _replay(stack, plan, report, topics, len(events))
        _core(plan, report, topics, producers, events, positions)
    finally:
        for producer in producers.values():
            producer.close()
    _reads_and_erasure(stack, plan, report)
    _append(stack, plan, report)
    report.notes.append(
        f"sealing: the same {len(events):,} `MessageAppended` events over "
        f"{plan.sealing_sessions:,} sessions published twice, sealed by `wiring.producer` "
        f"and clear by a producer without a keyring; record value {sizes['sealed']:.0f} B "
        f"sealed, {sizes['clear']:.0f} B clear (mean: the sealed envelope adds the key id, "
        f"a 12-byte nonce and a 16-byte tag per sealed field). Sealed and clear alternate "
        f"within each repetition (sealed first in odd ones); the ratio is sealed ÷ clear "
        f"per repetition, its median. The sealed repetitions start with the writers' key "
        f"directory copied into their prefix (as deployed); the projector and replay verify "
        f"that every sealed event opens, and store it sealed; readers open the view"
    )


def _ratio(report: Report, name: str, target: str) -> Metric:
    return report.metric("sealing", f"{name}: sealed ÷ clear", "share", target)


def _pair(report: Report, name: str, unit: str) -> tuple[Metric, Metric]:
    return (
        report.measure("sealing", f"{name}, sealed", unit),
        report.measure("sealing", f"{name}, clear", unit),
    )


def _catch_up_row(stack: BenchStack, report: Report, settings: Settings) -> None:
    """What a cold key directory costs: the whole keys topic read into it, once."""
    cold = stack.repetition(settings, "cold")
    caught = catch_up_keys(
        wiring.key_directory(cold, stack.redis),
        bootstrap_servers=cold.kafka_bootstrap,
        topic=cold.keys_topic,
        config=cold.kafka,
    )
    stack.forget_keys(cold.redis_prefix)
    report.metric(
        "sealing",
        f"key directory catch-up from the keys topic ({caught.keys:,} keys; a cold "
        f"directory, once, not in the rates)",
        "s",
    ).add(caught.seconds)


def _projection(
    stack: BenchStack,
    plan: Plan,
    report: Report,
    topics: dict[str, Settings],
    events: Sequence[ConversationEvent],
    positions: dict[str, list[Position]],
) -> None:
    rates = _pair(report, "projection", "events/s")
    _beside_clear(
        report, f"projection, events/s, one projector process, {len(events):,} events", rates
    )
    share = _ratio(report, "projection events/s", GOAL_RATE)
    expected = {kind: last_positions(events, positions[kind]) for kind in _KINDS}
    # 0: a warm-up pair (the broker's page cache); a quick run goes without.
    for n in range(1 if plan.quick else 0, plan.repeat + 1):
        got: dict[str, float] = {}
        for kind in _order(n):
            settings = topics[kind]
            rep = stack.repetition(settings, f"r{n}")
            copy_key_directory(stack.redis, settings.redis_prefix, rep.redis_prefix)
            projector = ProjectorProcess(rep, stack)
            try:
                projector.start()
                assigned = projector.wait_assigned()
                done = ReadModelProbe(stack.redis, rep.redis_prefix).wait_applied(
                    expected[kind], projector, timeout=max(60.0, len(events) / 1_000)
                )
            finally:
                totals = projector.stop()
            stack.forget_keys(rep.redis_prefix)
            if totals.get("dead_letters"):
                raise AssertionError(f"sealing projection {kind}: {totals['dead_letters']} DLQ")
            got[kind] = len(events) / (done - assigned)
        say(
            f"sealing projection {'warm-up' if n == 0 else f'r{n}'}: sealed "
            f"{got['sealed']:,.0f}/s, clear {got['clear']:,.0f}/s"
        )
        if n:
            _add_pair(rates, share, got)


def _replay(
    stack: BenchStack, plan: Plan, report: Report, topics: dict[str, Settings], count: int
) -> None:
    rates = _pair(report, "replay", "events/s")
    _beside_clear(
        report, f"replay, events/s, `chatlog replay` of {count:,} events into Redis", rates
    )
    share = _ratio(report, "replay events/s", GOAL_RATE)
    for n in range(1, plan.repeat + 1):
        got: dict[str, float] = {}
        for kind in _order(n):
            settings = topics[kind]
            rep = stack.repetition(settings, f"replay-r{n}")
            copy_key_directory(stack.redis, settings.redis_prefix, rep.redis_prefix)
            totals = run_process(
                [sys.executable, "-m", "bench.replay_child", "rebuild"],
                env=child_env(rep),
                stack=stack,
                name="replay",
                timeout=60.0 + count / 1_000,
            ).totals()
            stack.forget_keys(rep.redis_prefix)
            if totals["events"] != count or totals["dead_letters"]:
                raise AssertionError(f"sealing replay {kind}: {totals}")
            got[kind] = totals["events"] / (totals["done"] - totals["assigned"])
        say(f"sealing replay r{n}: sealed {got['sealed']:,.0f}/s, clear {got['clear']:,.0f}/s")
        _add_pair(rates, share, got)


def _core(
    plan: Plan,
    report: Report,
    topics: dict[str, Settings],
    producers: dict[str, ConversationProducer],
    events: Sequence[ConversationEvent],
    positions: dict[str, list[Position]],
) -> None:
    """Decode, verify and fold in this process: what sealing adds per event, CPU only."""
    rates = (
        report.metric(
            "sealing", "ProjectionCore + InMemoryViewStore (no Kafka), sealed", "events/s"
        ),
        report.metric(
            "sealing", "ProjectionCore + InMemoryViewStore (no Kafka), clear", "events/s"
        ),
    )
    share = _ratio(report, "ProjectionCore events/s", "")
    head = list(events[: plan.sealing_core])
    records: dict[str, list[Record]] = {}
    for kind in _KINDS:
        # Encoded again here (sealing draws new nonces): the same bytes as published,
        # but for the nonces. Ordered as a lagging consumer gets them, by partition.
        encoded = [producers[kind].encode(event) for event in head]
        records[kind] = sorted(
            records_for(
                head, positions[kind][: len(head)], topic=topics[kind].topic, values=encoded
            ),
            key=lambda record: (record.partition, record.offset),
        )
    settings = topics["sealed"]
    client = wiring.redis_client(settings)
    with frozen_heap():
        for n in range(0, plan.repeat + 1):
            got: dict[str, float] = {}
            for kind in _order(n):
                core = ProjectionCore(
                    InMemoryViewStore(),
                    codec=producers[kind].codec,
                    policy=wiring.policy(settings),
                    opener=wiring.opener(topics[kind], client),
                )
                started = time.perf_counter()
                for start in range(0, len(records[kind]), settings.projector_batch):
                    result = core.handle(records[kind][start : start + settings.projector_batch])
                    if result.dead_letters:
                        raise AssertionError(f"sealing core {kind}: {result.dead_letters[:1]}")
                got[kind] = len(head) / (time.perf_counter() - started)
            if n:
                _add_pair(rates, share, got)
    client.close()
    sealed, clear = (1e6 / rate.median for rate in rates)
    report.notes.append(
        f"sealing, the core: the first {len(head):,} records of each topic through "
        f"`ProjectionCore` (with the projector's opener, keys from the Redis directory) into "
        f"an `InMemoryViewStore`, in the benchmark's process: {sealed:.0f} µs an event "
        f"sealed, {clear:.0f} µs clear, so verifying adds about {sealed - clear:.0f} µs "
        f"an event (decoding the larger record included)"
    )


def _reads_and_erasure(stack: BenchStack, plan: Plan, report: Report) -> None:
    """Context reads sealed vs clear, then users of 100 sessions erased among others."""
    settings = stack.scenario("sealing")
    sealed = _sealing_producer(settings)
    clear = clear_producer(settings)
    log = ChatLog(
        producer=sealed,
        reader=wiring.reader(settings),
        eraser=wiring.eraser(settings, sealed, stack.redis),
    )
    try:
        per_session = [_READ_SIZE] * _READ_SESSIONS
        read_sets = {
            kind: chat_events(
                sessions=_READ_SESSIONS,
                count=0,
                record_bytes=plan.record_bytes,
                codec=clear.codec,
                info=clear.info,
                per_session=per_session,
                first_session=first,
            )
            for kind, first in (("sealed", 0), ("clear", _READ_SESSIONS))
        }
        erased_users = [f"bench-erase{u:02d}" for u in range(plan.erase_users)]
        doomed = [
            append_message(
                f"bench-e{u:02d}-{s:03d}",
                user_id=user,
                role=role,
                content=f"my order number is 4711-{s} and my card ends 1234",
                producer=sealed.info,
            )
            for u, user in enumerate(erased_users)
            for s in range(ERASED_SESSIONS)
            for role in ("user", "assistant")
        ]
        others = chat_events(
            sessions=plan.erase_others,
            count=plan.erase_others,
            record_bytes=plan.record_bytes,
            codec=clear.codec,
            info=clear.info,
            first_session=1_000,
        )
        say(
            f"sealing: reads of {_READ_SIZE}-message sessions, and {len(erased_users)} users of "
            f"{ERASED_SESSIONS} sessions beside {plan.erase_others:,} others"
        )
        # The others go clear: a session costs a SCAN the same either way, and each
        # sealed one's new user would wait for its key to be logged first.
        published: list[tuple[ConversationEvent, Position]] = []
        for producer, batch in (
            (sealed, read_sets["sealed"].events + doomed),
            (clear, read_sets["clear"].events + others.events),
        ):
            published += zip(batch, publish_bulk(producer, batch), strict=True)
        expected = last_positions([e for e, _ in published], [p for _, p in published])
        with running(settings, stack) as projector:
            projector.wait_assigned()
            ReadModelProbe(stack.redis, settings.redis_prefix).wait_applied(
                expected, projector, timeout=120
            )
        _reads(plan, report, log, {k: v.sessions for k, v in read_sets.items()})
        _erase(stack, report, log, erased_users, settings)
    finally:
        clear.close()
        log.close()
        stack.forget_keys(settings.redis_prefix)


def _reads(plan: Plan, report: Report, log: ChatLog, sessions: dict[str, list[str]]) -> None:
    msgs = f"{_READ_SIZE}-message session"
    quantiles = {q: _pair(report, f"ChatLog.context {q}, {msgs}", "ms") for q in ("p50", "p99")}
    for q, pair in quantiles.items():
        _beside_clear(report, f"context read {q}, {msgs}", pair, better="lower")
    extra = report.metric(
        "sealing", f"context read p50, {msgs}: sealed minus clear", "ms", GOAL_READ
    )
    # The clear sessions are numbered after the sealed ones (`first_session`), owners too.
    users = {s: user_of(i) for i, s in enumerate(sessions["sealed"] + sessions["clear"])}
    for kind in _KINDS:
        for session in sessions[kind]:
            if len(log.context(session, user_id=users[session]).messages) != _READ_SIZE:
                raise AssertionError(f"sealing reads: {session} is not {_READ_SIZE} messages")
    reads, warmup = plan.sealing_reads, max(10, plan.sealing_reads // 10)
    with frozen_heap():
        for n in range(1, plan.repeat + 1):
            timings: dict[str, list[float]] = {kind: [] for kind in _KINDS}
            for call in range(warmup + reads):
                for kind in _order(call):  # alternating call by call
                    session = sessions[kind][call % _READ_SESSIONS]
                    started = time.perf_counter()
                    log.context(session, user_id=users[session])
                    if call >= warmup:
                        timings[kind].append((time.perf_counter() - started) * 1000)
            for q, pair in quantiles.items():
                for metric, kind in zip(pair, _KINDS, strict=True):
                    metric.add(percentile(timings[kind], float(q[1:])))
            extra.add(quantiles["p50"][0].values[-1] - quantiles["p50"][1].values[-1])
            say(
                f"sealing context read r{n}: p50 sealed {quantiles['p50'][0].values[-1]:.3f} "
                f"ms, clear {quantiles['p50'][1].values[-1]:.3f} ms"
            )


def _erase(
    stack: BenchStack, report: Report, log: ChatLog, users: Sequence[str], settings: Settings
) -> None:
    meta = f"{settings.redis_prefix}:*:s:*:meta"
    held = sum(1 for _ in stack.redis.scan_iter(match=meta, count=1000))
    others = held - ERASED_SESSIONS * len(users)
    keys = int(stack.redis.dbsize())
    took = report.measure("sealing", "erase_user", "ms")
    report.compare(
        "sealing",
        f"erase_user, a user of {ERASED_SESSIONS} sessions, {others:,} other sessions under "
        f"the prefix ({keys:,} keys in the Redis database), median of {len(users)} users",
        took,
        better="lower",
    )
    seconds = []
    for user in users:
        started = time.perf_counter()
        erasure = log.erase_user(user)
        seconds.append(time.perf_counter() - started)
        if erasure.sessions_removed != ERASED_SESSIONS or not erasure.key_ids:
            raise AssertionError(f"erasing {user}: {erasure}")
    took.add(statistics.median(seconds) * 1000)
    say(
        f"sealing erase_user: {', '.join(f'{s * 1000:.0f} ms' for s in seconds)} "
        f"({others:,} other sessions, {keys:,} keys in Redis)"
    )
    report.notes.append(
        f"sealing, erase_user: `ChatLog.erase_user` of {len(users)} users with "
        f"{ERASED_SESSIONS} sealed sessions each (2 messages a session), one after the other "
        f"(each erasure's time: {', '.join(f'{s * 1000:.0f} ms' for s in seconds)}); the "
        f"prefix held {others:,} other sessions and Redis {keys:,} keys in all when it began "
        f"(every scenario's keys of the run so far included); its removal SCANs every key of the "
        f"database a page of 1,000 at a time, so it grows with the database, not the user"
    )


def _append(stack: BenchStack, plan: Plan, report: Report) -> None:
    """`ChatLog.append` one at a time (p50) and batched sends, sealed and clear."""
    settings = stack.scenario("sealing_append")
    each = _pair(report, "ChatLog.append one at a time: one call p50", "ms")
    _beside_clear(report, "append p50, one at a time (ChatLog.append)", each, better="lower")
    batched = _pair(report, "append events/s, batched", "events/s")
    _beside_clear(report, "append events/s, batched (send per message)", batched)
    share = _ratio(report, "append events/s, batched", "")
    clear = clear_producer(settings)
    logs = {
        "sealed": ChatLog(
            producer=_sealing_producer(settings),
            reader=wiring.reader(settings),
        ),
        "clear": ChatLog(producer=clear, reader=wiring.reader(settings)),
    }
    count = max(plan.sealing_append_each, plan.sealing_append_batched)
    turns = {
        kind: chat_turns(
            sessions=plan.append_sessions,
            count=count,
            record_bytes=plan.record_bytes,
            codec=clear.codec,
            info=clear.info,
            seed=41,
            first_session=first,
        )
        for kind, first in (("sealed", 0), ("clear", plan.append_sessions))
    }
    try:
        for n in range(0, plan.repeat + 1):  # 0: the warm-up (every user's key made)
            calls: dict[str, list[float]] = {kind: [] for kind in _KINDS}
            rate: dict[str, float] = {}
            for i in range(plan.append_sessions if n == 0 else plan.sealing_append_each):
                for kind in _order(i):  # alternating call by call
                    turn = turns[kind][i]
                    started = time.perf_counter()
                    logs[kind].append(
                        turn.session_id, user_id=turn.user_id, role=turn.role, content=turn.content
                    )
                    calls[kind].append((time.perf_counter() - started) * 1000)
            for kind in _order(n):
                rate[kind] = _send_all(
                    logs[kind].producer, turns[kind][: plan.sealing_append_batched]
                )
            if n:
                for metric, kind in zip(each, _KINDS, strict=True):
                    metric.add(percentile(calls[kind], 50))
                _add_pair(batched, share, rate)
                say(
                    f"sealing append r{n}: p50 sealed {each[0].values[-1]:.2f} ms, clear "
                    f"{each[1].values[-1]:.2f} ms; batched sealed {rate['sealed']:,.0f}/s, "
                    f"clear {rate['clear']:,.0f}/s"
                )
    finally:
        for log in logs.values():
            log.close()


def _send_all(producer: ConversationProducer, turns: Sequence[Any]) -> float:
    """`send` per message without waiting, then every position; the rate."""
    started = time.perf_counter()
    futures: list[Future[Position]] = [
        producer.send(
            append_message(
                turn.session_id,
                user_id=turn.user_id,
                role=turn.role,
                content=turn.content,
                producer=producer.info,
            )
        )
        for turn in turns
    ]
    for future in futures:
        future.result(timeout=60)
    return len(turns) / (time.perf_counter() - started)


def _beside_clear(
    report: Report,
    metric: str,
    pair: tuple[Metric, Metric],
    *,
    better: Literal["higher", "lower"] = "higher",
) -> None:
    """A row of the first table: sealed, beside the same clear (chatlog beside itself)."""
    report.compare("sealing", metric, pair[0], CLEAR, pair[1], better=better, itself=True)


def _add_pair(pair: tuple[Metric, Metric], share: Metric, got: dict[str, float]) -> None:
    pair[0].add(got["sealed"])
    pair[1].add(got["clear"])
    share.add(got["sealed"] / got["clear"])
