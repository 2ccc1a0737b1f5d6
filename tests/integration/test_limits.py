"""Limits (issue 15): request rates per user and per tenant at the gateway, and the cap on
sessions per user in the library, against real `chatlog serve` processes (uvicorn), a
real projector, Kafka and Redis.

The rates are slow on purpose (a token back every 2 s): a loaded test machine that
takes a second over a burst must not see it refilled. Each test uses a tenant and
users of its own, so the buckets of one test are not the next one's.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
import redis.asyncio
from confluent_kafka import TopicPartition

from chatlog.gateway.http_errors import http_error
from chatlog.gateway.redis_ratelimit import RedisRateLimiter
from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.projections.keys import KeySpace
from chatlog.schemas.errors import StoreUnavailable, TooManySessions
from chatlog.schemas.limits import Rate
from chatlog.schemas.sealing import KeyScope
from chatlog.settings import Settings
from tests.conftest import delete_prefix
from tests.processes import (
    free_port,
    full_chatlog,
    running_gateway,
    running_projector,
    unique_settings,
)

pytestmark = pytest.mark.integration

SECRET = "limits-tests-" + uuid.uuid4().hex
USER_RATE = Rate(count=30, unit="m", burst=5)  # 5 at once, then one every 2 s
TENANT_RATE = Rate(count=30, unit="m", burst=8)
MAX_SESSIONS = 2


@dataclass
class Gateways:
    urls: list[str]
    settings: Settings

    def auth(self, who: str, tenant: str) -> dict[str, str]:
        from chatlog.gateway.tokens import TokenIssuer

        token = TokenIssuer.from_settings(self.settings).mint(who, tenant=tenant)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def gateways(kafka, redis_url, tmp_path_factory) -> Iterator[Gateways]:
    """Two gateways on one Redis (the buckets are shared by every gateway process) and a
    projector."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    settings = unique_settings(
        kafka,
        redis_url,
        prefix,
        auth_secret=SECRET,
        read_timeout_s=30.0,
        rate_user=USER_RATE,
        rate_tenant=TENANT_RATE,
        max_sessions_per_user=MAX_SESSIONS,
    )
    logs = tmp_path_factory.mktemp("limits")
    try:
        with (
            running_projector(settings, log=logs / "projector.log"),
            running_gateway(settings, log=logs / "serve-1.log") as first,
            running_gateway(settings, log=logs / "serve-2.log") as second,
        ):
            yield Gateways([first, second], settings)
    finally:
        delete_prefix(redis_url, prefix)


