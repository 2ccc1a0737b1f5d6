"""The recall benchmark's endpoint row: which model it measures, and a clear refusal."""

from __future__ import annotations

import pytest

from bench.scenarios.recall_quality import _endpoint
from chatlog.schemas.errors import ConfigError
from chatlog.settings import Settings

BASE = Settings(kafka_bootstrap="localhost:9092", redis_url="redis://localhost:6379/0")


def test_no_endpoint_is_measured_unless_one_is_configured(monkeypatch):
    monkeypatch.delenv("BENCH_EMBEDDING_BASE_URL", raising=False)
    assert _endpoint(BASE) is None
    configured = BASE.model_copy(update={"embedding_provider": "openai"})
    assert _endpoint(configured) is configured


def test_the_benchmarks_own_endpoint_settings_name_the_model_and_keep_the_key_secret(
    monkeypatch,
):
    monkeypatch.setenv("BENCH_EMBEDDING_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("BENCH_EMBEDDING_MODEL", "bge-small")
    monkeypatch.setenv("BENCH_EMBEDDING_DIMENSION", "384")
    monkeypatch.setenv("BENCH_EMBEDDING_API_KEY", "sk-bench-secret")
    chosen = _endpoint(BASE)
    assert chosen is not None
    assert (chosen.embedding.provider, chosen.embedding.model, chosen.embedding.dimension) == (
        "openai",
        "bge-small",
        384,
    )
    assert chosen.embedding_base_url == "http://127.0.0.1:8000/v1"
    assert "sk-bench-secret" not in repr(chosen)


@pytest.mark.parametrize("dimension", [None, "many"])
def test_an_unknown_model_without_a_whole_dimension_is_refused_naming_the_bench_setting(
    monkeypatch, dimension
):
    monkeypatch.setenv("BENCH_EMBEDDING_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("BENCH_EMBEDDING_MODEL", "bge-small")
    if dimension is None:
        monkeypatch.delenv("BENCH_EMBEDDING_DIMENSION", raising=False)
    else:
        monkeypatch.setenv("BENCH_EMBEDDING_DIMENSION", dimension)
    with pytest.raises(ConfigError, match="BENCH_EMBEDDING_DIMENSION") as refused:
        _endpoint(BASE)
    assert "BENCH_EMBEDDING_BASE_URL" in str(refused.value)
