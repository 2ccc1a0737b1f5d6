"""`LiveTracker`: what a live stream sends for each context it reads, without a network."""

from __future__ import annotations

import json
from dataclasses import replace

from chatlog.gateway.live_events import HEARTBEAT, LiveTracker, SseEvent
from chatlog.processors.projector_stats import records_behind
from chatlog.projections.context import Context
from chatlog.projections.view import Message, SessionStatus
from chatlog.schemas.position import Position

P = 3  # the session's partition


def message(offset: int, *, redacted: bool = False) -> Message:
    return Message(
        offset=offset,
        message_id=f"m{offset}",
        role="user",
        content="[redacted]" if redacted else f"text {offset}",
        occurred_at_ms=offset,
        redacted=redacted,
    )


def context(*offsets: int, at: int | None = None, count: int | None = None, **fields) -> Context:
    messages = tuple(message(o) for o in offsets)
    return Context(
        session_id="s-1",
        user_id="alice",
        title=fields.pop("title", None),
        status=fields.pop("status", SessionStatus.OPEN),
        summary=fields.pop("summary", None),
        summary_through=fields.pop("summary_through", -1),
        messages=messages,
        window_size=20,
        position=Position(P, at if at is not None else max(offsets, default=0)),
        message_count=count if count is not None else len(messages),
        updated_at_ms=0,
        **fields,
    )


def tracker() -> LiveTracker:
    return LiveTracker(
        lambda c: {"position": str(c.position), "messages": [m.message_id for m in c.messages]},
        lambda m: {"message_id": m.message_id},
    )


def kinds(events: list[SseEvent]) -> list[tuple[str, str]]:
    return [(e.event, str(e.id)) for e in events]


def test_a_new_stream_starts_with_a_reset_then_sends_each_new_message_by_its_position():
    live = tracker()
    assert kinds(live.start(context(10, 12), None)) == [("reset", "3:12")]
    assert live.update(context(10, 12)) == []  # nothing moved
    events = live.update(context(10, 12, 15, 17))
    assert kinds(events) == [("message", "3:15"), ("message", "3:17")]
    assert [e.data["message_id"] for e in events] == ["m15", "m17"]
    assert not live.ended


def test_summary_and_session_changes_come_after_the_messages_with_the_position_as_id():
    live = tracker()
    live.start(context(10, 12), None)
    summarized = context(12, 20, at=21, count=3, summary="they talked", summary_through=10)
    events = live.update(replace(summarized, title="Refund"))
    assert kinds(events) == [("message", "3:20"), ("summary", "3:21"), ("session", "3:21")]
    assert events[1].data == {
        "summary": "they talked",
        "summary_through": 10,
        "summary_withheld": False,
    }
    assert events[2].data == {"status": "open", "title": "Refund"}


def test_a_close_ends_the_stream_with_a_session_event():
    live = tracker()
    live.start(context(10), None)
    events = live.update(context(10, at=11, status=SessionStatus.CLOSED))
    assert kinds(events) == [("session", "3:11")]
    assert events[0].data == {"status": "closed", "title": None}
    assert live.ended
    # A stream opened on a closed session: its context, then the end.
    again = tracker()
    assert kinds(again.start(context(10, at=11, status=SessionStatus.CLOSED), None)) == [
        ("reset", "3:11"),
        ("session", "3:11"),
    ]
    assert again.ended


def test_a_gone_session_ends_the_stream_as_erased_at_the_last_position_sent():
    live = tracker()
    live.start(context(10, 12), None)
    gone = live.gone()
    assert (gone.event, str(gone.id), gone.data) == (
        "session",
        "3:12",
        {"status": "erased", "title": None},
    )
    assert live.ended


def test_resuming_sends_exactly_the_messages_after_the_position_then_the_state():
    live = tracker()
    events = live.start(context(10, 12, 15, 17), Position(P, 12))
    assert kinds(events) == [("message", "3:15"), ("message", "3:17"), ("session", "3:17")]
    # Up to date: nothing at all.
    assert live.start(context(10, 12), Position(P, 12)) == []
    # A summary is state too: sent when there is one.
    summarized = context(15, 17, count=4, summary="earlier", summary_through=12)
    assert kinds(tracker().start(summarized, Position(P, 15))) == [
        ("message", "3:17"),
        ("summary", "3:17"),
        ("session", "3:17"),
    ]


def test_resuming_from_before_what_the_context_still_holds_is_a_reset():
    # Four messages, two summarized away: a client at 11 may have missed 12 (gone).
    summarized = context(15, 17, count=4, summary="earlier", summary_through=12)
    assert kinds(tracker().start(summarized, Position(P, 11))) == [("reset", "3:17")]
    # ... but a client at the oldest held one, or later, missed nothing that is gone.
    assert kinds(tracker().start(summarized, Position(P, 15)))[0] == ("message", "3:17")
    # Another partition's position, or one from the future: a reset.
    assert kinds(tracker().start(context(10, 12), Position(P + 1, 5))) == [("reset", "3:12")]
    assert kinds(tracker().start(context(10, 12), Position(P, 99))) == [("reset", "3:12")]


def test_a_redaction_of_a_message_the_client_holds_is_a_reset():
    live = tracker()
    live.start(context(10, 12), None)
    redacted = replace(context(10, 12, at=14), messages=(message(10, redacted=True), message(12)))
    assert kinds(live.update(redacted)) == [("reset", "3:14")]
    # Resuming across a redaction cannot tell whether the client saw it: a reset.
    assert kinds(tracker().start(redacted, Position(P, 12))) == [("reset", "3:14")]


def test_messages_appended_and_summarized_between_two_reads_are_a_reset():
    live = tracker()
    live.start(context(10), None)
    # Three appended since; only one is still held (two went into the summary).
    after = context(30, count=4, summary="s", summary_through=25)
    assert kinds(live.update(after)) == [("reset", "3:30")]


def test_the_wire_format():
    event = SseEvent("message", Position(3, 17), {"content": "héllo\nworld"})
    text = event.encode()
    assert text.startswith("id: 3:17\nevent: message\ndata: ")
    assert text.endswith("\n\n")
    data = text.split("data: ", 1)[1].rstrip("\n")
    assert "\n" not in data  # one data line: the newline is escaped in the JSON
    assert json.loads(data) == {"content": "héllo\nworld"}
    assert HEARTBEAT.startswith(":")


def test_records_behind_counts_what_the_marks_have_not_reached():
    ends = {0: (0, 10), 1: (0, 0), 2: (5, 8)}
    assert records_behind(ends, {0: 9, 2: 7}) == 0
    assert records_behind(ends, {0: 4}) == 5 + 3  # partition 2 never projected: 5..7
    assert records_behind(ends, {0: 4, 2: 1}) == 5 + 3  # before the low mark: gone
