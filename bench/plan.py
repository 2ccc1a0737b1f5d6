"""How big each scenario is: the full run the numbers come from, and the quick one for CI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Plan"]


@dataclass(frozen=True, slots=True)
class Plan:
    """How big each scenario is: `full()` for the numbers, `quick_plan()` to check it runs."""

    quick: bool
    repeat: int
    events: int
    sessions: int
    record_bytes: int
    # (events/s, every n-th event sampled): about 200 samples a second at every rate, so
    # that measuring costs the same everywhere (more samples slow the benchmark process,
    # publisher included, and show up as latency: measured).
    rates: tuple[tuple[float, int], ...]
    latency_samples: int  # sampled events per rate and repetition, at least
    min_duration_s: float
    warmup_s: float
    # The latency scenario's sweep for the saturation rate (where p99 passes 100 ms):
    # offered rates in order, each for a warm-up and a measured span, once a repetition.
    sweep_rates: tuple[float, ...]
    sweep_s: float
    end_to_end_records: int
    reads: tuple[tuple[int, int], ...]  # (messages in the session, timed reads)
    read_sessions: int
    append_sessions: int
    append_batched: int
    append_each: int
    append_peers: int
    producer_records: int
    summary_turns: tuple[int, ...]
    summary_sessions: int
    summary_rounds: int
    summary_in_flight: tuple[int, ...]
    replay_events: int
    replay_sessions: int
    # The sealing scenario: the same events sealed and clear, side by side.
    sealing_events: int
    sealing_sessions: int
    sealing_core: int  # of those, how many go through the core in-process
    sealing_reads: int  # timed context reads of each kind (20-message sessions)
    sealing_append_each: int
    sealing_append_batched: int
    erase_users: int  # users of 100 sessions each, erased one by one
    erase_others: int  # other sessions in the read-model meanwhile
    pii_events: int  # events encoded in every redaction mode, per repetition
    recall_users: int  # users of the recall evaluation set (3 visits, 6 questions each)
    # The recall_cost scenario's latency: the index grown to each size (turns), spread
    # evenly over so many users; timed recalls per size and repetition.
    recall_latency_turns: tuple[int, ...]
    recall_latency_users: int
    recall_latency_queries: int
    # The gateway scenario: offered loads (requests/s), open loop, each for a warm-up and
    # a measured duration; the users' sessions it runs on.
    gateway_rates: tuple[int, ...]
    gateway_warmup_s: float
    gateway_duration_s: float
    gateway_drain_s: float  # how long requests still in flight at the end may take
    gateway_users: int
    gateway_messages: int  # in each session that is read
    # The capacity scenario: a topic of its own partitions, drained by each layout of
    # projector processes (1, then 3 in one group), then live at paced rates (events/s,
    # every n-th sampled); the summarizer against a stand-in LLM of each latency (s) with
    # each number of slots, whole rounds; typical sessions for the Redis bytes.
    capacity_partitions: int
    capacity_events: int
    capacity_sessions: int
    capacity_projectors: tuple[int, ...]
    capacity_rates: tuple[tuple[float, int], ...]
    capacity_live_s: float
    capacity_idle_s: float  # the processes' idle CPU, measured before the live runs
    capacity_llm_latencies: tuple[float, ...]
    capacity_llm_slots: tuple[int, ...]
    capacity_llm_rounds: int
    capacity_users: int
    capacity_sessions_per_user: int
    capacity_turns: int
    # LangGraph checkpoints: (serialized state in bytes, timed puts and as many reads).
    checkpoint_calls: tuple[tuple[int, int], ...]
    # `--sealing both` (the default): the headline rows measured with sealing off too,
    # beside the sealed ones (`bench.infra.sealing_variants`, `Report.twin`); "on": sealed
    # only. The clear twin of a heavy row (publish-to-visible, projection, replay) runs
    # `clear_repeat` repetitions (at most `repeat`), a cheap one as many as the sealed.
    sealing: Literal["on", "both"] = "both"
    clear_repeat: int = 2

    @property
    def clear_repetitions(self) -> int:
        """How many repetitions a heavy row's clear twin runs."""
        return max(1, min(self.repeat, self.clear_repeat))

    @classmethod
    def full(cls, repeat: int = 3) -> Plan:
        """The run the numbers come from (about ten minutes on the 2-core dev machine)."""
        return cls(
            quick=False,
            repeat=repeat,
            events=100_000,
            sessions=2_000,
            record_bytes=200,
            rates=((500.0, 2), (2_000.0, 10), (4_000.0, 20)),
            latency_samples=1_700,
            min_duration_s=5.0,
            warmup_s=1.0,
            sweep_rates=(500.0, 1_000.0, 2_000.0, 3_000.0, 4_000.0, 6_000.0, 8_000.0),
            sweep_s=2.5,
            end_to_end_records=5_000,
            reads=((20, 3_000), (100, 2_000), (1_000, 500)),
            read_sessions=10,
            append_sessions=200,
            append_batched=30_000,
            append_each=1_000,
            append_peers=10_000,
            producer_records=300_000,
            summary_turns=(100, 500, 1_000),
            summary_sessions=2_000,
            summary_rounds=25,
            summary_in_flight=(1, 8, 32, 128),
            replay_events=500_000,
            replay_sessions=5_000,
            sealing_events=30_000,
            sealing_sessions=600,
            sealing_core=10_000,
            sealing_reads=3_000,
            sealing_append_each=300,
            sealing_append_batched=10_000,
            erase_users=5,
            erase_others=10_000,
            pii_events=3_000,
            recall_users=40,
            recall_latency_turns=(10_000, 100_000),
            recall_latency_users=1_000,
            recall_latency_queries=1_000,
            gateway_rates=(200, 500, 1_000),
            gateway_warmup_s=1.0,
            gateway_duration_s=5.0,
            gateway_drain_s=30.0,
            gateway_users=100,
            gateway_messages=10,
            capacity_partitions=12,
            capacity_events=60_000,
            capacity_sessions=1_200,
            capacity_projectors=(1, 3),
            capacity_rates=((1_000.0, 5), (2_000.0, 10)),
            capacity_live_s=5.0,
            capacity_idle_s=3.0,
            capacity_llm_latencies=(0.2, 1.0),
            capacity_llm_slots=(8, 64),
            capacity_llm_rounds=4,
            capacity_users=250,
            capacity_sessions_per_user=4,
            capacity_turns=40,
            checkpoint_calls=((2_000, 1_000), (200_000, 200)),
        )

    @classmethod
    def quick_plan(cls, repeat: int = 1) -> Plan:
        """Everything shrunk so the run takes about a minute (for CI)."""
        return cls(
            quick=True,
            repeat=repeat,
            events=5_000,
            sessions=200,
            record_bytes=200,
            rates=((500.0, 2), (2_000.0, 10), (4_000.0, 20)),
            latency_samples=300,
            min_duration_s=0.6,
            warmup_s=0.3,
            sweep_rates=(1_000.0, 4_000.0),
            sweep_s=0.6,
            end_to_end_records=300,
            reads=((20, 200), (100, 100), (1_000, 30)),
            read_sessions=2,
            append_sessions=50,
            append_batched=3_000,
            append_each=100,
            append_peers=1_000,
            producer_records=30_000,
            summary_turns=(100, 300),
            summary_sessions=200,
            summary_rounds=5,
            summary_in_flight=(1, 8, 128),
            replay_events=50_000,
            replay_sessions=1_000,
            sealing_events=3_000,
            sealing_sessions=100,
            sealing_core=1_000,
            sealing_reads=200,
            sealing_append_each=30,
            sealing_append_batched=1_000,
            erase_users=2,
            erase_others=500,
            pii_events=300,
            recall_users=8,
            recall_latency_turns=(2_000,),
            recall_latency_users=100,
            recall_latency_queries=100,
            gateway_rates=(200, 500, 1_000),
            gateway_warmup_s=0.3,
            gateway_duration_s=1.0,
            gateway_drain_s=5.0,
            gateway_users=20,
            gateway_messages=5,
            capacity_partitions=6,
            capacity_events=5_000,
            capacity_sessions=200,
            capacity_projectors=(1, 3),
            capacity_rates=((1_000.0, 5),),
            capacity_live_s=0.6,
            capacity_idle_s=0.5,
            capacity_llm_latencies=(0.2,),
            capacity_llm_slots=(8,),
            capacity_llm_rounds=2,
            capacity_users=10,
            capacity_sessions_per_user=2,
            capacity_turns=40,
            checkpoint_calls=((2_000, 50), (200_000, 10)),
        )
