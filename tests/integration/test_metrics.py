"""Metrics and health of the long-lived processes, scraped over HTTP from real processes
(`chatlog run projector`, `chatlog run summarizer`, `chatlog serve`) on real Kafka and
Redis while events are appended."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from chatlog import wiring
from chatlog.producers.commands import new_event
from chatlog.schemas.events import MessageAppended
from chatlog.settings import Settings
from tests.llm_stub import LlmStub
from tests.processes import (
    ROOT,
    chatlog_env,
    free_port,
    full_chatlog,
    running_gateway,
    running_processor,
    running_projector,
    unique_settings,
    wait_until,
)

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str) -> Samples:
    """Every sample of `base`/metrics, by (name, sorted labels)."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def status(base: str, path: str) -> tuple[int, str]:
    try:
        answer = httpx.get(f"{base}{path}", timeout=5)
    except httpx.TransportError as exc:
        return 0, str(exc)
    return answer.status_code, answer.text


def health(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatlog.cli", "health", *args],
        env=chatlog_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def settings(kafka, redis_url, redis_prefix) -> Settings:
    return unique_settings(
        kafka, redis_url, redis_prefix, partitions=3, metrics_port=free_port(), ready_max_lag=50
    )


def base_of(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.metrics_port}"


@pytest.fixture
def projector(settings: Settings, tmp_path) -> Iterator[str]:
    with running_projector(settings, log=tmp_path / "projector.log"):
        base = base_of(settings)
        wait_until(
            lambda: status(base, "/readyz")[0] == 200,
            timeout=60,
            what="the projector to be ready",
            every=0.2,
        )
        yield base


def test_projector_counters_move_by_the_events_applied_and_lag_is_per_partition(
    settings, projector, kafka
):
    before = scrape(projector)
    assert status(projector, "/livez")[0] == 200
    sessions = [f"s-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    with full_chatlog(settings) as chat:
        last = None
        for n in range(30):
            last = chat.append(sessions[n % 6], user_id="u", role="user", content=f"m{n}")
        assert last is not None
        chat.context(sessions[29 % 6], user_id="u", after=last, timeout=30)

    def applied() -> float:
        return value(scrape(projector), "chatlog_projector_events_applied_total") - value(
            before, "chatlog_projector_events_applied_total"
        )

    wait_until(lambda: applied() >= 30, timeout=30, what="30 events applied")
    after = scrape(projector)
    assert applied() == 30
    delta = {
        name: value(after, name) - value(before, name)
        for name in ("chatlog_projector_records_total", "chatlog_projector_events_applied_total")
    }
    assert delta == {
        "chatlog_projector_records_total": 30,
        "chatlog_projector_events_applied_total": 30,
    }
    lags = {
        dict(labels)["partition"] for (name, labels) in after if name == "chatlog_projector_lag"
    }
    assert lags == {"0", "1", "2"}
    visible = value(after, "chatlog_projector_publish_to_visible_seconds_count")
    assert visible - value(before, "chatlog_projector_publish_to_visible_seconds_count") == 30
    assert value(after, "chatlog_projector_batch_seconds_count") >= 1
    assert value(after, "chatlog_projector_dead_letters_total", reason="undecodable") == 0

    # A record that is no event: dead-lettered, counted under its reason.
    poison = Producer({"bootstrap.servers": kafka.bootstrap})
    poison.produce(settings.topic, key=b"s-poison", value=b"\x00\x00\x00\x00\x07not avro")
    poison.flush(10)
    wait_until(
        lambda: (
            value(scrape(projector), "chatlog_projector_dead_letters_total", reason="undecodable")
            == 1
        ),
        timeout=30,
        what="the dead letter counted",
    )
    assert value(scrape(projector), "chatlog_projector_events_applied_total") == value(
        after, "chatlog_projector_events_applied_total"
    )


def test_health_command_exit_codes(settings, projector):
    ready = health(settings)
    assert ready.returncode == 0, ready.stderr
    assert health(settings, "--live").returncode == 0
    # Nothing listens there: cannot tell.
    nobody = health(settings, "--url", f"http://127.0.0.1:{free_port()}")
    assert nobody.returncode == 75
    assert "cannot tell" in nobody.stderr


def test_a_projector_far_behind_is_not_ready_until_it_catches_up(
    kafka, redis_url, redis_prefix, tmp_path
):
    settings = unique_settings(
        kafka,
        redis_url,
        redis_prefix,
        partitions=1,
        metrics_port=free_port(),
        ready_max_lag=10,
        projector_batch=1,
    )
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        producer.publish_many(
            new_event(
                f"s-{n % 50}", user_id="u", payload=MessageAppended(role="user", content=f"m{n}")
            )
            for n in range(3000)
        )
    base = base_of(settings)
    seen: list[str] = []

    def answered(code: int) -> bool:
        got, body = status(base, "/readyz")
        seen.append(body)
        return got == code

    with running_projector(settings, log=tmp_path / "projector.log"):
        wait_until(lambda: answered(503) and "behind" in seen[-1], timeout=60, what="503 behind")
        behind = health(settings)
        assert behind.returncode in (0, 1)  # it may have caught up since
        wait_until(lambda: answered(200), timeout=120, what="the projector to catch up")
        assert health(settings).returncode == 0
