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


def test_summarizer_metrics_show_llm_calls_tokens_breaker_and_cost(
    kafka, redis_url, redis_prefix, tmp_path
):
    with LlmStub() as stub:
        settings = unique_settings(
            kafka,
            redis_url,
            redis_prefix,
            partitions=2,
            window=20,
            summary_threshold=10,
            summarizer_group=f"summarizer-{uuid.uuid4().hex[:8]}",
            llm_base_url=stub.base_url,
            llm_model="stub-model",
            llm_timeout_s=5.0,
            llm_price_input_per_mtok=2.0,
            llm_price_output_per_mtok=8.0,
        )
        summarizer = settings.model_copy(update={"metrics_port": free_port()})
        base = base_of(summarizer)
        with (
            running_projector(settings, log=tmp_path / "projector.log"),
            running_processor("summarizer", summarizer, log=tmp_path / "summarizer.log"),
        ):
            wait_until(
                lambda: status(base, "/readyz")[0] == 200,
                timeout=90,
                what="the summarizer to be ready",
                every=0.2,
            )
            with full_chatlog(settings) as chat:
                for n in range(30):
                    chat.append("long", user_id="u", role="user", content=f"turn {n} #ZZ-{n:04d}")
            wait_until(
                lambda: value(scrape(base), "chatlog_summarizer_summaries_published_total") >= 1,
                timeout=90,
                what="a summary published",
                every=0.2,
            )
            samples = scrape(base)
        calls = len(stub.requests)
        assert value(samples, "chatlog_summarizer_llm_calls_total") == calls
        assert value(samples, "chatlog_summarizer_llm_errors_total") == 0
        assert value(samples, "chatlog_summarizer_llm_seconds_count") == calls
        tokens_in = value(samples, "chatlog_summarizer_llm_tokens_total", direction="in")
        tokens_out = value(samples, "chatlog_summarizer_llm_tokens_total", direction="out")
        assert tokens_in > 0
        assert tokens_out > 0
        cost = value(samples, "chatlog_summarizer_llm_cost_dollars_total")
        assert cost == pytest.approx((tokens_in * 2.0 + tokens_out * 8.0) / 1e6)
        assert value(samples, "chatlog_summarizer_breaker_state", state="closed") == 1
        assert value(samples, "chatlog_summarizer_breaker_state", state="open") == 0
        assert value(samples, "chatlog_summarizer_records_total") >= 30


def test_gateway_metrics_are_on_the_metrics_port_by_route_template(
    kafka, redis_url, redis_prefix, tmp_path
):
    settings = unique_settings(
        kafka,
        redis_url,
        redis_prefix,
        auth_secret="metrics-tests-" + uuid.uuid4().hex,
        metrics_port=free_port(),
    )
    base = base_of(settings)
    with running_gateway(settings, log=tmp_path / "serve.log") as url:
        for _ in range(3):
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        session = uuid.uuid4().hex
        assert httpx.get(f"{url}/v1/sessions/{session}/context", timeout=5).status_code == 401
        # Not on the public API port.
        assert httpx.get(f"{url}/metrics", timeout=5).status_code == 404
        samples = scrape(base)
        assert status(base, "/readyz")[0] == 200
    requests = {
        dict(labels)["route"]: v
        for (name, labels), v in samples.items()
        if name == "chatlog_gateway_requests_total"
    }
    assert requests["/healthz"] == 3 + 1  # and running_gateway's first answered wait
    # The template, never the path: a session id is no label.
    assert requests["/v1/sessions/{session_id}/context"] == 1
    assert not any(session in route for route in requests)


def test_a_replay_serves_its_progress_while_it_runs(kafka, redis_url, redis_prefix):
    settings = unique_settings(kafka, redis_url, redis_prefix, partitions=2)
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        producer.publish_many(
            new_event(f"s-{n % 7}", user_id="u", payload=MessageAppended(role="user", content="x"))
            for n in range(200)
        )
    replay = settings.model_copy(update={"metrics_port": free_port()})
    base = base_of(replay)
    process = subprocess.Popen(
        [sys.executable, "-m", "chatlog.cli", "replay", "--handover", "3"],
        env=chatlog_env(replay),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The hand-over holds the replay for 3 s after the events are in: scraped then.
        wait_until(
            lambda: value(scrape_or_empty(base), "chatlog_replay_events_total") == 200,
            timeout=60,
            what="the replay's 200 events in its metrics",
            every=0.1,
        )
        assert value(scrape(base), "chatlog_replay_events_expected") == 200
    finally:
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err


def scrape_or_empty(base: str) -> Samples:
    try:
        return scrape(base)
    except httpx.TransportError:
        return {}
