"""Capacity, the summarizer: summaries a second per LLM slot, and CPU per summary.

A slot is one summary in flight (`CHATLOG_SUMMARIZER_CONCURRENCY` counts them per
summarizer). The real `SummaryEngine` drives the summarizer `wiring.summarizer` builds for
an LLM endpoint (the OpenAI client, with its retries and circuit breaker) against a
stand-in LLM of a fixed latency in a process of its own (`bench.llm_child`: the tests'
OpenAI-compatible stub over HTTP), publishing every `SummaryUpdated` through the real
producer. Sessions and records are those of the summary-throughput scenario: each
session's overflow has just reached the threshold, so each record makes one summary due.
The benchmark's process is the summarizer here, so its CPU seconds per summary are the
summarizer's (engine, HTTP client, JSON, producer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.infra import REPO, BenchStack, fresh_producer, terminate
from bench.measure import CpuMeter, frozen_heap, load_average, percentile
from bench.plan import Plan
from bench.report import Figure, say
from bench.scenarios.summary_throughput import due_sessions, summarize_due
from chatlog import wiring
from chatlog.producers.kafka_producer import AsyncConversationProducer

__all__ = ["SlotRun", "stand_in_llm", "summarizer_slots"]


@dataclass
class SlotRun:
    """What the summarizer part measured, for the table and the model."""

    figures: list[Figure] = field(default_factory=list)
    per_slot: dict[float, float] = field(default_factory=dict)  # latency -> summaries/s
    cpu_per_summary: float = 0.0  # µs, median over every run
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def stand_in_llm(latency: float) -> Iterator[str]:
    """`bench.llm_child` answering after `latency` s; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.llm_child", f"{latency:g}"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"the stand-in LLM did not start (exit {process.poll()})")
        yield url
    finally:
        terminate(process)
        if process.stdout is not None:
            process.stdout.close()


def summarizer_slots(stack: BenchStack, plan: Plan) -> SlotRun:
    """Summaries/s per slot for each stand-in latency and slot count."""
    settings = stack.scenario("capacity_llm")
    codec = wiring.codec(settings)
    slots = plan.capacity_llm_slots
    counts = {k: plan.capacity_llm_rounds * k for k in slots}
    run = SlotRun()
    rates: dict[tuple[float, int], Figure] = {}
    per_slot: dict[tuple[float, int], Figure] = {}
    events: dict[tuple[float, int], Figure] = {}
    cpu: dict[float, Figure] = {}
    tails: dict[float, tuple[Figure, Figure]] = {}
    top = max(slots)
    for latency in plan.capacity_llm_latencies:
        call = f"LLM {latency * 1000:,.0f} ms a call"
        for k in slots:
            rates[latency, k] = Figure(f"summarizer, {call}, {k} slots: summaries/s", "sessions/s")
            per_slot[latency, k] = Figure(
                f"summarizer, {call}, {k} slots: summaries/s per slot", "sessions/s"
            )
            events[latency, k] = Figure(
                f"summarizer, {call}, {k} slots: events/s per slot (x {settings.summary_threshold} "
                f"turns a summary)",
                "events/s",
            )
        cpu[latency] = Figure(f"summarizer, {call}: CPU per summary ({top} slots)", "µs")
        tails[latency] = (
            Figure(f"summarizer, {call}, {top} slots: one summary (call + publish) p50", "ms"),
            Figure(f"summarizer, {call}, {top} slots: one summary (call + publish) p99", "ms"),
        )
    producer = fresh_producer(settings)
    try:
        due = due_sessions(
            max(counts.values()), topic=settings.topic, codec=codec, info=producer.info
        )
        publisher = AsyncConversationProducer(producer)
        meter = CpuMeter.for_stack(stack)

        async def measure(latency: float, url: str) -> None:
            llm_settings = settings.model_copy(update={"llm_base_url": url})
            llm, close = wiring.summarizer(llm_settings)
            try:
                # A warm-up round: connections, the topic's metadata.
                await summarize_due(
                    due, top, publisher, llm, in_flight=top, latency=latency, codec=codec,
                    info=producer.info,
                )  # fmt: skip
                for n in range(1, plan.repeat + 1):
                    for k in slots:
                        load = load_average()
                        meter.start()
                        rate, latencies = await summarize_due(
                            due, counts[k], publisher, llm, in_flight=k, latency=latency,
                            codec=codec, info=producer.info,
                        )  # fmt: skip
                        used = meter.seconds()
                        rates[latency, k].add(rate, load)
                        per_slot[latency, k].add(rate / k, load)
                        events[latency, k].add(rate / k * due.threshold, load)
                        if k == top:
                            cpu[latency].add(used["bench"] / counts[k] * 1e6, load)
                            ms = [s * 1000 for s in latencies]
                            tails[latency][0].add(percentile(ms, 50), load)
                            tails[latency][1].add(percentile(ms, 99), load)
                        say(
                            f"capacity summarizer {latency:g} s, {k} slots r{n}: {rate:,.1f} "
                            f"summaries/s ({rate / k:.2f} per slot), load {load:.2f}"
                        )
            finally:
                await close()

        for latency in plan.capacity_llm_latencies:
            with stand_in_llm(latency) as url, frozen_heap():
                asyncio.run(measure(latency, url))
    finally:
        producer.close()
    for latency in plan.capacity_llm_latencies:
        for k in slots:
            run.figures += [rates[latency, k], per_slot[latency, k], events[latency, k]]
        run.figures += [cpu[latency], *tails[latency]]
        # Where one process's CPU is not the bound yet: slots, not cores, are counted.
        run.per_slot[latency] = per_slot[latency, min(slots)].median
    every = [v for figure in cpu.values() for v in figure.values]
    run.cpu_per_summary = sorted(every)[len(every) // 2] if every else float("nan")
    run.notes.append(
        f"summarizer: the real SummaryEngine (threshold {due.threshold}) and the summarizer "
        f"`wiring.summarizer` builds for CHATLOG_LLM_BASE_URL (OpenAI client, retries, "
        f"breaker), against `bench.llm_child` (the tests' OpenAI-compatible stub over HTTP, "
        f"in its own process) answering every call after a fixed latency; each slot count "
        f"runs {plan.capacity_llm_rounds} rounds of calls after a warm-up round; the "
        f"summaries are published to Kafka (acks=all); the ideal is 1 / latency summaries/s "
        f"per slot; CPU per summary is the benchmark process's (it is the summarizer here) "
        f"over the run at {top} slots; session views come from memory (no Redis read); "
        f"the model counts slots from the rate per slot at {min(slots)} slots: at {top}, one "
        f"summarizer process's CPU (and the stand-in's, on the same cores) is the bound, "
        f"which the model counts as summarizer cores"
    )
    rounded = {f"{k:g} s": round(v, 2) for k, v in run.per_slot.items()}
    say(f"capacity summarizer: summaries/s per slot {json.dumps(rounded)}")
    return run
