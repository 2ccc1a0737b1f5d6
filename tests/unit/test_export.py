"""The export fold (`UserExport`): which sessions are the user's, and what each shows."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from chatlog.processors.export import EXPORT_FORMAT, EXPORT_VERSION, UserExport
from chatlog.producers.commands import append_message, new_event
from chatlog.schemas.events import (
    ConversationEvent,
    MessageRedacted,
    SessionStarted,
    SummaryUpdated,
    ToolCall,
    UserErased,
)
from chatlog.schemas.position import Position


def feed(export: UserExport, log: list[tuple[ConversationEvent, Position]]) -> None:
    for event, position in log:
        if export.wants(event, position):
            export.take(event, position)


def document(export: UserExport) -> dict:
    return export.document(
        topic="events", through={0: 99, 1: 99}, exported_at=datetime(2026, 12, 6, tzinfo=UTC)
    )


def test_every_message_of_every_session_of_the_user_with_redactions_and_summaries():
    said = [append_message("a", user_id="ann", role="user", content=f"turn {n}") for n in range(30)]
    tool = append_message(
        "a",
        user_id="ann",
        role="assistant",
        content="",
        tool_calls=[ToolCall(id="c1", name="lookup", arguments="{}")],
    )
    redact = new_event(
        "a", user_id="ann", payload=MessageRedacted(message_id=said[3].payload.message_id)
    )
    summary = new_event(
        "a",
        user_id="ann",
        # Made after the redaction (at offset 32) and honouring it, as the summarizer's
        # are: one that claims nothing is withheld, as the read-model withholds it.
        payload=SummaryUpdated(
            summary="they asked", through_offset=5, model="m", redactions_through=32
        ),
    )
    log = [(new_event("a", user_id="ann", payload=SessionStarted(title="Order")), Position(0, 0))]
    log += [(e, Position(0, n + 1)) for n, e in enumerate([*said, tool, redact, summary])]
    export = UserExport(tenant="default", user_id="ann")
    feed(export, log)
    doc = document(export)
    assert (doc["format"], doc["version"]) == (EXPORT_FORMAT, EXPORT_VERSION)
    assert doc["source"] == {"topic": "events", "through": {"0": 99, "1": 99}}
    json.dumps(doc)  # JSON-ready as it is
    [session] = doc["sessions"]
    assert session["title"] == "Order"
    # Far beyond any window: nothing was moved out or dropped, summary or not.
    assert session["message_count"] == 31
    assert [m["content"] for m in session["messages"][:3]] == ["turn 0", "turn 1", "turn 2"]
    gone = session["messages"][3]
    assert gone["redacted"]
    assert gone["content"] is None
    assert "turn 3" not in json.dumps(gone)
    assert session["messages"][-1]["tool_calls"] == [
        {"id": "c1", "name": "lookup", "arguments": "{}"}
    ]
    assert session["summary"] == {"text": "they asked", "model": "m", "through_offset": 5}


def test_a_summary_that_may_hold_a_message_redacted_since_is_left_out_until_rebuilt():
    said = [append_message("a", user_id="ann", role="user", content=f"turn {n}") for n in range(30)]
    log = [(e, Position(0, n)) for n, e in enumerate(said)]

    def summary(text: str, *, at: int, honours: int) -> tuple[ConversationEvent, Position]:
        payload = SummaryUpdated(
            summary=text, through_offset=5, model="m", redactions_through=honours
        )
        return new_event("a", user_id="ann", payload=payload), Position(0, at)

    log.append(summary("turn 3 said 4111 1111 1111 1111", at=30, honours=29))
    redact = MessageRedacted(message_id=said[3].payload.message_id)
    log.append((new_event("a", user_id="ann", payload=redact), Position(0, 31)))
    export = UserExport(tenant="default", user_id="ann")
    feed(export, log)
    [session] = document(export)["sessions"]
    # The read-model withholds it (it covers turn 3): the export does not hand it out.
    assert session["summary"] is None
    assert "4111" not in json.dumps(session)

    feed(export, [summary("the rebuild", at=32, honours=31)])
    [session] = document(export)["sessions"]
    assert session["summary"] == {"text": "the rebuild", "model": "m", "through_offset": 5}
    assert session["message_count"] == 30  # every message still, under any window


def test_only_sessions_the_user_owns_and_only_their_own_events():
    log = [
        (append_message("ann-1", user_id="ann", role="user", content="mine"), Position(0, 0)),
        (append_message("bob-1", user_id="bob", role="user", content="bob's"), Position(1, 0)),
        # ann writing into bob's session: refused, as the projector refuses it.
        (append_message("bob-1", user_id="ann", role="user", content="intruding"), Position(1, 1)),
        # bob writing into ann's session: not hers.
        (
            append_message("ann-1", user_id="bob", role="user", content="bob intrudes"),
            Position(0, 1),
        ),
        # the same id in another tenant is another person.
        (
            new_event(
                "ann-2",
                user_id="ann",
                tenant="other",
                payload=SessionStarted(title="elsewhere"),
            ),
            Position(0, 2),
        ),
    ]
    export = UserExport(tenant="default", user_id="ann")
    feed(export, log)
    doc = document(export)
    assert [s["session_id"] for s in doc["sessions"]] == ["ann-1"]
    assert [m["content"] for m in doc["sessions"][0]["messages"]] == ["mine"]
    assert export.refused == 1  # her event in bob's session
    assert "bob-1" in export.others


def test_a_session_erased_on_its_own_shows_as_erased_without_content():
    log = [
        (append_message("a", user_id="ann", role="user", content="secret"), Position(0, 0)),
        (new_event("a", user_id="ann", payload=UserErased()), Position(0, 1)),
    ]
    export = UserExport(tenant="default", user_id="ann")
    feed(export, log)
    [session] = document(export)["sessions"]
    assert session["status"] == "erased"
    assert session["messages"] == []
    assert "secret" not in json.dumps(session)
