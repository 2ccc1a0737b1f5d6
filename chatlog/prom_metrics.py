"""Prometheus metrics and health checks of chatlog's long-lived processes.

Every process counts in its own stats objects (`ProjectorStats`, `SummaryStats`,
`EmbedderStats`, `GatewayStats`, a replay's `ReplayProgress`), which its log lines read too. The
collectors here read those objects at each scrape and expose them; nothing is counted
twice, and the processors never import a metrics library (this module, named for it,
is the only one that does: the ``metrics`` extra).

`MetricsServer` serves, on its own port (``CHATLOG_METRICS_PORT``, never the gateway's
public one), from a thread of its own:

- ``/metrics``: the Prometheus text format;
- ``/livez``: 200 while the process's loop turns, 503 when it hangs;
- ``/readyz``: 200 when the process does its job now (a projector: partitions assigned,
  caught up within ``CHATLOG_READY_MAX_LAG``, Redis answering), else 503 with the reason.

docs/operations.md lists every metric; the Grafana dashboard (dev/grafana/chatlog.json)
charts them, and a test checks that every metric it queries is one of these.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from chatlog.schemas.errors import MissingExtra

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.process_collector import ProcessCollector
    from prometheus_client.registry import Collector
except ImportError as missing:
    raise MissingExtra.needs("metrics", "metrics (CHATLOG_METRICS_PORT)", missing) from missing

from chatlog.processors.embedder_stats import SKIP_REASONS
from chatlog.processors.measures import Histogram
from chatlog.processors.summarizers import BreakerState
from chatlog.processors.summary_engine import SummaryStats

if TYPE_CHECKING:
    from chatlog.gateway.request_stats import GatewayStats
    from chatlog.processors.faust_summarizer import FaustSummarizer
    from chatlog.processors.kafka_embedder import KafkaEmbedder
    from chatlog.processors.kafka_projector import KafkaProjector
    from chatlog.processors.kafka_replay import ReplayProgress

__all__ = [
    "Check",
    "Collector",
    "EmbedderCollector",
    "GatewayCollector",
    "MetricsServer",
    "ProjectorCollector",
    "ReplayCollector",
    "SummarizerCollector",
    "registry_of",
]

log = logging.getLogger("chatlog.metrics")

# A check says why the process is not live (or ready); None when it is.
Check = Callable[[], str | None]


def registry_of(*collectors: Collector) -> CollectorRegistry:
    """A registry of `collectors` and the process's own (CPU, memory, open files)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _histogram(
    name: str, doc: str, histograms: Iterable[tuple[list[str], Histogram]], labels: list[str]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, histogram in histograms:
        buckets = [(_le(bound), count) for bound, count in histogram.cumulative()]
        family.add_metric(values, buckets, histogram.total)
    return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _partitions(
    prefix: str, unit: str, member: str, lags: Mapping[int, int], assigned: list[int]
) -> Iterator[Metric]:
    """A group member's lag per assigned partition, and how many it holds."""
    lag = GaugeMetricFamily(
        prefix + "lag",
        f"{unit.capitalize()} behind the partition's end, per assigned partition",
        labels=["partition"],
    )
    for partition, behind in sorted(lags.items()):
        if partition in assigned:
            lag.add_metric([str(partition)], behind)
    yield lag
    yield GaugeMetricFamily(
        prefix + "assigned_partitions", f"Partitions assigned to this {member}", value=len(assigned)
    )


class ProjectorCollector(Collector):
    """The projector's metrics (``chatlog_projector_*``), from its stats."""

    def __init__(self, projector: KafkaProjector) -> None:
        self._projector = projector

    def collect(self) -> Iterator[Metric]:
        stats, assigned = self._projector.stats, sorted(self._projector.assigned)
        p = "chatlog_projector_"
        yield _counter(
            p + "records", "Records consumed and finished (offsets stored)", stats.records
        )
        yield _counter(
            p + "events_applied", "Events taken into a view written to Redis", stats.events_applied
        )
        yield _counter(p + "views_written", "Session views written to Redis", stats.applied)
        yield _counter(p + "batches", "Batches projected", stats.batches)
        yield _counter(
            p + "duplicates", "Writes found done already (a replayed batch)", stats.duplicates
        )
        yield _counter(
            p + "conflicts",
            "Writes that met another writer's view and were folded again",
            stats.conflicts,
        )
        yield _counter(p + "erased_events", "Events of erased users, skipped", stats.erased)
        dead = CounterMetricFamily(
            p + "dead_letters",
            "Records sent to the dead-letter topic, by reason",
            labels=["reason"],
        )
        for reason in ("undecodable", "invalid", "foreign", "undecryptable"):
            dead.add_metric([reason], stats.dead_letter_reasons.get(reason, 0))
        yield dead
        yield _counter(
            p + "retries",
            "Failed attempts at a step, retried (Redis or the DLQ failing)",
            stats.retries,
        )
        yield _counter(
            p + "outages",
            "Times Redis or the DLQ started failing (consumption paused)",
            stats.outages,
        )
        yield _counter(p + "data_loss", "Times lost read-model data was found", stats.data_losses)
        yield _counter(
            "chatlog_redis_errors",
            "Redis calls that failed (refused, dropped, timed out)",
            stats.redis_errors,
        )
        yield from _partitions(p, "events", "projector", stats.lag, assigned)
        yield _histogram(
            p + "batch_seconds",
            "Time to project one batch into Redis, retries included",
            [([], stats.batch_seconds)],
            [],
        )
        yield _histogram(
            p + "publish_to_visible_seconds",
            "From an event's occurred_at to its view written",
            [([], stats.visible_seconds)],
            [],
        )


