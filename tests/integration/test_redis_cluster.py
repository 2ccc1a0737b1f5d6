"""chatlog on a real three-master Redis Cluster (`CHATLOG_REDIS_CLUSTER=true`).

One projector process runs for the module on the cluster; the library's paths run
against it: appends and reads (sync and asyncio), session lists, the live notices,
the session cap, a replay that flips the generation, an erasure, the rate limiter. Then
one master loses its data, and only the sessions of its slots are refused as lost.
Every assertion that depends on where a key lives asks the cluster itself (CLUSTER
KEYSLOT, the node that holds the key), not chatlog's own slot arithmetic.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster

from chatlog import wiring
from chatlog.client import AsyncChatLog, ChatLog
from chatlog.gateway.redis_ratelimit import RedisRateLimiter
from chatlog.processors.replay import rebuild, verify
from chatlog.projections.checkpoints import CheckpointKind, CheckpointRecord
from chatlog.projections.keys import KeySpace
from chatlog.projections.redis_applied import RedisAppliedFeed
from chatlog.projections.redis_cluster import is_cluster, stamp
from chatlog.projections.redis_generations import GenerationStore
from chatlog.projections.redis_keys import RedisKeyDirectory
from chatlog.projections.redis_store import RedisViewStore
from chatlog.schemas.errors import Erased, ReadModelLost, TooManySessions
from chatlog.schemas.key_records import ErasureRecord, KeyRecord
from chatlog.schemas.limits import parse_rate
from chatlog.schemas.master_keys import WrappedKey
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope
from chatlog.settings import Settings
from dev import services
from dev.services import redis_cluster_local, state
from tests.contracts import POLICY, ViewStoreContract
from tests.processes import full_chatlog, running_projector, unique_settings, wait_until

pytestmark = pytest.mark.integration

USERS = ("ada", "bo", "cy")
SESSIONS_PER_USER = 8


@pytest.fixture(scope="module")
def cluster(redis_cluster_url: str) -> Iterator[redis.cluster.RedisCluster]:
    client = redis.cluster.RedisCluster.from_url(redis_cluster_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def prefix(cluster: redis.cluster.RedisCluster) -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    keys = list(cluster.scan_iter(match=f"{name}:*", count=1000))
    for start in range(0, len(keys), 500):
        cluster.delete(*keys[start : start + 500])


@pytest.fixture(scope="module")
def settings(kafka, redis_cluster_url: str, prefix: str) -> Settings:
    return unique_settings(
        kafka,
        redis_cluster_url,
        prefix,
        redis_cluster=True,
        window=3,
        pii_mode="off",
        max_sessions_per_user=SESSIONS_PER_USER + 2,
    )


@pytest.fixture(scope="module")
def projector(settings: Settings, tmp_path_factory) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path_factory.mktemp("cluster") / "projector.log"
    with running_projector(settings, log=log) as process:
        process.log = log  # type: ignore[attr-defined]
        yield process


@pytest.fixture(scope="module")
def chat(settings: Settings, projector: Any) -> Iterator[ChatLog]:
    log = full_chatlog(settings)
    yield log
    log.close()


@pytest.fixture(scope="module")
def written(chat: ChatLog) -> dict[str, tuple[str, Position]]:
    """Every user's sessions, each with four messages: session -> (owner, last position)."""
    sessions: dict[str, tuple[str, Position]] = {}
    for user in USERS:
        for n in range(SESSIONS_PER_USER):
            session = f"{user}-{n}"
            chat.start_session(session, user_id=user, title=f"chat {n}")
            for turn in range(4):
                role = "user" if turn % 2 == 0 else "assistant"
                position = chat.append(
                    session, user_id=user, role=role, content=f"{session}/{turn}"
                )
            sessions[session] = (user, position)
    for session, (user, position) in sessions.items():
        chat.context(session, user_id=user, after=position)
    return sessions


def node_of(cluster: redis.cluster.RedisCluster, key: str) -> str:
    return str(cluster.get_node_from_key(key).name)


def server_slot(cluster: redis.cluster.RedisCluster, key: str) -> int:
    return int(cluster.execute_command("CLUSTER KEYSLOT", key))


def test_the_wiring_builds_cluster_clients_and_the_settings_refuse_a_database(settings):
    assert is_cluster(wiring.redis_client(settings))
    assert is_cluster(wiring.async_redis_client(settings))
    with pytest.raises(ValueError, match="database 0 only"):
        Settings(redis_url="redis://127.0.0.1:7000/3", redis_cluster=True)


