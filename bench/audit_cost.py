"""What an audit record costs: `python -m bench.audit_cost [--records N]` on the local stack.

Three figures, each the time `AuditTrail.record` takes to return (the record committed):

* the first record of a writer: it starts a transactional producer (`init_transactions`,
  which fences the partition's other writers) and reads the partition's last record;
* the steady state: one transaction (add the partition, produce, commit) per record;
* a record after another writer took the partition: fenced, it starts over (the first
  record's cost again, plus the failed commit).

It writes to a topic of its own (deleted afterwards) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable, Sequence

from chatlog import wiring
from chatlog.processors.audit import AuditTrail
from chatlog.processors.kafka_audit import KafkaAuditWriter
from chatlog.producers.kafka_topics import TopicSpec, ensure_topics
from chatlog.schemas.audit import AuditAction
from chatlog.settings import Settings


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.audit_cost", description=__doc__)
    parser.add_argument("--records", type=int, default=300, help="steady-state records (300)")
    parser.add_argument("--rounds", type=int, default=10, help="first and fenced records (10)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    topic = f"bench.audit.{uuid.uuid4().hex[:8]}"
    admin = wiring.admin_client(settings)
    ensure_topics(admin, [TopicSpec(topic, 1, 1)])
    provider = wiring.key_provider(settings)

    def trail() -> AuditTrail:
        writer = KafkaAuditWriter(
            bootstrap_servers=settings.kafka_bootstrap, topic=topic, partition=0
        )
        return AuditTrail(writer, provider, "bench@local")

    def record(on: AuditTrail) -> Callable[[], object]:
        return lambda: on.record(AuditAction.SESSION_CREATED, user_id="bench", session_id="b")

    try:
        first, fenced = [], []
        for _ in range(args.rounds):
            one = trail()
            first.append(_timed(record(one)))
            other = trail()
            other.record(AuditAction.OPERATOR_READ, session_id="b")  # takes the partition
            fenced.append(_timed(record(one)))
            one.close()
            other.close()
        steady_trail = trail()
        steady_trail.record(AuditAction.OPERATOR_READ, session_id="warm-up")
        steady = sorted(_timed(record(steady_trail)) for _ in range(args.records))
        steady_trail.close()
    finally:
        admin.delete_topics([topic])
    rows = [
        ("first record of a writer", first),
        ("steady state", steady),
        ("after another writer took the partition", fenced),
    ]
    print("| audit record | p50 | p99 | n |")
    print("|---|---|---|---|")
    for name, samples in rows:
        ordered = sorted(samples)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        print(f"| {name} | {_ms(statistics.median(ordered))} | {_ms(p99)} | {len(ordered)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