class SummarizerCollector(Collector):
    """The summarizer's metrics (``chatlog_summarizer_*``), from its engine's stats.

    With `prices` (dollars per million prompt and completion tokens) the LLM's cost too,
    derived from the token counters, so it cannot drift from them.
    """

    def __init__(
        self, worker: FaustSummarizer, *, prices: tuple[float, float] | None = None
    ) -> None:
        self._worker = worker
        self._prices = prices

    def collect(self) -> Iterator[Metric]:
        engine = self._worker.engine
        stats = engine.stats if engine is not None else SummaryStats()
        p = "chatlog_summarizer_"
        yield _counter(p + "records", "Records consumed", stats.records)
        yield _counter(
            p + "summaries_published",
            "Rolling summaries published",
            stats.published + stats.rebuilt,
        )
        yield _counter(
            p + "summaries_failed",
            "Summaries that failed (LLM or publish), retried later",
            stats.failed,
        )
        yield _counter(
            p + "summaries_stale", "Summaries dropped: the session had moved on", stats.stale
        )
        yield _counter(
            p + "llm_calls", "Calls to the summarizer (LLM), refused ones included", stats.requested
        )
        yield _counter(
            p + "llm_errors", "Calls that ended with no summary, after retries", stats.llm_failed
        )
        yield _counter(
            p + "llm_refused", "Calls refused at once: the circuit breaker was open", stats.refused
        )
        tokens = CounterMetricFamily(
            p + "llm_tokens", "Tokens of answered calls", labels=["direction"]
        )
        tokens.add_metric(["in"], stats.prompt_tokens)
        tokens.add_metric(["out"], stats.completion_tokens)
        yield tokens
        yield _histogram(
            p + "llm_seconds",
            "Time of one summarizer call, retries included",
            [([], stats.llm_seconds)],
            [],
        )
        if self._prices is not None:
            per_in, per_out = self._prices
            cost = (stats.prompt_tokens * per_in + stats.completion_tokens * per_out) / 1e6
            yield _counter(
                p + "llm_cost_dollars",
                "What the answered calls cost, by the configured prices",
                cost,
            )
        backlog = engine.tracker.size if engine is not None else 0
        yield GaugeMetricFamily(
            p + "backlog_records",
            "Records consumed, not yet committable (work under way)",
            value=backlog,
        )
        yield GaugeMetricFamily(
            p + "in_flight",
            "Loads and summaries under way",
            value=engine.in_flight if engine is not None else 0,
        )
        yield GaugeMetricFamily(
            p + "assigned_partitions",
            "Partitions assigned to this worker",
            value=len(self._worker.assigned),
        )
        yield _breaker_gauge(
            p + "breaker_state",
            "1 for the circuit breaker's state (none: no LLM)",
            _breaker_state(engine),
        )


def _breaker_gauge(name: str, doc: str, current: BreakerState | None) -> GaugeMetricFamily:
    breaker = GaugeMetricFamily(name, doc, labels=["state"])
    if current is not None:
        for state in BreakerState:
            breaker.add_metric([state.value], 1 if state is current else 0)
    return breaker


def _breaker_state(engine: Any) -> BreakerState | None:
    circuit = getattr(getattr(engine, "summarizer", None), "breaker", None)
    return None if circuit is None else circuit.state(time.monotonic())


