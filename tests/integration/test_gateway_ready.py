"""The gateway's readiness and its stop, on a real `chatlog serve`, projector, Kafka and
Redis: ``/readyz`` says 503 while the projector is further behind than the bound, and a
gateway with an open live stream still stops at once, and cleanly, on SIGTERM."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest

from chatlog.gateway.tokens import TokenIssuer
from tests.integration.test_gateway import SECRET, Gateway, create, post, user
from tests.processes import (
    running_gateway,
    running_projector,
    start_projector,
    stop,
    unique_settings,
    wait_until,
)

pytestmark = pytest.mark.integration

MAX_LAG = 3


def readiness(gw: Gateway) -> tuple[int, dict]:
    answer = httpx.get(f"{gw.url}/readyz", timeout=30)
    return answer.status_code, answer.json()


def test_readyz_answers_503_while_the_projector_is_further_behind_than_the_bound(
    kafka, redis_url, tmp_path
):
    settings = unique_settings(
        kafka,
        redis_url,
        f"t{uuid.uuid4().hex[:12]}",
        auth_secret=SECRET,
        read_timeout_s=30.0,
        ready_max_lag=MAX_LAG,
    )
    projector = start_projector(settings, log=tmp_path / "projector.log")
    try:
        with running_gateway(settings, log=tmp_path / "serve.log") as url:
            gw = Gateway(url, settings, TokenIssuer.from_settings(settings))
            alice = user()
            session = create(gw, alice)  # answers once projected: the projector is up
            code, body = readiness(gw)
            assert (code, body["projector"], body["projector_lag"]) == (200, "ok", 0)
            assert body["max_lag"] == MAX_LAG

            assert stop(projector) == 0
            for n in range(MAX_LAG + 2):  # appends need no projector
                assert post(gw, alice, session, f"while stopped {n}").status_code == 201
            code, body = readiness(gw)
            assert code == 503
            assert body["status"] == "not ready"
            assert (body["kafka"], body["redis"], body["projector"]) == ("ok", "ok", "behind")
            assert body["projector_lag"] == MAX_LAG + 2

            projector = start_projector(settings, log=tmp_path / "projector.log")
            wait_until(
                lambda: readiness(gw)[0] == 200,
                timeout=60,
                what="the restarted projector to catch up",
                every=0.5,
            )
            assert readiness(gw)[1]["projector_lag"] == 0
    finally:
        stop(projector)


def test_a_gateway_with_an_open_stream_stops_at_once_on_sigterm(kafka, redis_url, tmp_path):
    settings = unique_settings(
        kafka, redis_url, f"t{uuid.uuid4().hex[:12]}", auth_secret=SECRET, read_timeout_s=30.0
    )
    ended = threading.Event()
    lines: list[str] = []

    with (
        running_projector(settings, log=tmp_path / "projector.log"),
        running_gateway(settings, log=tmp_path / "serve.log") as url,
    ):
        gw = Gateway(url, settings, TokenIssuer.from_settings(settings))
        alice = user()
        session = create(gw, alice)

        def read() -> None:
            with httpx.stream(
                "GET",
                f"{url}/v1/sessions/{session}/events",
                headers=gw.auth(alice),
                timeout=120,
            ) as response:
                for line in response.iter_lines():
                    lines.append(line)
            ended.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_until(lambda: "event: reset" in lines, timeout=30, what="the stream's reset")
        # Leaving the block sends SIGTERM, and running_gateway asserts the exit status 0
        # (a gateway waiting for the stream to end would be killed after 30 s instead).
        started = time.monotonic()
    took = time.monotonic() - started
    assert ended.wait(10), "the stream did not end when the gateway stopped"
    assert took < 10, f"the gateway took {took:.1f} s to stop"