def test_a_sessions_keys_share_one_slot_and_sessions_spread_over_every_master(
    cluster, settings, written
):
    keys = KeySpace(settings.redis_prefix, "g1")
    nodes = set()
    for session in written:
        meta = keys.meta(session)
        named = [meta, keys.messages(session), keys.claim(session), keys.applied(session)]
        named.append(stamp(keys, meta))  # the epoch stamp its writes and reads check
        assert {server_slot(cluster, key) for key in named} == {server_slot(cluster, meta)}
        assert cluster.exists(meta)
        assert cluster.exists(stamp(keys, meta))
        nodes.add(node_of(cluster, meta))
    assert len(nodes) == 3 == len(cluster.get_primaries())
    # Every slot has its stamp, on the master that holds the slot.
    assert sum(1 for _ in cluster.scan_iter(match=f"{keys.epoch}:*", count=5000)) == 16384


def test_reads_sync_and_asyncio_see_every_session_and_list_them(settings, chat, written):
    for session, (user, position) in written.items():
        context = chat.context(session, user_id=user, after=position)
        assert [m.content for m in context.messages] == [f"{session}/{t}" for t in range(4)]
    listed = {entry.session_id for entry in chat.sessions("bo")}
    assert listed == {s for s, (user, _) in written.items() if user == "bo"}

    async def read_async() -> tuple[list[str], set[str]]:
        log = AsyncChatLog.from_settings(settings)
        try:
            context = await log.context("cy-3", user_id="cy", after=written["cy-3"][1])
            entries = await log.sessions("cy")
        finally:
            await log.aclose()
        return [m.content for m in context.messages], {e.session_id for e in entries}

    contents, listed = asyncio.run(read_async())
    assert contents == [f"cy-3/{t}" for t in range(4)]
    assert listed == {f"cy-{n}" for n in range(SESSIONS_PER_USER)}


def test_live_notices_reach_a_listener_on_every_shard(cluster, settings, chat, written):
    keys = KeySpace(settings.redis_prefix)
    one_per_node: dict[str, str] = {}
    for session in written:
        one_per_node.setdefault(node_of(cluster, keys.applied(session)), session)
    assert len(one_per_node) == 3

    async def listen() -> dict[str, Position | None]:
        client = wiring.async_redis_client(settings)
        feed = RedisAppliedFeed(client)
        heard: dict[str, Position | None] = {}
        try:
            async with contextlib_watches(feed, keys, one_per_node.values()) as watches:
                for session, watch in watches.items():
                    user = written[session][0]
                    sent = await asyncio.to_thread(
                        chat.append, session, user_id=user, role="user", content="ping"
                    )
                    deadline = asyncio.get_running_loop().time() + 20
                    while watch.notified is None or watch.notified < sent:
                        left = deadline - asyncio.get_running_loop().time()
                        if left <= 0 or not await watch.wait(left):
                            break
                    heard[session] = watch.notified
                    assert watch.notified is not None, session
                    assert watch.notified >= sent, session
        finally:
            await feed.aclose()
            await client.aclose()
        return heard

    assert len(asyncio.run(listen())) == 3


class contextlib_watches:  # noqa: N801 - used as a context manager, like contextlib's
    """Watches on several sessions' channels at once."""

    def __init__(self, feed: RedisAppliedFeed, keys: KeySpace, sessions: Any) -> None:
        self.feed, self.keys, self.sessions = feed, keys, list(sessions)
        self._blocks: list[Any] = []

    async def __aenter__(self) -> dict[str, Any]:
        watches = {}
        for session in self.sessions:
            block = self.feed.watch(self.keys.applied(session))
            self._blocks.append(block)
            watches[session] = await block.__aenter__()
        return watches

    async def __aexit__(self, *exc: object) -> None:
        for block in reversed(self._blocks):
            await block.__aexit__(None, None, None)


def test_the_session_cap_is_kept_in_the_users_slot(settings, projector):
    capped = settings.model_copy(update={"max_sessions_per_user": 2})
    log = full_chatlog(capped)
    try:
        log.start_session("dee-1", user_id="dee")
        log.start_session("dee-2", user_id="dee")
        log.start_session("dee-2", user_id="dee")  # one's own session again: not capped
        with pytest.raises(TooManySessions):
            log.start_session("dee-3", user_id="dee")
    finally:
        log.close()


