"""The view store contract against Redis, plus what only Redis has: keys, TTL, index."""

from __future__ import annotations

import time

import pytest
import redis
from redis.crc import key_slot

from chatlog.projections.keys import KeySpace
from chatlog.projections.redis_reader import RedisReader
from chatlog.projections.redis_store import RedisViewStore
from chatlog.projections.store import Change, Outcome
from chatlog.projections.view import evolve
from chatlog.schemas.position import Position
from tests.contracts import POLICY, ViewStoreContract, event, message

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class TestRedisViewStore(ViewStoreContract):
    @pytest.fixture
    def store(self, client, redis_prefix):
        yield RedisViewStore(client, keys=KeySpace(redis_prefix), policy=POLICY)
        keys = list(client.scan_iter(f"{redis_prefix}:*"))
        if keys:
            client.unlink(*keys)


def test_session_keys_share_one_hash_tag(client, redis_prefix):
    store = RedisViewStore(client, keys=KeySpace(redis_prefix), policy=POLICY)
    view = evolve(None, event("s-1", message("x")), Position(2, 7))
    assert store.apply([Change(None, view)]) == [Outcome.APPLIED]
    keys = sorted(k.decode() for k in client.scan_iter(f"{redis_prefix}:*"))
    assert keys == [
        f"{redis_prefix}:g1:s:{{s-1}}:meta",
        f"{redis_prefix}:g1:s:{{s-1}}:msgs",
        f"{redis_prefix}:g1:u:{{u:u1}}:sessions",
    ]
    # Same slot on a Redis Cluster, so one Lua call may touch both.
    assert key_slot(keys[0].encode()) == key_slot(keys[1].encode())
    meta = {k.decode(): v.decode() for k, v in client.hgetall(keys[0]).items()}
    assert meta["last_offset"] == "7"
    assert meta["partition"] == "2"
    assert meta["window"] == str(POLICY.window)


def test_ttl_counts_from_the_last_event_and_expiry_removes_session_and_index_entry(
    client, redis_prefix
):
    store = RedisViewStore(client, keys=KeySpace(redis_prefix), policy=POLICY, ttl_s=2)
    reader = RedisReader(client, prefix=redis_prefix, ttl_s=2)
    now = time.time()
    view = evolve(None, event("s-ttl", message("x")), Position(0, 0))
    view = view.__class__(**{**_fields(view), "updated_at_ms": int(now * 1000)})
    store.apply([Change(None, view)])
    meta_key = store.keys.meta("s-ttl")
    assert 0 < client.pttl(meta_key) <= 2000
    assert client.pttl(store.keys.messages("s-ttl")) > 0
    assert [e.session_id for e in reader.sessions("u1")] == ["s-ttl"]
    time.sleep(2.3)
    assert client.exists(meta_key) == 0
    assert reader.sessions("u1") == []
    assert client.zcard(store.keys.user_sessions("u1")) == 0


def test_events_older_than_the_ttl_leave_nothing_behind(client, redis_prefix):
    store = RedisViewStore(client, keys=KeySpace(redis_prefix), policy=POLICY, ttl_s=60)
    old = evolve(None, event("s-old", message("x")), Position(0, 0))
    stale = old.__class__(**{**_fields(old), "updated_at_ms": int((time.time() - 3600) * 1000)})
    assert store.apply([Change(None, stale)]) == [Outcome.APPLIED]
    assert client.exists(store.keys.meta("s-old"), store.keys.messages("s-old")) == 0


def _fields(view):
    return {name: getattr(view, name) for name in view.__slots__}


def test_an_unreachable_redis_is_a_chatlog_error_naming_the_fix():
    import asyncio
    import socket

    import redis.asyncio
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from chatlog.projections.redis_reader import AsyncRedisReader
    from chatlog.schemas.errors import StoreUnavailable

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # No retries: the client's default backoff would only make the test slow.
    dead = redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    reader = RedisReader(dead, prefix="x")
    with pytest.raises(StoreUnavailable, match="check CHATLOG_REDIS_URL"):
        reader.context("s", user_id="u")
    with pytest.raises(ConnectionError):
        reader.sessions("u")

    async def read_async():
        client = redis.asyncio.Redis(
            port=port, socket_connect_timeout=1, retry=AsyncRetry(NoBackoff(), 0)
        )
        try:
            await AsyncRedisReader(client, prefix="x").context("s", user_id="u")
        finally:
            await client.aclose()

    with pytest.raises(StoreUnavailable):
        asyncio.run(read_async())


def test_one_load_reads_a_sessions_view_sync_and_async_alike(client, redis_url, redis_prefix):
    import asyncio

    import redis.asyncio

    from chatlog.projections.redis_reader import aload_session, load_session

    keys = KeySpace(redis_prefix)
    store = RedisViewStore(client, keys=keys, policy=POLICY)
    view = evolve(None, event("s-load", message("x")), Position(1, 4), POLICY)
    view = evolve(view, event("s-load", message("y")), Position(1, 5), POLICY)
    assert store.apply([Change(None, view)]) == [Outcome.APPLIED]

    async def load_async(**options):
        async_client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return await aload_session(async_client, keys, "s-load", **options)
        finally:
            await async_client.aclose()

    assert load_session(client, keys, "s-load") == (view, POLICY.window)
    assert asyncio.run(load_async()) == (view, POLICY.window)
    # Meta only: the same session, its message list left unread.
    meta_only = (view.__class__(**{**_fields(view), "messages": ()}), POLICY.window)
    assert load_session(client, keys, "s-load", messages=False) == meta_only
    assert asyncio.run(load_async(messages=False)) == meta_only
    assert load_session(client, keys, "s-none") == (None, 0)