def fresh(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


def listing(gw: Gateways, who: str, tenant: str, url: str | None = None) -> httpx.Response:
    return httpx.get(f"{url or gw.urls[0]}/v1/sessions", headers=gw.auth(who, tenant), timeout=30)


def until_refused(gw: Gateways, who: str, tenant: str) -> tuple[int, httpx.Response, float]:
    """Requests until one is refused: how many passed, the refusal, the seconds taken."""
    started = time.monotonic()
    for passed in range(100):
        answer = listing(gw, who, tenant)
        if answer.status_code != 200:
            return passed, answer, time.monotonic() - started
    raise AssertionError("100 requests passed a limit of 5 at once")


def most_admitted(rate: Rate, seconds: float) -> int:
    """The most requests a bucket lets through in `seconds` from full."""
    return rate.burst + math.floor(seconds * rate.per_s) + 1


def test_a_burst_over_the_limit_gets_429_then_passes_after_retry_after(gateways):
    tenant, alice = fresh("t"), fresh("alice")
    passed, refused, seconds = until_refused(gateways, alice, tenant)
    assert USER_RATE.burst <= passed <= most_admitted(USER_RATE, seconds)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "your requests are over the rate limit" in refused.json()["error"]["message"]
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= math.ceil(1 / USER_RATE.per_s)  # one token: 2 s at most
    # Refused requests take no token: after Retry-After the next one passes.
    time.sleep(retry_after)
    assert listing(gateways, alice, tenant).status_code == 200
    # The health routes take no token, and are never limited.
    for _ in range(20):
        assert httpx.get(f"{gateways.urls[0]}/healthz", timeout=30).status_code == 200


def test_users_of_a_tenant_have_their_own_buckets_and_share_the_tenants(gateways):
    tenant, alice, bob = fresh("t"), fresh("alice"), fresh("bob")
    # Alice empties her bucket (5), which takes 5 of the tenant's 8.
    passed, refused, _ = until_refused(gateways, alice, tenant)
    assert refused.status_code == 429
    assert "your requests" in refused.json()["error"]["message"]
    # Bob's own bucket is full, but the tenant's has only what alice left of it.
    bob_passed, bob_refused, seconds = until_refused(gateways, bob, tenant)
    assert bob_refused.status_code == 429
    assert "your tenant's requests" in bob_refused.json()["error"]["message"]
    assert passed + bob_passed <= most_admitted(TENANT_RATE, seconds + 1)
    assert bob_passed < USER_RATE.burst
    # Another tenant's user is not held back by either.
    carol_passed, _, _ = until_refused(gateways, fresh("carol"), fresh("t"))
    assert carol_passed >= USER_RATE.burst


def test_parallel_requests_through_two_gateways_never_pass_more_than_the_bucket(gateways):
    tenant, dana = fresh("t"), fresh("dana")
    auth = gateways.auth(dana, tenant)

    async def burst() -> tuple[list[int], float]:
        async with httpx.AsyncClient(timeout=60) as client:
            started = time.monotonic()
            answers = await asyncio.gather(
                *(
                    client.get(f"{gateways.urls[n % 2]}/v1/sessions", headers=auth)
                    for n in range(60)
                )
            )
            return [a.status_code for a in answers], time.monotonic() - started

    statuses, seconds = asyncio.run(burst())
    counted = Counter(statuses)
    assert set(counted) <= {200, 429}, counted
    assert USER_RATE.burst <= counted[200] <= most_admitted(USER_RATE, seconds), (counted, seconds)


def test_redis_holds_the_buckets_under_the_tenant_tag_and_lets_idle_ones_expire(gateways):
    tenant, erin = fresh("t"), fresh("erin")
    assert listing(gateways, erin, tenant).status_code == 200
    keys = KeySpace(gateways.settings.redis_prefix)
    client = redis.Redis.from_url(gateways.settings.redis_url)
    try:
        user_key, tenant_key = keys.user_rate(tenant, erin), keys.tenant_rate(tenant)
        assert f"{{t:{tenant}}}" in user_key
        assert f"{{t:{tenant}}}" in tenant_key
        state = client.hgetall(user_key)
        assert float(state[b"tokens"]) == pytest.approx(USER_RATE.burst - 1, abs=0.5)
        # Expires when it would be full again: one token back, 2 s (plus a millisecond).
        assert 0 < client.pttl(user_key) <= 2001
        assert 0 < client.pttl(tenant_key) <= 2001
    finally:
        client.close()


def test_the_limiter_fails_closed_when_redis_does_not_answer():
    # Nothing listens on the port: the request is refused (503), never let through.
    client = redis.asyncio.Redis(port=free_port(), socket_connect_timeout=1)
    limiter = RedisRateLimiter(client, user=USER_RATE, tenant=TENANT_RATE)

    async def take() -> None:
        try:
            await limiter.take("acme", "alice")
        finally:
            await client.aclose()

    with pytest.raises(StoreUnavailable) as refused:
        asyncio.run(take())
    assert http_error(refused.value).status == 503


def published(settings: Settings) -> int:
    """How many events the events topic holds."""
    consumer = groupless_consumer(settings.kafka_bootstrap, settings.kafka, purpose="test")
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(settings.topic, p), timeout=10)[1]
            for p in range(settings.partitions)
        )
    finally:
        consumer.close()


def test_the_session_cap_refuses_a_start_over_it_through_http(gateways):
    tenant, fay = fresh("t"), fresh("fay")
    auth = gateways.auth(fay, tenant)
    for _ in range(MAX_SESSIONS):
        created = httpx.post(f"{gateways.urls[0]}/v1/sessions", headers=auth, timeout=60)
        assert created.status_code == 201, created.text
    before = published(gateways.settings)
    refused = httpx.post(f"{gateways.urls[1]}/v1/sessions", headers=auth, timeout=60)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "too_many_sessions"
    assert "Retry-After" not in refused.headers  # waiting does not lift it
    assert published(gateways.settings) == before
    # Another user of the tenant is not held back.
    other = httpx.post(
        f"{gateways.urls[0]}/v1/sessions", headers=gateways.auth(fresh("gus"), tenant), timeout=60
    )
    assert other.status_code == 201


def test_deleting_a_session_gives_its_place_back(gateways):
    tenant, hal = fresh("t"), fresh("hal")
    auth = gateways.auth(hal, tenant)
    url = gateways.urls[0]
    sessions = [
        httpx.post(f"{url}/v1/sessions", headers=auth, timeout=60).json()["session_id"]
        for _ in range(MAX_SESSIONS)
    ]
    assert httpx.post(f"{url}/v1/sessions", headers=auth, timeout=60).status_code == 409
    deleted = httpx.delete(f"{url}/v1/sessions/{sessions[0]}", headers=auth, timeout=60)
    assert deleted.status_code in (200, 202), deleted.text
    again = httpx.post(f"{url}/v1/sessions", headers=auth, timeout=60)
    assert again.status_code == 201, again.text  # five requests: within the user's burst


