"""The capacity model's arithmetic (`bench.capacity_model`), on round numbers."""

from __future__ import annotations

from bench.capacity_model import Assumptions, Measured, worked

MEASURED = Measured(
    projector_us=100.0,
    projector_drain_us=50.0,
    redis_us=20.0,
    kafka_us=30.0,
    record_bytes=250.0,
    replication=3,
    brokers=3,
    summaries_per_slot={0.2: 4.0, 1.0: 0.8},
    summarizer_us=2_000.0,
    threshold=10,
    session_bytes=20 * 1024,
    user_bytes=1024,
)


def results() -> dict[str, str]:
    return {line.what: line.result for line in worked(MEASURED, Assumptions())}


def test_projectors_and_partitions_follow_the_cost_per_event():
    found = results()
    # 10,000/s x 100 µs = 1 core; at 50% busy, 2 processes; 2 partitions each -> 4 -> 6.
    assert found["projector CPU"].startswith("1.00 cores at 100% busy (0.50 at")
    assert found["projector processes (one core each)"] == "2"
    assert found["partitions of the events topic (the ceiling on projector processes)"] == "6"


def test_redis_memory_and_llm_slots():
    found = results()
    # 1,000,000 x (1 KB + 4 x 20 KB) = 81,000,000 KB = 77.2 GiB.
    assert found["Redis memory (data, before the allocator's overhead)"] == "77.2 GiB"
    # 10,000/s x 50% / 10 turns = 500 summaries/s; ÷ 4 per slot = 125, ÷ 0.8 = 625.
    assert found["summaries needed"] == "500/s"
    slots = [v for k, v in found.items() if k.startswith("LLM slots")]
    assert slots == ["125", "625"]
    # 500/s x 2 ms = 1 core: 2 processes at 50%.
    assert found["summarizer CPU"].startswith("1.00 cores: 2 summarizer")
