"""The gateway on stacks of their own, with a real `chatlog serve`, projector, Kafka and
Redis: ``/readyz`` says 503 while the projector is further behind than the bound; a
gateway with an open live stream still stops at once, and cleanly, on SIGTERM; and with
the projector's notices off, streams still get every update."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import httpx
import pytest
import redis

from chatlog.gateway.fastapi_live import RECHECK_S
from chatlog.gateway.tokens import TokenIssuer
from chatlog.projections.keys import KeySpace
from tests.gateways import Gateway, gateway_stack
from tests.gateways import new_user as user
from tests.integration.test_gateway import create, post
from tests.integration.test_gateway_live import (
    ARRIVES_WITHIN_S,
    append,
    client_of,
    events_of,
    next_event,
    stream,
)
from tests.processes import (
    running_gateway,
    running_projector,
    start_projector,
    stop,
    unique_settings,
    wait_until,
)

pytestmark = pytest.mark.integration

SECRET = "ready-tests-" + uuid.uuid4().hex  # 44 characters, fresh each run

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


def test_without_notices_a_stream_still_gets_every_update_from_its_rechecks(
    kafka, redis_url, tmp_path
):
    with gateway_stack(kafka, redis_url, tmp_path, applied_notices=False) as gw:
        alice = user()
        session = create(gw, alice)
        client = redis.Redis.from_url(redis_url)
        listener = client.pubsub()
        listener.ssubscribe(KeySpace(gw.settings.redis_prefix).applied(session))
        assert listener.get_sharded_message(timeout=10)["type"] == "ssubscribe"

        async def scenario() -> None:
            async with client_of(gw) as http, stream(http, gw, alice, session) as response:
                events = events_of(response)
                assert (await next_event(events)).event == "reset"
                for n in range(3):
                    posted = await append(http, gw, alice, session, f"unnotified {n}")
                    event = await next_event(events, timeout=RECHECK_S + ARRIVES_WITHIN_S)
                    assert (event.event, event.id) == ("message", posted["position"])

        try:
            asyncio.run(scenario())
            # Found by the rechecks: the projector published no notice at all.
            assert listener.get_sharded_message(timeout=1) is None
        finally:
            listener.close()
            client.close()
