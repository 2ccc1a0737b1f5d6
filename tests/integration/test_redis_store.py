"""The view store contract against Redis, plus what only Redis has: keys, TTL, index."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import redis
from redis.crc import key_slot

from chatlog.projections.keys import LEGACY_LAYOUT, KeySpace
from chatlog.projections.redis_erasure import RedisUserSessions
from chatlog.projections.redis_generations import GenerationStore
from chatlog.projections.redis_keys import RedisKeyDirectory
from chatlog.projections.redis_reader import RedisReader
from chatlog.projections.redis_store import RedisViewStore
from chatlog.projections.store import Change, Outcome
from chatlog.projections.view import evolve
from chatlog.schemas.errors import DataLoss, ReadModelLost
from chatlog.schemas.key_records import ErasureRecord
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope
from tests.contracts import POLICY, ViewStoreContract, event, message

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def new_store(client, redis_prefix, **options) -> RedisViewStore:
    """A store of the live generation of a deployment created as the projector does."""
    live = GenerationStore(client, prefix=redis_prefix).initialise("g1")
    return RedisViewStore(client, keys=KeySpace(redis_prefix, live), policy=POLICY, **options)


class TestRedisViewStore(ViewStoreContract):
    @pytest.fixture
    def store(self, client, redis_prefix):
        yield new_store(client, redis_prefix)
        keys = list(client.scan_iter(f"{redis_prefix}:*"))
        if keys:
            client.unlink(*keys)

    def erase_owner(self, store, tenant, user):
        directory = RedisKeyDirectory(store.client, prefix=store.keys.prefix)
        directory.erase(ErasureRecord(KeyScope(tenant, user), datetime.now(UTC), ()))


class TestNotifyingRedisViewStore(TestRedisViewStore):
    """The live projector's store publishes a notice per written session: the contract
    holds all the same."""

    @pytest.fixture
    def store(self, client, redis_prefix):
        yield new_store(client, redis_prefix, notify=True)
        keys = list(client.scan_iter(f"{redis_prefix}:*"))
        if keys:
            client.unlink(*keys)


def test_a_write_notifies_its_sessions_channel_whatever_the_number_of_listeners(
    client, redis_prefix
):
    store = new_store(client, redis_prefix, notify=True)
    channel = store.keys.applied("s-n")
    assert key_slot(channel.encode()) == key_slot(store.keys.meta("s-n").encode())
    listeners = [client.pubsub() for _ in range(3)]  # a notice's reply counts them: 3
    try:
        for listener in listeners:
            listener.ssubscribe(channel)
            assert listener.get_sharded_message(timeout=5)["type"] == "ssubscribe"
        view = evolve(None, event("s-n", message("x")), Position(2, 7))
        # Three listeners must not read as the "generation lost" reply (3) of a script.
        assert store.apply([Change(None, view)]) == [Outcome.APPLIED]
        for listener in listeners:
            notice = listener.get_sharded_message(timeout=5)
            assert (notice["type"], notice["data"]) == ("smessage", b"s-n 2:7")
    finally:
        for listener in listeners:
            listener.close()


def test_session_keys_share_one_hash_tag(client, redis_prefix):
    store = new_store(client, redis_prefix)
    view = evolve(None, event("s-1", message("x")), Position(2, 7))
    assert store.apply([Change(None, view)]) == [Outcome.APPLIED]
    keys = sorted(k.decode() for k in client.scan_iter(f"{redis_prefix}:g1:[su]:*"))
    assert keys == [
        f"{redis_prefix}:g1:s:{{s-1}}:meta",
        f"{redis_prefix}:g1:s:{{s-1}}:msgs",
        f"{redis_prefix}:g1:u:{{u:default:u1}}:sessions",
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
    store = new_store(client, redis_prefix, ttl_s=2)
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
    assert client.zcard(store.keys.user_sessions("default", "u1")) == 0


def test_events_older_than_the_ttl_leave_nothing_behind(client, redis_prefix):
    store = new_store(client, redis_prefix, ttl_s=60)
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

    from chatlog.projections.redis_loading import aload_session, load_session

    store = new_store(client, redis_prefix)
    keys = store.keys
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


def test_a_generation_without_its_epoch_is_never_written_nor_served(client, redis_prefix):
    store = new_store(client, redis_prefix)
    reader = RedisReader(client, prefix=redis_prefix)
    view = evolve(None, event("s-lost", message("x")), Position(0, 1), POLICY)
    assert store.apply([Change(None, view)]) == [Outcome.APPLIED]
    store.mark_progress({0: 1})
    assert [m.content for m in reader.context("s-lost", user_id="u1").messages] == ["x"]

    client.delete(store.keys.epoch)  # as FLUSHDB would, but leaving the view in place
    later = evolve(view, event("s-lost", message("y")), Position(0, 2), POLICY)
    again = evolve(None, event("s-new", message("z")), Position(0, 3), POLICY)
    with pytest.raises(DataLoss):
        store.apply([Change(view, later), Change(None, again)])
    with pytest.raises(DataLoss):
        store.mark_progress({0: 3})
    fresh = RedisViewStore(client, keys=store.keys, policy=POLICY)  # a restarted projector
    with pytest.raises(DataLoss):
        fresh.apply([Change(None, again)])
    assert client.exists(store.keys.meta("s-new"), store.keys.user_sessions("default", "u1")) == 1
    assert client.hget(store.keys.progress, "0") == b"1"

    with pytest.raises(ReadModelLost, match="chatlog replay"):
        reader.context("s-lost", user_id="u1")
    with pytest.raises(ReadModelLost):
        reader.sessions("u1")
    client.delete(store.keys.pointer)  # FLUSHALL: not even the pointer
    with pytest.raises(ReadModelLost, match="no pointer"):
        RedisReader(client, prefix=redis_prefix).context("s-new", user_id="u1")


def test_progress_marks_going_back_under_a_store_stop_its_writes(client, redis_prefix):
    store = new_store(client, redis_prefix)
    view = evolve(None, event("s-old", message("x")), Position(0, 5), POLICY)
    store.apply([Change(None, view)])
    store.mark_progress({0: 5})
    client.hset(store.keys.progress, "0", 2)  # an older snapshot restored under it
    later = evolve(view, event("s-old", message("y")), Position(0, 6), POLICY)
    with pytest.raises(DataLoss):
        store.apply([Change(view, later)])
    assert client.hget(store.keys.meta("s-old"), "last_offset") == b"5"


def test_a_users_sessions_leave_every_generation_and_no_other_tenants_do(client, redis_prefix):
    live = new_store(client, redis_prefix)
    GenerationStore(client, prefix=redis_prefix).create("verify-1")
    scratch = RedisViewStore(client, keys=KeySpace(redis_prefix, "verify-1"), policy=POLICY)
    # A generation built with the first key layout: one index per user id, every tenant's.
    GenerationStore(client, prefix=redis_prefix).create("g0", layout=LEGACY_LAYOUT)
    old = RedisViewStore(client, keys=KeySpace(redis_prefix, "g0"), policy=POLICY)

    def write(store, session, user, tenant="default", offset=0):
        view = evolve(None, event(session, message(session), user=user), Position(0, offset))
        view = replace(view, tenant=tenant)
        assert store.apply([Change(None, view)]) == [Outcome.APPLIED]

    write(live, "x1", "xavier")
    write(scratch, "x1", "xavier")  # a verify's scratch generation holds it too
    write(live, "x2", "xavier")
    write(live, "x-acme", "xavier", tenant="acme")  # the same user id in another tenant
    write(live, "y1", "yvonne")
    write(old, "x0", "xavier")
    write(old, "x0-acme", "xavier", tenant="acme")
    shared = old.keys.user_sessions("default", "xavier", layout=LEGACY_LAYOUT)
    assert {s.decode() for s in client.zrange(shared, 0, -1)} == {"x0", "x0-acme"}
    index = live.keys.user_sessions("default", "xavier")
    client.zadd(index, {"x-expired": 1})  # its session expired, the entry did not yet
    sessions = RedisUserSessions(client, prefix=redis_prefix)
    scope = KeyScope("default", "xavier")
    assert sessions.find(scope) == {"x0", "x1", "x2"}

    assert sessions.remove(scope) == {"x0", "x1", "x2"}
    loaded = live.load(["x1", "x2", "x-acme", "y1"])
    assert (loaded["x1"], loaded["x2"]) == (None, None)
    assert loaded["x-acme"] is not None
    assert loaded["y1"] is not None
    assert scratch.load(["x1"]) == {"x1": None}
    assert client.zrange(index, 0, -1) == []  # x-acme is in acme's index
    acme = live.keys.user_sessions("acme", "xavier")
    assert [s.decode() for s in client.zrange(acme, 0, -1)] == ["x-acme"]
    assert [s.decode() for s in client.zrange(shared, 0, -1)] == ["x0-acme"]
    assert old.load(["x0"]) == {"x0": None}
    assert sessions.find(scope) == set()


def test_the_mark_rides_with_the_writes_only_when_every_written_session_stands_at_its_offset(
    client, redis_prefix
):
    store = new_store(client, redis_prefix, notify=True)
    a = evolve(None, event("s-ma", message("x")), Position(0, 4), POLICY)
    b = evolve(None, event("s-mb", message("y")), Position(1, 2), POLICY)
    assert store.apply_marking([Change(None, a), Change(None, b)], {0: 4, 1: 2}) == (
        [Outcome.APPLIED, Outcome.APPLIED],
        True,
    )
    assert store.progress() == {0: 4, 1: 2}
    # A mark as Redis stores it, text (a Lua number could be written as 5e+07).
    far = evolve(None, event("s-mf", message("f")), Position(2, 50_000_000), POLICY)
    assert store.apply_marking([Change(None, far)], {2: 50_000_000})[1]
    assert client.hget(store.keys.progress, "2") == b"50000000"
    client.hdel(store.keys.progress, "2")
    # A conflict (s-mb changed under the store: its expected view is stale): s-ma is
    # written, the mark is not, for the caller to set once s-mb is written.
    a2 = evolve(a, event("s-ma", message("x2")), Position(0, 6), POLICY)
    stale = evolve(None, event("s-mb", message("y2")), Position(1, 5), POLICY)
    assert store.apply_marking([Change(a, a2), Change(None, stale)], {0: 6, 1: 5}) == (
        [Outcome.APPLIED, Outcome.CONFLICT],
        False,
    )
    assert store.progress() == {0: 4, 1: 2}
    # A duplicate (the stored view already has these events) lets the mark move.
    assert store.apply_marking([Change(None, a2)], {0: 6}) == ([Outcome.DUPLICATE], True)
    assert store.progress() == {0: 6, 1: 2}
    # An erased owner's session is gone, not at its offset: the caller marks.
    RedisKeyDirectory(client, prefix=redis_prefix).erase(
        ErasureRecord(KeyScope("default", "u1"), datetime.now(UTC), ())
    )
    a3 = evolve(a2, event("s-ma", message("x3")), Position(0, 7), POLICY)
    assert store.apply_marking([Change(a2, a3)], {0: 7}) == ([Outcome.ERASED], False)
    assert store.progress() == {0: 6, 1: 2}
    client.delete(store.keys.epoch)
    with pytest.raises(DataLoss):
        store.apply_marking([Change(None, b)], {1: 9})