def test_the_rate_limiter_takes_both_tokens_in_the_tenants_slot(settings):
    async def takes() -> list[bool]:
        client = wiring.async_redis_client(settings)
        limiter = RedisRateLimiter(
            client,
            prefix=settings.redis_prefix,
            user=parse_rate("1/h burst=3"),
            tenant=parse_rate("100/h burst=100"),
        )
        try:
            return [(await limiter.take("acme", "eve")).allowed for _ in range(4)]
        finally:
            await client.aclose()

    assert asyncio.run(takes()) == [True, True, True, False]


def test_the_key_directory_reads_many_users_at_once_and_shreds_one(cluster, settings):
    directory = RedisKeyDirectory(wiring.redis_client(settings), prefix=settings.redis_prefix)
    scopes = [KeyScope("acme", f"kd-{n}") for n in range(12)]
    for scope in scopes:
        wrapped = WrappedKey("k1", scope.user_id.encode())
        assert directory.put(KeyRecord(scope, "key-1", wrapped, datetime.now(UTC)))
    assert len({node_of(cluster, directory.key_of(s)) for s in scopes}) == 3
    entries = directory.entries_many(scopes)
    assert [entries[s].keys["key-1"].blob for s in scopes] == [s.user_id.encode() for s in scopes]
    assert directory.erase(ErasureRecord(scopes[0], datetime.now(UTC), ())) == ("key-1",)
    shredded = KeyRecord(scopes[0], "key-2", WrappedKey("k1", b"x"), datetime.now(UTC))
    assert not directory.put(shredded)  # an erased user gets no key again
    assert directory.entries(scopes[0]).erased_at is not None
    assert directory.entries(scopes[0]).keys == {}


def test_a_processor_waits_for_the_projection_and_loads_the_view(settings, chat, written):
    session, (user, position) = next((s, v) for s, v in written.items() if v[0] == "cy")

    async def load() -> Any:
        reader = wiring.async_reader(settings)
        try:
            return await reader.projected_view(session, position, timeout=30)
        finally:
            await reader.client.aclose()

    view = asyncio.run(load())
    assert view is not None
    assert (view.user_id, view.last_offset >= position.offset) == (user, True)


def test_a_replay_rebuilds_into_a_new_generation_and_flips_the_pointer(
    cluster, settings, chat, written
):
    generations = wiring.generations(settings)
    assert generations.live() == "g1"
    report = rebuild(wiring.replay_parts(settings), handover_s=0.5)
    assert generations.live() == report.generation == "g2"
    assert verify(wiring.replay_parts(settings)).differences == []
    # The old generation is gone from every master, its stamps included.
    assert not list(cluster.scan_iter(match=f"{settings.redis_prefix}:g1:*", count=5000))
    session, (user, position) = next(iter(written.items()))
    assert f"{session}/3" in [m.content for m in chat.context(session, user_id=user).messages]
    # The projector follows the flip: a new append lands in g2 and is read back.
    after = chat.append(session, user_id=user, role="user", content="after the flip")
    assert chat.context(session, user_id=user, after=after).messages[-1].content == "after the flip"
    assert after > position


def test_an_erasure_removes_a_users_sessions_from_every_master(cluster, settings, chat, written):
    ada = sorted(s for s, (user, _) in written.items() if user == "ada")
    keys = KeySpace(settings.redis_prefix)
    assert len({node_of(cluster, keys.claim(s)) for s in ada}) > 1  # spread over masters
    chat.erase_user("ada")
    for session in ada:
        with pytest.raises(Erased):
            chat.context(session, user_id="ada")
    left = [
        key
        for key in cluster.scan_iter(match=f"{settings.redis_prefix}:*", count=5000)
        if any(f"{{{s}}}" in key for s in ada)
    ]
    assert left == []
    bo_session, (_, position) = next((s, v) for s, v in written.items() if v[0] == "bo")
    assert chat.context(bo_session, user_id="bo", after=position).messages