def test_parallel_starts_through_http_respect_the_session_cap(gateways):
    tenant, hal = fresh("t"), fresh("hal")
    auth = gateways.auth(hal, tenant)

    async def starts() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            answers = await asyncio.gather(
                *(
                    client.post(f"{gateways.urls[n % 2]}/v1/sessions", headers=auth)
                    for n in range(5)
                )
            )
            return [a.status_code for a in answers]

    assert sorted(asyncio.run(starts())) == [201] * MAX_SESSIONS + [409] * (5 - MAX_SESSIONS)
    time.sleep(1 / USER_RATE.per_s)  # five requests took hal's burst: a token back
    listed = listing(gateways, hal, tenant).json()["sessions"]
    assert len(listed) == MAX_SESSIONS


# -- the session cap in the library --------------------------------------------------------


@pytest.fixture
def capped(kafka, redis_url, redis_prefix) -> Settings:
    return unique_settings(kafka, redis_url, redis_prefix, max_sessions_per_user=3)


def test_the_library_refuses_the_session_over_the_cap_and_publishes_nothing(capped):
    chat = full_chatlog(capped)
    try:
        for n in range(3):
            chat.start_session(f"s-{n}", user_id="ivy", title=f"chat {n}")
        before = published(capped)
        with pytest.raises(TooManySessions, match="ivy has 3 sessions") as refused:
            chat.start_session("s-3", user_id="ivy")
        assert refused.value.context["max_sessions"] == 3
        # An append into a new session starts it too: refused alike.
        with pytest.raises(TooManySessions):
            chat.append("s-4", user_id="ivy", role="user", content="hello")
        assert published(capped) == before
        # Her own sessions stay writable, and can be retitled; others are not held back.
        chat.append("s-0", user_id="ivy", role="user", content="still here")
        chat.start_session("s-1", user_id="ivy", title="retitled")
        chat.start_session("j-0", user_id="jay")
        assert published(capped) == before + 3
    finally:
        chat.close()


def test_concurrent_starts_of_one_user_never_pass_the_cap(capped):
    clients = [full_chatlog(capped) for _ in range(4)]
    start = threading.Barrier(len(clients) * 3)
    outcomes: list[str] = []

    def begin(client, n: int) -> None:
        start.wait()
        try:
            client.start_session(f"race-{n}", user_id="kai")
            outcomes.append("started")
        except TooManySessions:
            outcomes.append("refused")

    threads = [
        threading.Thread(target=begin, args=(clients[n % len(clients)], n))
        for n in range(len(clients) * 3)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert Counter(outcomes) == {"started": 3, "refused": 9}
        assert published(capped) == 3
    finally:
        for client in clients:
            client.close()


def test_release_and_expiry_give_places_back(kafka, redis_url, redis_prefix):
    settings = unique_settings(
        kafka, redis_url, redis_prefix, max_sessions_per_user=2, session_ttl_s=3
    )
    chat = full_chatlog(settings)
    try:
        chat.start_session("a", user_id="lee")
        chat.start_session("b", user_id="lee")
        with pytest.raises(TooManySessions):
            chat.start_session("c", user_id="lee")
        # A deleted session leaves the count (its claim stays: the id stays lee's).
        assert chat.claims is not None
        chat.claims.release(KeyScope("default", "lee"), "b")
        chat.start_session("c", user_id="lee")
        with pytest.raises(TooManySessions):
            chat.start_session("d", user_id="lee")
        # Idle past CHATLOG_SESSION_TTL_S, a session's claim and its place both expire.
        time.sleep(3.5)
        chat.start_session("d", user_id="lee")
        chat.start_session("e", user_id="lee")
    finally:
        chat.close()


def test_erasing_the_user_drops_their_count_with_their_claims(capped):
    chat = full_chatlog(capped)
    keys = KeySpace(capped.redis_prefix)
    counted = keys.claimed_sessions("default", "max")
    try:
        chat.start_session("m-1", user_id="max")
        chat.append("m-2", user_id="max", role="user", content="hello")
        chat.start_session("n-1", user_id="ned")
        assert chat.reader.client.zcard(counted) == 2
        chat.erase_user("max")
        assert chat.reader.client.exists(counted, keys.claim("m-1"), keys.claim("m-2")) == 0
        # Only max's: ned's claim and count stay.
        assert chat.reader.client.zcard(keys.claimed_sessions("default", "ned")) == 1
        assert chat.reader.client.exists(keys.claim("n-1")) == 1
    finally:
        chat.close()
