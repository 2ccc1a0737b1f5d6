"""Redaction reaches summaries, end to end: real Kafka and Redis, the projector and the
summarizer as processes, the real `openai` client talking to the local stand-in LLM.

A canary goes into one message; the summarizer summarizes it; the message is redacted.
From the redaction's position on, no read path (the read-model, `as_of` at every offset
of the log, a replay) serves a summary holding the canary, the summarizer rebuilds the
summary from the log without it, and the LLM never receives it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from chatlog import AsyncChatLog, ChatLog, wiring
from chatlog.cli import main
from chatlog.processors.kafka_audit import read_audit
from chatlog.processors.replay import rebuild, verify
from chatlog.producers.commands import new_event
from chatlog.producers.kafka_producer import AsyncConversationProducer
from chatlog.projections.context import Context
from chatlog.schemas.audit import AuditAction
from chatlog.schemas.errors import SessionNotFound
from chatlog.schemas.events import MessageRedacted, SummaryUpdated
from chatlog.schemas.position import Position
from chatlog.settings import Settings
from tests.llm_stub import LlmStub, slow
from tests.processes import (
    chatlog_env,
    log_events,
    running_processor,
    running_projector,
    unique_settings,
    wait_until,
)

pytestmark = pytest.mark.integration

SESSION = "canary-session"
USER = "alice"
# The stub LLM copies ids shaped #XX-NNNN into its summaries, so the second canary shows
# whether a summary was written over the message; the first is free text.
CANARY = "canary-7Q2X"
CANARY_ID = "#CQ-7213"
SECRET = f"my card's security code is {CANARY}, ticket {CANARY_ID}"
WINDOW = 4
THRESHOLD = 3


@pytest.fixture
def stub() -> Iterator[LlmStub]:
    with LlmStub() as server:
        yield server


@pytest.fixture
def settings(kafka, redis_url, redis_prefix, stub) -> Settings:
    return unique_settings(
        kafka,
        redis_url,
        redis_prefix,
        window=WINDOW,
        summary_threshold=THRESHOLD,
        summarizer_group=f"summarizer-{uuid.uuid4().hex[:8]}",
        llm_base_url=stub.base_url,
        llm_model="stub-model",
        llm_timeout_s=10.0,
        partitions=3,
    )


@contextlib.contextmanager
def chat_log(settings: Settings) -> Iterator[ChatLog]:
    with ChatLog(
        producer=wiring.producer(settings, flush_on_sigterm=False),
        reader=wiring.reader(settings),
        read_timeout_s=30.0,
        history=wiring.kafka_history(settings),
    ) as log:
        yield log


def turn(n: int) -> str:
    return SECRET if n == 1 else f"turn {n}: about order #ZZ-{n:04d}"


def append_turns(log: ChatLog, turns: range) -> Position:
    position = None
    for n in turns:
        role = "user" if n % 2 == 0 else "assistant"
        position = log.append(SESSION, user_id=USER, role=role, content=turn(n), message_id=f"m{n}")
    assert position is not None
    return position


def leaks(context: Context) -> bool:
    """Whether the canary is anywhere a prompt could take it from."""
    shown = json.dumps([context.summary, context.to_openai(system="s")])
    return CANARY in shown or CANARY_ID in shown


def summary_holding(log: ChatLog, text: str, after: Position) -> Callable[[], bool]:
    # Read after the turns just appended (read-your-writes): appends return within a
    # broker round trip, before the projector may have made the session.
    def check() -> bool:
        summary = log.context(SESSION, user_id=USER, after=after).summary
        return summary is not None and text in summary

    return check


def summaries_in_log(kafka, settings: Settings) -> list[tuple[int, SummaryUpdated]]:
    return [
        (offset, e.payload)
        for offset, e in log_events(kafka, settings)
        if e.session_id == SESSION and isinstance(e.payload, SummaryUpdated)
    ]


def test_a_redacted_canary_leaves_the_summary_on_every_read_path(kafka, settings, stub, tmp_path):
    with (
        chat_log(settings) as log,
        running_projector(settings),
        running_processor("summarizer", settings, log=tmp_path / "summarizer.log"),
    ):
        # 7 turns, window 4: turns 0-2 overflow and are summarized, the canary with them.
        written = append_turns(log, range(7))
        wait_until(
            summary_holding(log, CANARY_ID, written), timeout=60, what="the canary's summary"
        )
        assert any(CANARY in json.dumps(body) for body in stub.requests)
        asked_before = len(stub.requests)

        redaction = log.redact(SESSION, "m1", user_id=USER, reason="security code")

        # From the redaction on, no context serves the canary: first withheld (said so),
        # then the rebuilt summary.
        first = log.context(SESSION, user_id=USER, after=redaction)
        assert not leaks(first)
        assert first.summary_withheld or first.summary is not None
        seen: list[Context] = []

        def rebuilt() -> bool:
            context = log.context(SESSION, user_id=USER, after=redaction)
            seen.append(context)
            assert not leaks(context)
            assert context.summary_withheld is (context.summary is None)
            return not context.summary_withheld

        wait_until(rebuilt, timeout=60, what="the rebuilt summary")
        live = seen[-1]
        assert live.summary == "Stub summary of 2 turns. Ids: #ZZ-0000, #ZZ-0002."
        assert live.summary_through == first.summary_through
        assert [m.message_id for m in live.messages] == ["m3", "m4", "m5", "m6"]

        # Summaries roll on from the rebuilt one, and the canary never reaches the LLM again.
        written = append_turns(log, range(7, 10))
        wait_until(summary_holding(log, "#ZZ-0005", written), timeout=60, what="the next summary")
        final = log.context(SESSION, user_id=USER)
        assert not leaks(final)
        assert "#ZZ-0000" in (final.summary or "")  # the older turns are kept in the chain
        after_redaction = stub.requests[asked_before:]
        assert after_redaction
        assert not any(
            CANARY in json.dumps(b) or CANARY_ID in json.dumps(b) for b in after_redaction
        )

        # The log: the first summary (with the canary) and its rebuild, same coverage.
        summaries = summaries_in_log(kafka, settings)
        (at_first, original), (at_rebuild, rebuild_event) = summaries[:2]
        assert CANARY_ID in original.summary
        assert at_first < redaction.offset < at_rebuild
        assert rebuild_event.through_offset == original.through_offset
        assert rebuild_event.redactions_through >= redaction.offset
        assert CANARY_ID not in rebuild_event.summary

        # As of every offset of the session's partition from the redaction on (and before
        # it too: a later redaction hides what a past read would show), nothing leaks; the
        # summary is withheld until the rebuild, served after it.
        end = kafka.end_offsets(settings.topic)[redaction.partition]
        for offset in range(at_first, end):
            past = log.context(SESSION, user_id=USER, as_of=Position(redaction.partition, offset))
            assert not leaks(past), offset
            assert past.summary_withheld is (at_first <= offset < at_rebuild), offset
        now = log.context(SESSION, user_id=USER, as_of=Position(redaction.partition, end - 1))
        assert now.summary == final.summary

        # A replay rebuilds the same: the rebuilt summary, no canary, nothing differs.
        report = rebuild(wiring.replay_parts(settings), handover_s=0.5)
        assert report.generation == "g2"
        replayed = log.context(SESSION, user_id=USER)
        assert not leaks(replayed)
        assert (replayed.summary, replayed.summary_withheld) == (final.summary, False)
        assert verify(wiring.replay_parts(settings)).differences == []


def test_a_summary_in_flight_when_its_message_is_redacted_is_withheld_then_rebuilt(
    kafka, settings, stub, tmp_path
):
    stub.script(slow(4.0))  # the first summary is computed slowly, with the canary in it
    with (
        chat_log(settings) as log,
        running_projector(settings),
        running_processor("summarizer", settings, log=tmp_path / "summarizer.log"),
    ):
        append_turns(log, range(7))
        wait_until(lambda: len(stub.requests) == 1, timeout=60, what="the slow summary call")
        redaction = log.redact(SESSION, "m1", user_id=USER)

        def rebuilt() -> bool:
            context = log.context(SESSION, user_id=USER, after=redaction)
            assert not leaks(context)
            return context.summary is not None

        wait_until(rebuilt, timeout=60, what="the rebuilt summary")
        # The raced summary reached the log after the redaction, and was never served.
        summaries = summaries_in_log(kafka, settings)
        raced = [(o, s) for o, s in summaries if CANARY_ID in s.summary]
        assert len(raced) == 1
        at_raced, raced_summary = raced[0]
        assert at_raced > redaction.offset
        assert raced_summary.redactions_through < redaction.offset
        assert CANARY in json.dumps(stub.requests[0])  # it was asked before the redaction
        assert not any(CANARY in json.dumps(b) for b in stub.requests[1:])
        past = log.context(SESSION, user_id=USER, as_of=Position(redaction.partition, at_raced))
        assert (past.summary, past.summary_withheld) == (None, True)


def test_redact_refuses_another_users_session_and_the_cli_redacts(
    kafka, settings, monkeypatch, capsys
):
    with chat_log(settings) as log, running_projector(settings):
        position = append_turns(log, range(2))
        log.context(SESSION, user_id=USER, after=position)
        before = len(log_events(kafka, settings))
        with pytest.raises(SessionNotFound, match=f"^no session {SESSION} of user mallory"):
            log.redact(SESSION, "m0", user_id="mallory")
        with pytest.raises(SessionNotFound):
            log.redact("no-such-session", "m0", user_id=USER)
        assert len(log_events(kafka, settings)) == before  # nothing was published

        for name in [n for n in os.environ if n.startswith("CHATLOG_")]:
            monkeypatch.delenv(name)
        for name, value in chatlog_env(settings).items():
            if name.startswith("CHATLOG_"):
                monkeypatch.setenv(name, value)
        monkeypatch.setattr(sys, "argv", ["chatlog"])
        argv = ["redact", "--session", SESSION, "--message", "m0", "--user", USER, "--json"]
        assert main([*argv, "--reason", "pasted a card"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert (printed["session_id"], printed["message_id"]) == (SESSION, "m0")
        redacted_at = Position.parse(printed["position"])
        context = log.context(SESSION, user_id=USER, after=redacted_at)
        assert [m.redacted for m in context.messages] == [True, False]
        [(_, event)] = [
            (o, e) for o, e in log_events(kafka, settings) if isinstance(e.payload, MessageRedacted)
        ]
        assert event.payload == MessageRedacted(message_id="m0", reason="pasted a card")
        assert main(["redact", "--session", SESSION, "--message", "m0", "--user", "mallory"]) == 1
        # The command's redaction is in the audit trail, and so is the refused one.
        trail = read_audit(bootstrap_servers=settings.kafka_bootstrap, topic=settings.audit_topic)
        assert trail.intact
        assert [
            (r.outcome, r.details.get("position"))
            for _, r in trail.records
            if r.action == AuditAction.MESSAGE_REDACTED and r.session_id == SESSION
        ] == [("ok", printed["position"]), ("refused", None)]

        # A view stored before these meta fields existed lacks them: it reads, and
        # verifies against a replay, as their defaults.
        client = redis.Redis.from_url(settings.redis_url)
        meta = wiring.live_store(settings).keys.meta(SESSION)
        assert client.hdel(meta, "summary_withheld", "redacted_at") == 2
        assert log.context(SESSION, user_id=USER).summary_withheld is False
        assert verify(wiring.replay_parts(settings)).differences == []


def test_async_redact_checks_ownership_then_redacts(settings):
    async def scenario() -> None:
        async with AsyncChatLog(
            producer=AsyncConversationProducer(wiring.producer(settings, flush_on_sigterm=False)),
            reader=wiring.async_reader(settings),
            read_timeout_s=30.0,
            history=wiring.kafka_history(settings),
        ) as log:
            await log.append(SESSION, user_id=USER, role="user", content=SECRET, message_id="m1")
            # Not projected yet, or never: the owner is looked up in the log.
            with pytest.raises(SessionNotFound, match=f"^no session {SESSION} of user mallory"):
                await log.redact(SESSION, "m1", user_id="mallory")
            redaction = await log.redact(SESSION, "m1", user_id=USER)
            context = await log.context(SESSION, user_id=USER, after=redaction)
            assert [(m.content, m.redacted) for m in context.messages] == [("[redacted]", True)]

    with running_projector(settings):
        asyncio.run(scenario())


def test_a_past_read_withholds_only_for_messages_that_existed_then(kafka, settings):
    with chat_log(settings) as log, running_projector(settings):
        append_turns(log, range(7))
        # A summary of turns 0-2, published by hand (no summarizer runs here).
        [offsets] = [[o for o, e in log_events(kafka, settings) if e.session_id == SESSION]]
        summary = new_event(
            SESSION,
            user_id=USER,
            payload=SummaryUpdated(
                summary=f"turns 0-2 {CANARY_ID}", through_offset=offsets[2], model="hand"
            ),
        )
        summarized = log.producer.publish(summary)
        later = log.append(SESSION, user_id=USER, role="user", content="later", message_id="m7")
        redaction = log.redact(SESSION, "m7", user_id=USER)  # in the window: no summary holds it
        assert (
            log.context(SESSION, user_id=USER, after=redaction).summary == summary.payload.summary
        )

        # m7 did not exist at the summary: the past read serves the summary as it was.
        then = log.context(SESSION, user_id=USER, as_of=summarized)
        assert (then.summary, then.summary_withheld) == (summary.payload.summary, False)
        # Once it existed it is shown redacted, and the summary still does not hold it.
        after = log.context(SESSION, user_id=USER, as_of=later)
        assert after.messages[-1].redacted
        assert not after.summary_withheld

        # m1 is in the summary: redacting it withholds the summary for every past read
        # from the summary on, and live (no summarizer runs to rebuild it).
        redaction = log.redact(SESSION, "m1", user_id=USER)
        live = log.context(SESSION, user_id=USER, after=redaction)
        assert (live.summary, live.summary_withheld) == (None, True)
        for point in (summarized, later, redaction):
            past = log.context(SESSION, user_id=USER, as_of=point)
            assert (past.summary, past.summary_withheld) == (None, True)
        report = rebuild(wiring.replay_parts(settings), handover_s=0.5)
        assert report.generation == "g2"
        replayed = log.context(SESSION, user_id=USER)
        assert (replayed.summary, replayed.summary_withheld) == (None, True)