def test_a_master_that_lost_its_data_refuses_its_slots_and_only_those(
    cluster, settings, chat, projector
):
    live = wiring.generations(settings).live()
    assert live is not None
    keys = KeySpace(settings.redis_prefix, live)
    by_node: dict[str, list[str]] = {}
    for session in (f"{u}-{n}" for u in ("bo", "cy") for n in range(SESSIONS_PER_USER)):
        by_node.setdefault(node_of(cluster, keys.meta(session)), []).append(session)
    lost_node, *other_nodes = sorted(by_node, key=lambda name: -len(by_node[name]))
    # The live generation's keys on that master go, as in a restart with no persistence
    # (the key directory there too would be projected again from the keys topic; other
    # tests' keys on it are left alone).
    node = cluster.get_node(node_name=lost_node)
    doomed = list(cluster.scan_iter(match=f"{keys.prefix}:{live}:*", count=5000, target_nodes=node))
    for start in range(0, len(doomed), 500):
        cluster.delete(*doomed[start : start + 500])
    for session in by_node[lost_node]:
        user = session.split("-")[0]
        with pytest.raises(ReadModelLost):
            chat.context(session, user_id=user)
    for name in other_nodes:
        for session in by_node[name]:
            assert chat.context(session, user_id=session.split("-")[0]).messages
    # The projector's next write into a lost slot is refused: it stops (CHATLOG_ON_DATA_LOSS
    # is "stop"), rather than rebuild part of a session into the lost generation.
    session = by_node[lost_node][0]
    chat.append(session, user_id=session.split("-")[0], role="user", content="into the void")
    wait_until(lambda: projector.poll() is not None, timeout=60, what="the projector to stop")
    assert projector.returncode != 0
    assert "Redis has lost" in projector.log.read_text()  # its epoch, or a slot's stamp
    assert not cluster.exists(keys.meta(session))  # nothing partial was written there
    # It marked the whole generation lost, every slot's stamp: no slot serves it now.
    survivor = by_node[other_nodes[0]][0]
    with pytest.raises(ReadModelLost):
        chat.context(survivor, user_id=survivor.split("-")[0])


@pytest.fixture(scope="module")
def contract_generation(redis_cluster_url: str) -> Iterator[tuple[Any, KeySpace]]:
    """One generation for the contract's tests: stamping 16384 slots takes a second."""
    client = redis.cluster.RedisCluster.from_url(redis_cluster_url)
    name = f"t{uuid.uuid4().hex[:12]}"
    live = GenerationStore(client, prefix=name).initialise("g1")
    yield client, KeySpace(name, live)
    _delete(client, list(client.scan_iter(match=f"{name}:*", count=5000)))
    client.close()


class TestClusterViewStore(ViewStoreContract):
    """The view store contract (as `tests.integration.test_redis_store` runs it on one
    node), on the cluster: the same outcomes, each session's write one slot."""

    @pytest.fixture
    def store(self, contract_generation: tuple[Any, KeySpace]) -> Iterator[RedisViewStore]:
        client, keys = contract_generation
        yield RedisViewStore(client, keys=keys, policy=POLICY, notify=True)
        # What the test wrote goes; the pointer, the epoch and its stamps stay.
        written = [
            key
            for key in client.scan_iter(match=f"{keys.prefix}:*", count=5000)
            if not key.startswith((keys.epoch.encode(), keys.pointer.encode()))
        ]
        _delete(client, written)

    def erase_owner(self, store: Any, tenant: str, user: str) -> None:
        directory = RedisKeyDirectory(store.client, prefix=store.keys.prefix)
        directory.erase(ErasureRecord(KeyScope(tenant, user), datetime.now(UTC), ()))


def test_threads_checkpoints_are_kept_on_a_fresh_pipeline_of_the_cluster(contract_generation):
    # A cluster pipeline sends a script by its hash alone: a store's first checkpoint
    # must still land (the script is loaded on the node that lacked it).
    client, keys = contract_generation
    store = RedisViewStore(client, keys=keys, policy=POLICY, notify=True)
    client.script_flush()  # on every master: no script is loaded anywhere
    thread = f"s-{uuid.uuid4().hex[:12]}"
    saved = CheckpointRecord(CheckpointKind.SAVED, thread, Position(0, 7), "", "c-1", b"state")
    store.apply_checkpoints([saved])
    assert client.hget(keys.checkpoints(thread), "l\x00") == b"c-1"


def test_the_local_cluster_is_reused_while_it_runs_and_down_stops_it(tmp_path):
    try:
        url = services.cluster_up(state_dir=tmp_path)
        recorded = redis_cluster_local.read_cluster(base_dir=tmp_path)
        assert recorded is not None
        assert services.cluster_up(state_dir=tmp_path) == url
        assert services.cluster_status(state_dir=tmp_path) == url
        client = redis.cluster.RedisCluster.from_url(url)
        try:
            assert len(client.get_primaries()) == 3
            assert client.set("{x}:probe", "1")
        finally:
            client.close()
    finally:
        services.down(state_dir=tmp_path)  # no stack recorded there: the cluster alone
    assert services.cluster_status(state_dir=tmp_path) is None
    assert not any(state.is_running(node.pid, marker=node.data_dir) for node in recorded.nodes)


def _delete(client: Any, keys: list[Any]) -> None:
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