class EmbedderCollector(Collector):
    """The embedder's metrics (``chatlog_embedder_*``), from its stats and its model's."""

    def __init__(self, embedder: KafkaEmbedder) -> None:
        self._embedder = embedder

    def collect(self) -> Iterator[Metric]:
        stats, assigned = self._embedder.stats, sorted(self._embedder.assigned)
        model = self._embedder.embedder
        p = "chatlog_embedder_"
        yield _counter(
            p + "records", "Records consumed and finished (indexed, offsets stored)", stats.records
        )
        yield _counter(p + "batches", "Batches written to the recall index", stats.batches)
        yield _counter(p + "turns_embedded", "Turns embedded", stats.embedded)
        yield _counter(p + "turns_written", "Turns written to the recall index", stats.written)
        yield _counter(p + "deletions", "Vectors deleted by redactions", stats.deleted)
        yield _counter(p + "erased", "Vectors deleted by session erasures", stats.erased)
        skipped = CounterMetricFamily(
            p + "skipped", "Records or turns not indexed, by reason", labels=["reason"]
        )
        for reason in SKIP_REASONS:
            skipped.add_metric([reason], stats.skipped.get(reason, 0))
        yield skipped
        yield _counter(
            p + "embed_failures",
            "Embedding calls that ended with no vectors, after the model's retries",
            model.stats.failed,
        )
        yield _counter(
            p + "embed_refused",
            "Embedding calls refused at once: the circuit breaker was open",
            model.stats.refused,
        )
        yield _counter(
            p + "retries",
            "Failed attempts at a batch, retried (the endpoint or the recall Redis failing)",
            stats.retries,
        )
        yield _counter(
            p + "outages",
            "Times the endpoint or the recall Redis started failing (consumption paused)",
            stats.outages,
        )
        yield _counter(p + "index_lost", "Times a lost recall index was found", stats.index_lost)
        yield _counter(
            p + "redis_errors",
            "Redis calls that failed (refused, dropped, timed out), retried",
            stats.redis_errors,
        )
        yield _breaker_gauge(
            p + "breaker_state",
            "1 for the embedding model's circuit breaker state",
            model.breaker.state(time.monotonic()),
        )
        yield from _partitions(p, "records", "embedder", stats.lag, assigned)
        yield _histogram(
            p + "batch_seconds",
            "Time to embed and index one batch, retries included",
            [([], stats.batch_seconds)],
            [],
        )
        yield _histogram(
            p + "embed_seconds",
            "Time of one batch's embedding call (answered ones), the model's retries included",
            [([], stats.embed_seconds)],
            [],
        )


class ReplayCollector(Collector):
    """A replay's progress (``chatlog_replay_*``), from its last progress report."""

    def __init__(self) -> None:
        self.progress: ReplayProgress | None = None

    def __call__(self, progress: ReplayProgress) -> None:
        """Take a progress report (an `on_progress` callback)."""
        self.progress = progress

    def collect(self) -> Iterator[Metric]:
        progress = self.progress
        done, total = (progress.done, progress.total) if progress is not None else (0, 0)
        yield _counter("chatlog_replay_events", "Events replayed (this phase)", done)
        yield GaugeMetricFamily(
            "chatlog_replay_events_expected", "Events the phase will replay", value=total
        )
        dead = progress.dead_letters if progress is not None else 0
        yield _counter("chatlog_replay_dead_letters", "Records the replay could not project", dead)


class GatewayCollector(Collector):
    """The gateway's requests (``chatlog_gateway_*``) by route template and status."""

    def __init__(self, stats: GatewayStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "chatlog_gateway_requests",
            "HTTP requests answered, by method, route template and status",
            labels=["method", "route", "status"],
        )
        for key, count in sorted(dict(self._stats.requests).items()):
            requests.add_metric(list(key), count)
        yield requests
        seconds = sorted(dict(self._stats.seconds).items())
        yield _histogram(
            "chatlog_gateway_request_seconds",
            "Time to answer a request, by route template",
            [([route], h) for route, h in seconds],
            ["route"],
        )


class MetricsServer:
    """/metrics, /livez and /readyz on `host`:`port`, served from a daemon thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str,
        port: int,
        live: Check,
        ready: Check,
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every few seconds is not worth a log line

        self._registry = registry
        self._live, self._ready = live, ready
        self._http = ThreadingHTTPServer((host, port), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="chatlog-metrics", daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL it serves."""
        host, port = self._http.server_address[:2]
        shown = host.decode() if isinstance(host, bytes) else host
        return f"http://{shown}:{port}"

    def start(self) -> MetricsServer:
        """Serve from a thread; returns itself."""
        self._thread.start()
        log.info("metrics on %s/metrics, health on /livez and /readyz", self.url)
        return self

    def close(self) -> None:
        """Stop serving."""
        self._http.shutdown()
        self._http.server_close()

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        if path == "/metrics":
            body, status, kind = generate_latest(self._registry), 200, CONTENT_TYPE_LATEST
        elif path in ("/livez", "/readyz"):
            check = self._live if path == "/livez" else self._ready
            try:
                problem = check()
            except Exception as exc:  # a check that cannot tell is a failed one
                problem = f"the check failed: {exc}"
            status = 200 if problem is None else 503
            body = (("ok" if problem is None else problem) + "\n").encode()
            kind = "text/plain; charset=utf-8"
        else:
            body, status, kind = b"not found: /metrics, /livez or /readyz\n", 404, "text/plain"
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
