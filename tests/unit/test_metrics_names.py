"""The metrics' names: Prometheus conventions, every one documented, and the Grafana
dashboard querying only metrics the code exposes (no dashboard drift)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from types import SimpleNamespace

from chatlog.gateway.request_stats import UNMATCHED, GatewayStats, RequestStats
from chatlog.processors.embedder_stats import EmbedderStats
from chatlog.processors.embeddings import EmbeddingStats
from chatlog.processors.kafka_replay import ReplayProgress
from chatlog.processors.measures import Histogram
from chatlog.processors.projector_stats import ProjectorStats
from chatlog.processors.resilience import CircuitBreaker
from chatlog.prom_metrics import (
    EmbedderCollector,
    GatewayCollector,
    ProjectorCollector,
    ReplayCollector,
    SummarizerCollector,
    registry_of,
)

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("", "_bucket", "_sum", "_count")}


def _families() -> dict[str, str]:
    """Every family the processes expose (the cost one included), by name: its type."""
    projector = SimpleNamespace(stats=ProjectorStats(), assigned={0})
    worker = SimpleNamespace(engine=None, assigned=frozenset())
    model = SimpleNamespace(stats=EmbeddingStats(), breaker=CircuitBreaker())
    embedder = SimpleNamespace(stats=EmbedderStats(), assigned={0}, embedder=model)
    registry = registry_of(
        ProjectorCollector(projector),  # type: ignore[arg-type]
        SummarizerCollector(worker, prices=(1.0, 2.0)),  # type: ignore[arg-type]
        EmbedderCollector(embedder),  # type: ignore[arg-type]
        ReplayCollector(),
        GatewayCollector(GatewayStats()),
    )
    return {family.name: family.type for family in registry.collect()}


def _series_names() -> set[str]:
    return {name + s for name, kind in _families().items() for s in SUFFIXES.get(kind, ("",))}


def test_names_follow_prometheus_conventions():
    for name, kind in _families().items():
        if name.startswith("process_"):
            continue  # prometheus_client's own
        assert name.startswith("chatlog_"), name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        if kind == "histogram":
            assert name.endswith("_seconds"), f"{name}: a histogram of time, in seconds"
        assert not name.endswith("_total"), f"{name}: the counter's _total is added once"


def test_no_label_can_hold_a_session_or_user_id():
    projector = ProjectorStats()
    projector.lag = {0: 1}
    gateway = GatewayStats()
    gateway.add("GET", "/v1/sessions/{session_id}/context", 200, 0.01)
    registry = registry_of(
        ProjectorCollector(SimpleNamespace(stats=projector, assigned={0})),  # type: ignore[arg-type]
        GatewayCollector(gateway),
    )
    labels = {label for family in registry.collect() for s in family.samples for label in s.labels}
    bounded = {"reason", "partition", "method", "route", "status", "direction", "state", "le"}
    assert labels <= bounded


def test_every_metric_is_listed_in_the_operations_page():
    page = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for name, kind in _families().items():
        if name.startswith("process_"):
            continue
        shown = name + ("_total" if kind == "counter" else "")
        assert f"`{shown}`" in page, f"{shown} is missing from docs/operations.md"
    listed = set(re.findall(r"`(chatlog_[a-z0-9_]+)`", page))
    assert listed <= _series_names(), f"documented but not exposed: {listed - _series_names()}"


def test_the_dashboard_queries_only_metrics_the_code_exposes():
    dashboard = json.loads((ROOT / "dev" / "grafana" / "chatlog.json").read_text("utf-8"))
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert queries
    used = {m for q in queries for m in re.findall(r"\b((?:chatlog|process)_[a-z0-9_]+)", q)}
    assert used - _series_names() == set()
    # And it charts every chatlog metric, so a new one is not forgotten there either.
    charted = {re.sub(r"_(bucket|sum|count|total)$", "", m) for m in used}
    exposed = {n for n in _families() if n.startswith("chatlog_")}
    assert exposed - charted == set()


def test_a_histogram_counts_each_value_in_the_bucket_of_its_upper_bound():
    histogram = Histogram(bounds=(0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert (histogram.count, histogram.total) == (4, 3.65)


def test_the_gateway_counts_requests_by_route_template_and_status():
    stats = GatewayStats()

    class Route:
        path = "/v1/sessions/{session_id}/context"

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] != "/nowhere":
            scope["route"] = Route()  # as FastAPI's router sets it
        await send(
            {"type": "http.response.start", "status": 404 if "nowhere" in scope["path"] else 200}
        )

    async def send(message):
        pass

    async def requests():
        counted = RequestStats(app, stats)
        for path in ("/v1/sessions/s-1/context", "/v1/sessions/s-2/context", "/nowhere"):
            await counted({"type": "http", "method": "GET", "path": path}, None, send)
        await counted({"type": "lifespan"}, None, send)  # not a request

    asyncio.run(requests())
    assert stats.requests == {
        ("GET", "/v1/sessions/{session_id}/context", "200"): 2,
        ("GET", UNMATCHED, "404"): 1,
    }
    assert stats.seconds["/v1/sessions/{session_id}/context"].count == 2


def test_a_replays_progress_is_exposed():
    collector = ReplayCollector()
    collector(ReplayProgress("replaying", done=40, total=100, dead_letters=1))
    samples = {s.name: s.value for f in collector.collect() for s in f.samples}
    assert samples["chatlog_replay_events_total"] == 40
    assert samples["chatlog_replay_events_expected"] == 100
    assert samples["chatlog_replay_dead_letters_total"] == 1
