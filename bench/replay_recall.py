"""``python -m bench.replay_recall``: what semantic recall adds to `chatlog replay`.

    python -m bench.replay_recall                    # 120 users' support chats, 2 repetitions
    python -m bench.replay_recall --users 40 --repeats 3 --workers 2

The turns of the recall evaluation set (`bench.recall_eval`: long support chats, user and
assistant turns of realistic length) are published once, sealed as by default, to a topic
of the run's own. Each repetition then rebuilds that topic from offset 0 twice,
`chatlog.processors.replay.rebuild(parts, handover_s=0)` as `chatlog replay` runs it,
once with ``CHATLOG_RECALL`` off and once on (the order alternates), each into a Redis
prefix of its own (nothing live: no catch-up) whose key directory is copied first, off
the clock. The embedding provider is the settings' (the offline wordllama by default);
its load is off the clock too (the sink is made before the rebuild starts its clock).

It prints, per run, events/s of the whole rebuild (from `RebuildReport.seconds`) and,
with recall on, the turns indexed and turns/s; then the medians and the ratio. Topics,
keys and recall indexes are deleted at the end. Kafka and the Redis servers are
``CHATLOG_*``'s, else the local stack's.
"""

from __future__ import annotations

import argparse
import statistics

import redis

from bench.infra import BenchStack, copy_key_directory, fresh_producer, publish_bulk
from bench.recall_eval import build
from chatlog import wiring
from chatlog.processors.replay import rebuild
from chatlog.producers.commands import append_message
from chatlog.projections.redis_vectors import recall_generations
from chatlog.settings import Settings


def _drop_indexes(stack: BenchStack, client: redis.Redis, prefix: str) -> None:
    """Every recall index under `prefix`, with its documents, metadata and progress."""
    for generation in recall_generations(client, prefix=prefix):
        client.execute_command("FT.DROPINDEX", f"{prefix}:{generation}:recall", "DD")
    stack.forget_keys(prefix, client=client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=120, help="users of the evaluation set")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="replay worker processes")
    args = parser.parse_args()
    stack = BenchStack(Settings.from_env())
    recall_client = redis.Redis.from_url(stack.base.recall_redis)
    try:
        settings = stack.scenario("replay-recall")
        turns = build(args.users).turns
        events = [
            append_message(
                t.session_id,
                user_id=t.user_id,
                role=t.role,
                content=t.content,
                message_id=t.message_id,
            )
            for t in turns
        ]
        producer = fresh_producer(settings)
        try:
            publish_bulk(producer, events)
        finally:
            producer.close()
        print(f"{len(events):,} events ({args.users} users), workers={args.workers}")
        print(f"{'run':10} {'recall':6} {'events/s':>9} {'seconds':>8} {'turns':>7} {'turns/s':>8}")
        rates: dict[bool, list[float]] = {False: [], True: []}
        for rep in range(args.repeats):
            for recall in (False, True) if rep % 2 == 0 else (True, False):
                run = stack.repetition(settings, f"r{rep}-{'on' if recall else 'off'}")
                run = run.model_copy(update={"recall": recall})
                copy_key_directory(stack.redis, settings.redis_prefix, run.redis_prefix)
                try:
                    report = rebuild(wiring.replay_parts(run), handover_s=0, workers=args.workers)
                finally:
                    if recall:
                        _drop_indexes(stack, recall_client, run.redis_prefix)
                rate = report.events / report.seconds
                rates[recall].append(rate)
                indexed = report.recall_documents or 0
                print(
                    f"r{rep:<9} {'on' if recall else 'off':6} {rate:>9,.0f} "
                    f"{report.seconds:>8.1f} {indexed:>7,} "
                    f"{(indexed / report.seconds if recall else 0):>8,.0f}",
                    flush=True,
                )
        off, on = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"median events/s: recall off {off:,.0f}, on {on:,.0f} (on / off = {on / off:.2f})")
    finally:
        problems = stack.cleanup()
        recall_client.close()
        if problems:
            print("clean-up problems:", *problems, sep="\n  ")


if __name__ == "__main__":
    main()
