"""Tenants kept apart by the library itself, and the replay that migrates the key layout.

Real Kafka, real Redis, the projector as a process. The same user id in two tenants is
two users: two histories, two session lists, no read across in either direction, and a
read of the other's session answers exactly as a session that does not exist. A
read-model built with the first key layout (one session index per user id, shared by
every tenant) keeps serving contexts, refuses session lists naming `chatlog replay`, and
is whole and tenant-scoped once the replay has run.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from chatlog import wiring
from chatlog.client import AsyncChatLog, ChatLog
from chatlog.projections.keys import LAYOUT, LEGACY_LAYOUT
from chatlog.schemas.errors import LayoutMismatch, OwnershipError, SessionNotFound
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope
from chatlog.settings import Settings
from tests.processes import chatlog_cli, running_projector, unique_settings, wait_until

pytestmark = pytest.mark.integration

ALICE = "alice"  # one user id, in both tenants
TENANTS = ("acme", "globex")


@pytest.fixture
def settings(kafka, redis_url, redis_prefix) -> Settings:
    return unique_settings(kafka, redis_url, redis_prefix, partitions=3, read_timeout_s=30.0)


def sid(tenant: str) -> str:
    return f"{tenant}-{uuid.uuid4().hex[:10]}"


def refused(call: Callable[[], Any]) -> SessionNotFound:
    with pytest.raises(SessionNotFound) as caught:
        call()
    return caught.value


def same_answer(theirs: SessionNotFound, missing: SessionNotFound, session: str) -> None:
    """The two refusals are one answer: same type, same message but for the session id
    asked about, same context but for it; nothing names the owner."""
    assert type(theirs) is type(missing) is SessionNotFound
    assert str(theirs).replace(session, "<id>") == str(missing).replace("s-missing", "<id>")
    assert theirs.context == {"session_id": session}
    assert missing.context == {"session_id": "s-missing"}
    assert "belongs" not in str(theirs)


def read(log: ChatLog, session: str, reader: KeyScope, **options: Any) -> Any:
    return log.context(session, user_id=reader.user_id, tenant=reader.tenant, **options)


def write_chats(log: ChatLog, sessions: dict[str, str]) -> dict[str, Position]:
    """One titled session per tenant for alice, with a message naming its tenant."""
    last = {}
    for tenant, session in sessions.items():
        log.start_session(session, user_id=ALICE, title=f"{tenant} order", tenant=tenant)
        last[tenant] = log.append(
            session, user_id=ALICE, role="user", content=f"secret of {tenant}", tenant=tenant
        )
    return last


def test_the_same_user_id_in_two_tenants_is_two_users_in_every_read(settings, kafka):
    sessions = {tenant: sid(tenant) for tenant in TENANTS}
    log = ChatLog.from_settings(settings, flush_on_sigterm=False)
    try:
        with running_projector(settings):
            last = write_chats(log, sessions)
            for tenant, session in sessions.items():
                other = next(t for t in TENANTS if t != tenant)
                context = log.context(session, user_id=ALICE, tenant=tenant, after=last[tenant])
                assert [m.content for m in context.messages] == [f"secret of {tenant}"]
                assert context.tenant == tenant
                listed = log.sessions(ALICE, tenant=tenant)
                assert [(e.session_id, e.title, e.tenant) for e in listed] == [
                    (session, f"{tenant} order", tenant)
                ]
                # Alice of the other tenant, bob of this one, and alice of "default" read
                # it as a session that does not exist, from Redis and from the log.
                for reader in (
                    KeyScope(other, ALICE),
                    KeyScope(tenant, "bob"),
                    KeyScope("default", ALICE),
                ):
                    for options in ({}, {"as_of": datetime.now(UTC) + timedelta(hours=1)}):
                        theirs, missing = (
                            refused(functools.partial(read, log, s, reader, **options))
                            for s in (session, "s-missing")
                        )
                        same_answer(theirs, missing, session)
                    listed = log.sessions(reader.user_id, tenant=reader.tenant)
                    assert session not in [e.session_id for e in listed]
                # A redaction reads first: refused as a read, nothing published.
                message_id = context.messages[0].message_id
                with pytest.raises(SessionNotFound):
                    log.redact(session, message_id, user_id=ALICE, tenant=other)
            assert log.sessions(ALICE) == []  # the default tenant's alice has none
            # The asyncio client reads through the same rule.
            asyncio.run(_async_reads(settings, sessions))

            # Writing into the other tenant's session is refused before it is published.
            before = kafka.end_offsets(settings.topic)
            with pytest.raises(OwnershipError, match="belongs to another user, not alice"):
                log.append(
                    sessions["acme"], user_id=ALICE, role="user", content="x", tenant="globex"
                )
            with pytest.raises(OwnershipError):
                log.start_session(sessions["globex"], user_id=ALICE, title="mine", tenant="acme")
            assert kafka.end_offsets(settings.topic) == before

        # The export of alice of acme holds acme's session only, read from the log.
        for tenant, session in sessions.items():
            exported = log.export_user(ALICE, tenant=tenant)
            assert exported["tenant"] == tenant
            assert [s["session_id"] for s in exported["sessions"]] == [session]
            assert f"secret of {next(t for t in TENANTS if t != tenant)}" not in str(exported)
    finally:
        log.close()


async def _async_reads(settings: Settings, sessions: dict[str, str]) -> None:
    async with AsyncChatLog.from_settings(settings, flush_on_sigterm=False) as log:
        acme, globex = sessions["acme"], sessions["globex"]
        mine = await log.context(acme, user_id=ALICE, tenant="acme")
        assert [m.content for m in mine.messages] == ["secret of acme"]
        assert [e.session_id for e in await log.sessions(ALICE, tenant="globex")] == [globex]
        with pytest.raises(SessionNotFound) as theirs:
            await log.context(acme, user_id=ALICE, tenant="globex")
        with pytest.raises(SessionNotFound) as missing:
            await log.context("s-missing", user_id=ALICE, tenant="globex")
        same_answer(theirs.value, missing.value, acme)


def test_a_replay_migrates_a_read_model_of_the_first_key_layout(settings, tmp_path: Path):
    client = redis.Redis.from_url(settings.redis_url)
    generations = wiring.generations(settings, client)
    # A deployment whose read-model was built before the tenant-scoped index: its epoch
    # names no layout, as every epoch did then. The projector continues it in its layout.
    generations.create("g1", layout=LEGACY_LAYOUT)
    assert generations.flip(None, "g1")
    sessions = {tenant: sid(tenant) for tenant in TENANTS}
    log = ChatLog.from_settings(settings, flush_on_sigterm=False)
    projector_log = tmp_path / "projector.log"
    try:
        with running_projector(settings, log=projector_log):
            last = write_chats(log, sessions)
            for tenant, session in sessions.items():
                log.context(session, user_id=ALICE, tenant=tenant, after=last[tenant])
            # Written the old way: one index per user id, holding both tenants' sessions.
            shared = f"{settings.redis_prefix}:g1:u:{{u:{ALICE}}}:sessions"
            assert {s.decode() for s in client.zrange(shared, 0, -1)} == set(sessions.values())
            assert list(client.scan_iter(f"{settings.redis_prefix}:g1:u:{{u:acme:*")) == []

            # What this code does with it: contexts are served, tenant-checked...
            for tenant, session in sessions.items():
                other = next(t for t in TENANTS if t != tenant)
                context = log.context(session, user_id=ALICE, tenant=tenant)
                assert [m.content for m in context.messages] == [f"secret of {tenant}"]
                with pytest.raises(SessionNotFound):
                    log.context(session, user_id=ALICE, tenant=other)
            # ...and a session list, which would mix tenants or miss sessions, is refused.
            with pytest.raises(LayoutMismatch, match="chatlog replay") as outdated:
                log.sessions(ALICE, tenant="acme")
            assert "key layout 1" in str(outdated.value)
            with pytest.raises(LayoutMismatch, match="chatlog replay"):
                asyncio.run(_async_sessions(settings))
            checked = chatlog_cli(settings, "replay", "--verify")
            assert checked.returncode == 1, checked.stderr
            assert (
                "layout g1: built with key layout 1, not 2: run `chatlog replay`" in checked.stdout
            )

            # The replay builds the current layout and the live projector follows it.
            replayed = chatlog_cli(settings, "replay", "--handover", "1")
            assert replayed.returncode == 0, replayed.stderr
            assert "generation: g2" in replayed.stdout
            assert generations.live() == "g2"
            assert generations.layout("g2") == LAYOUT
            assert not generations.exists("g1")  # the old layout is gone

            for tenant, session in sessions.items():
                listed = log.sessions(ALICE, tenant=tenant)
                assert [(e.session_id, e.tenant) for e in listed] == [(session, tenant)]
                context = log.context(session, user_id=ALICE, tenant=tenant)
                assert [m.content for m in context.messages] == [f"secret of {tenant}"]
            assert log.sessions(ALICE) == []
            # New sessions land in the new layout's index, written by the live projector.
            later = sid("acme")
            position = log.append(later, user_id=ALICE, role="user", content="new", tenant="acme")
            log.context(later, user_id=ALICE, tenant="acme", after=position)
            wait_until(
                lambda: (
                    [e.session_id for e in log.sessions(ALICE, tenant="acme")]
                    == [later, sessions["acme"]]
                ),
                timeout=30,
                what="the new session listed first",
            )
            assert [e.session_id for e in log.sessions(ALICE, tenant="globex")] == [
                sessions["globex"]
            ]
    finally:
        log.close()
        client.close()
    # The projector told the operator at start what to run.
    assert "chatlog replay" in projector_log.read_text(encoding="utf-8")


async def _async_sessions(settings: Settings) -> None:
    async with AsyncChatLog.from_settings(settings, flush_on_sigterm=False) as log:
        await log.sessions(ALICE, tenant="acme")


def test_a_generation_from_before_epochs_is_adopted_in_the_first_layout(settings):
    client = redis.Redis.from_url(settings.redis_url)
    generations = wiring.generations(settings, client)
    try:
        assert generations.flip(None, "g1")  # a pointer and no epoch: from before epochs
        with running_projector(settings):
            wait_until(lambda: generations.epoch("g1") is not None, timeout=60, what="an epoch")
            # Written before epochs, so before layouts: its lists wait for a replay.
            assert generations.layout("g1") == LEGACY_LAYOUT
            with (
                ChatLog.from_settings(settings, flush_on_sigterm=False) as log,
                pytest.raises(LayoutMismatch, match="chatlog replay"),
            ):
                log.sessions(ALICE, tenant="acme")
    finally:
        client.close()
