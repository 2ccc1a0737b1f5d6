"""``python -m bench.recall_api``: recall through the public API, end to end.

    python -m bench.recall_api                # the evaluation set's 40 users, 7,179 turns

The evaluation set (`bench.recall_eval`) is appended through `ChatLog.append` (sealed,
as any back end writes), read back from the topic and indexed as the embedder indexes
(its core, `RecallIndexing`, into `RedisVectorIndex.apply`), then every question is
asked with `ChatLog.recall` and `AsyncChatLog.recall`: the query embedded, the live
generation's index searched, the hits opened with their owners' keys. It reports the
evidence recall@5 and @10 of that path (the same counts as the `recall_quality`
scenario's offline row, so a difference is a fault of the path) and the latency of one
recall (p50 and p99, wall time around the call, one client). The settings are
``CHATLOG_*``, else the local stack's, with ``CHATLOG_RECALL=true``; the topics and keys
are its own (``bench-recall-<run>``) and are deleted at the end.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable

from confluent_kafka import TopicPartition

from bench.recall_eval import EvalSet, build
from chatlog import wiring
from chatlog.client import AsyncChatLog, ChatLog
from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.processors.projection import Record
from chatlog.processors.recall_indexing import RecallIndexing
from chatlog.projections.recall import EmbeddingModel
from chatlog.projections.redis_vectors import RedisVectorIndex
from chatlog.settings import Settings

_BATCH = 512
_ROUNDS = 3  # each question asked this many times for the latency


def _records(settings: Settings) -> list[Record]:
    """Every record of the events topic, up to its end now."""
    consumer = groupless_consumer(settings.kafka_bootstrap, settings.kafka, purpose="bench")
    try:
        topic = consumer.list_topics(settings.topic, timeout=30).topics[settings.topic]
        ends = {}
        for partition in topic.partitions:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(settings.topic, partition), timeout=30
            )
            if high:
                ends[partition] = high
        consumer.assign([TopicPartition(settings.topic, p, 0) for p in ends])
        records: list[Record] = []
        while ends:
            for m in consumer.consume(1000, timeout=1.0):
                if m.error() is None and m.offset() < ends.get(m.partition(), 0):
                    records.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value()))
                    if m.offset() + 1 >= ends[m.partition()]:
                        del ends[m.partition()]
        return records
    finally:
        consumer.close()


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return f"p50 {statistics.median(ordered) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


def _asked(evalset: EvalSet, recall: Callable[[str, str, int], list[str]]) -> dict[int, float]:
    found = {5: 0.0, 10: 0.0}
    for question in evalset.questions:
        ranked = recall(question.user_id, question.query, 10)
        for k in found:
            hits = len(set(ranked[:k]) & set(question.evidence))
            found[k] += hits / len(question.evidence)
    return {k: total / len(evalset.questions) for k, total in found.items()}


def main() -> None:
    run = uuid.uuid4().hex[:8]
    names = {f"{n}_topic": f"bench-recall-{n}-{run}" for n in ("dlq", "keys", "audit")}
    settings = Settings.from_env(
        recall=True, topic=f"bench-recall-events-{run}", redis_prefix=f"bench-recall-{run}", **names
    )
    wiring.create_topics(settings)
    evalset = build()
    log = ChatLog.from_settings(settings, flush_on_sigterm=False)
    embedder = wiring.embedder(settings)
    index = RedisVectorIndex(
        wiring.redis_client(settings, url=settings.recall_redis),
        prefix=settings.redis_prefix,
        generation=log.reader.keys().generation,
        model=EmbeddingModel(embedder.model, embedder.dimension),
    )
    try:
        started = time.perf_counter()
        for t in evalset.turns:
            log.append(
                t.session_id,
                user_id=t.user_id,
                role=t.role,
                content=t.content,
                message_id=t.message_id,
            )
        print(f"appended {len(evalset.turns)} turns in {time.perf_counter() - started:.1f} s")
        index.ensure()
        core = RecallIndexing(embedder, opener=wiring.opener(settings))
        records = _records(settings)
        started = time.perf_counter()
        for start in range(0, len(records), _BATCH):
            work = core.plan(records[start : start + _BATCH])
            index.apply(work.upserts, work.deletions, work.marks)
        print(f"indexed {len(records)} records in {time.perf_counter() - started:.1f} s")

        def ranked(user: str, query: str, k: int) -> list[str]:
            return [turn.message_id for turn in log.recall(user, query, k=k)]

        quality = _asked(evalset, ranked)
        asked = len(evalset.questions)
        print(f"evidence recall@5 {quality[5]:.3f}, @10 {quality[10]:.3f} ({asked} questions)")
        timings = []
        for _ in range(_ROUNDS):
            for q in evalset.questions:
                started = time.perf_counter()
                log.recall(q.user_id, q.query, k=5)
                timings.append(time.perf_counter() - started)
        print(f"ChatLog.recall, k=5: {_ms(timings)} ({len(timings)} calls)")
        print(f"AsyncChatLog.recall, k=5: {asyncio.run(_async_timings(settings, evalset))}")
    finally:
        index.drop()
        keys = list(log.reader.client.scan_iter(match=f"{settings.redis_prefix}:*"))
        if keys:
            log.reader.client.unlink(*keys)
        log.close()
        embedder.close()
        wiring.admin_client(settings).delete_topics(
            [settings.topic, *names.values()], operation_timeout=30
        )


async def _async_timings(settings: Settings, evalset: EvalSet) -> str:
    async with AsyncChatLog.from_settings(settings, flush_on_sigterm=False) as log:
        timings = []
        for _ in range(_ROUNDS):
            for q in evalset.questions:
                started = time.perf_counter()
                await log.recall(q.user_id, q.query, k=5)
                timings.append(time.perf_counter() - started)
    return f"{_ms(timings)} ({len(timings)} calls)"


if __name__ == "__main__":
    main()
