"""The metrics' names: Prometheus conventions, every one documented, and the Grafana
dashboard querying only metrics the code exposes (no dashboard drift)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from chatlog.gateway.request_stats import GatewayStats
from chatlog.processors.projector_stats import ProjectorStats
from chatlog.prom_metrics import (
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
    registry = registry_of(
        ProjectorCollector(projector),  # type: ignore[arg-type]
        SummarizerCollector(worker, prices=(1.0, 2.0)),  # type: ignore[arg-type]
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
