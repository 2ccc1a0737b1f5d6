"""`evolve` and `fold`: how a session view follows its events, and what it refuses.

The examples pin one behaviour each; the properties check the promises the projector
relies on: replays change nothing, sessions never leak into each other, the window and
overflow bounds hold for any length, and an erasure is final for what came before it.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chatlog.projections.view import (
    REDACTED,
    ForeignEvent,
    Message,
    SessionStatus,
    SessionView,
    WindowPolicy,
    evolve,
    fold,
    redact,
)
from chatlog.schemas.errors import InvalidEvent
from chatlog.schemas.events import (
    ConversationEvent,
    MessageAppended,
    MessageRedacted,
    Payload,
    Role,
    SessionClosed,
    SessionStarted,
    SummaryUpdated,
    ToolCall,
    UserErased,
)
from chatlog.schemas.position import Position

SESSION = "s-1"
USER = "alice"
INTRUDER = "mallory"
PARTITION = 3
OTHER_PARTITION = 4
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT = WindowPolicy()
MESSAGE_IDS = ("m0", "m1", "m2", "m3")

Log = list[tuple[ConversationEvent, Position]]


def event(
    payload: Payload,
    *,
    session: str = SESSION,
    user: str = USER,
    tenant: str = "default",
    at: datetime = T0,
) -> ConversationEvent:
    return ConversationEvent(
        session_id=session, user_id=user, tenant=tenant, occurred_at=at, payload=payload
    )


def appended(content: str, **fields: object) -> MessageAppended:
    fields.setdefault("role", Role.USER)
    return MessageAppended(content=content, **fields)


def summary(through_offset: int, text: str = "so far", **fields: object) -> SummaryUpdated:
    return SummaryUpdated(summary=text, through_offset=through_offset, model="m", **fields)


def at(offset: int, partition: int = PARTITION) -> Position:
    return Position(partition, offset)


def log(*payloads: Payload, start: int = 0, user: str = USER) -> Log:
    """One event per payload at consecutive offsets, one second apart."""
    return [
        (event(payload, user=user, at=T0 + timedelta(seconds=i)), at(start + i))
        for i, payload in enumerate(payloads)
    ]


def folded(*payloads: Payload, policy: WindowPolicy = DEFAULT) -> SessionView:
    view, refused = fold(None, log(*payloads), policy)
    assert view is not None
    assert refused == []
    return view


def chat(turns: int) -> list[MessageAppended]:
    return [appended(f"turn {i}", message_id=f"m{i}") for i in range(turns)]


def contents(messages: tuple[Message, ...]) -> list[str]:
    return [m.content for m in messages]


def exact_ms(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


payloads = st.one_of(
    st.builds(appended, st.text(max_size=3), message_id=st.sampled_from(MESSAGE_IDS)),
    st.builds(MessageRedacted, message_id=st.sampled_from((*MESSAGE_IDS, "unknown"))),
    st.builds(
        summary,
        st.integers(0, 80),
        covered_messages=st.integers(0, 9),
        redactions_through=st.integers(-1, 80),
    ),
    st.builds(SessionStarted, title=st.none() | st.just("a title")),
    st.just(SessionClosed()),
    st.just(UserErased()),
)


# Mostly appends, with retries of the same message id: the runs `fold` takes in one go.
append_heavy = st.one_of(
    *[st.builds(appended, st.text(max_size=3), message_id=st.sampled_from(MESSAGE_IDS))] * 6,
    payloads,
)


@st.composite
def histories(
    draw: st.DrawFn, *, start: int = 0, foreign: bool = True, kinds: st.SearchStrategy = payloads
) -> Log:
    """A session's log with gaps in the offsets, clocks that may go back, and (if
    `foreign`) the odd event from another user or another partition."""
    users = st.sampled_from((USER, USER, USER, INTRUDER)) if foreign else st.just(USER)
    partitions = (
        st.sampled_from((PARTITION,) * 5 + (OTHER_PARTITION,)) if foreign else st.just(PARTITION)
    )
    steps = draw(
        st.lists(
            st.tuples(kinds, users, partitions, st.integers(1, 3), st.integers(-60, 600)),
            max_size=25,
        )
    )
    history = []
    offset = start - 1
    for payload, user, partition, gap, seconds in steps:
        offset += gap
        moment = T0 + timedelta(seconds=seconds)
        history.append((event(payload, user=user, at=moment), at(offset, partition)))
    return history


@pytest.mark.parametrize(
    "payload",
    [appended("hello"), SessionStarted(title="Order 7731"), summary(0)],
    ids=lambda p: type(p).__name__,
)
def test_the_first_event_that_can_start_a_session_creates_a_view(payload):
    moment = datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
    view = evolve(None, event(payload, tenant="acme", at=moment), at(17))
    assert view is not None
    assert (view.session_id, view.user_id, view.tenant) == (SESSION, USER, "acme")
    assert (view.partition, view.last_offset) == (PARTITION, 17)
    assert view.created_at_ms == view.updated_at_ms == exact_ms(moment)
    assert view.status is SessionStatus.OPEN


def test_a_first_message_becomes_the_first_message_of_the_view():
    view = folded(appended("hello", message_id="m-1", role=Role.ASSISTANT, name="bot"))
    assert view.messages == (
        Message(
            offset=0,
            message_id="m-1",
            role="assistant",
            content="hello",
            occurred_at_ms=exact_ms(T0),
            name="bot",
        ),
    )
    assert view.message_count == 1


def test_a_first_start_gives_the_view_its_title_and_no_messages():
    view = folded(SessionStarted(title="Order 7731"))
    assert view.title == "Order 7731"
    assert view.messages == ()
    assert view.message_count == 0


def test_a_first_summary_gives_the_view_its_summary_and_no_messages():
    view = folded(summary(0, "earlier turns", covered_messages=4))
    assert (view.summary, view.summary_through, view.summary_covered) == ("earlier turns", 0, 4)
    assert view.messages == ()


@pytest.mark.parametrize(
    "payload",
    [UserErased(), SessionClosed(), MessageRedacted(message_id="m-1")],
    ids=lambda p: type(p).__name__,
)
def test_erasing_closing_or_redacting_no_session_creates_none(payload):
    assert evolve(None, event(payload), at(0)) is None
    assert fold(None, log(payload, payload)) == (None, [])


@given(moment=st.datetimes(datetime(1970, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC)))
@example(moment=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
@example(moment=datetime(2004, 1, 10, 13, 37, 7, 843000, tzinfo=UTC))
@example(moment=datetime(2038, 7, 11, 23, 28, 34, 891000, tzinfo=UTC))
def test_view_times_are_the_event_time_in_exact_milliseconds(moment):
    created = event(appended("hello"), at=moment)
    view = evolve(None, created, at(0))
    assert view is not None
    expected = exact_ms(created.occurred_at)
    assert (view.created_at_ms, view.updated_at_ms) == (expected, expected)
    assert view.messages[0].occurred_at_ms == expected


def test_updated_at_is_the_latest_event_time_even_when_a_clock_goes_back():
    later, earlier = T0 + timedelta(minutes=5), T0 - timedelta(minutes=5)
    view, _ = fold(
        None,
        [
            (event(appended("first"), at=later), at(0)),
            (event(appended("second"), at=earlier), at(1)),
        ],
    )
    assert view is not None
    assert view.created_at_ms == view.updated_at_ms == exact_ms(later)
    assert [m.occurred_at_ms for m in view.messages] == [exact_ms(later), exact_ms(earlier)]


@given(turns=st.integers(1, 40), window=st.integers(1, 8), max_overflow=st.integers(0, 8))
@example(turns=9, window=3, max_overflow=0)
def test_the_view_keeps_the_last_window_plus_overflow_messages_in_order(
    turns, window, max_overflow
):
    policy = WindowPolicy(window=window, max_overflow=max_overflow)
    view = folded(*chat(turns), policy=policy)
    sent = [f"turn {i}" for i in range(turns)]
    kept = sent[-(window + max_overflow) :]
    assert contents(view.messages) == kept
    assert contents(view.window(policy)) == sent[-window:]
    assert contents(view.overflow(policy)) == kept[: max(0, len(kept) - window)]
    assert view.overflow(policy) + view.window(policy) == view.messages
    assert view.overflow_dropped == max(0, turns - (window + max_overflow))
    assert view.message_count == turns


def test_without_overflow_the_view_is_the_window():
    policy = WindowPolicy(window=3, max_overflow=0)
    view = folded(*chat(5), policy=policy)
    assert contents(view.messages) == ["turn 2", "turn 3", "turn 4"]
    assert view.overflow(policy) == ()
    assert (view.overflow_dropped, view.message_count) == (2, 5)


def test_messages_beyond_the_window_move_to_the_overflow_before_being_dropped():
    policy = WindowPolicy(window=2, max_overflow=3)
    view = folded(*chat(7), policy=policy)
    assert contents(view.overflow(policy)) == ["turn 2", "turn 3", "turn 4"]
    assert contents(view.window(policy)) == ["turn 5", "turn 6"]
    assert view.overflow_dropped == 2


@pytest.mark.parametrize(
    "payload",
    [
        appended("again"),
        SessionStarted(title="other"),
        summary(9),
        MessageRedacted(message_id="m1"),
        SessionClosed(),
        UserErased(),
    ],
    ids=lambda p: type(p).__name__,
)
@pytest.mark.parametrize("offset", [0, 2, 3], ids=["first", "middle", "last"])
def test_an_event_at_or_below_the_last_offset_changes_nothing(payload, offset):
    view = folded(*chat(4))
    late = event(payload, at=T0 + timedelta(days=1))
    assert evolve(view, late, at(offset)) == view


@given(data=st.data(), history=histories())
def test_sending_already_applied_events_again_changes_nothing(data, history):
    resent = data.draw(st.lists(st.sampled_from(history), max_size=30)) if history else []
    assert fold(None, history + resent)[0] == fold(None, history)[0]


@given(data=st.data(), history=histories())
def test_replaying_the_log_after_a_crash_gives_the_same_view(data, history):
    crashed_after = data.draw(st.integers(0, len(history)))
    recovered, _ = fold(None, history[:crashed_after])
    assert fold(recovered, history)[0] == fold(None, history)[0]


def test_a_summary_removes_the_messages_it_covers_and_records_itself():
    two = WindowPolicy(window=2, max_overflow=10)
    before = folded(*chat(6), policy=two)
    after = evolve(before, event(summary(3, "turns 0-3", covered_messages=4)), at(6), two)
    assert after is not None
    assert [m.offset for m in after.messages] == [4, 5]
    assert (after.summary, after.summary_through) == ("turns 0-3", 3)
    assert (after.summary_model, after.summary_covered) == ("m", 4)
    assert after.message_count == 6
    assert after.last_offset == 6


@given(
    offsets=st.lists(st.integers(0, 60), unique=True, max_size=20).map(sorted),
    through=st.integers(0, 80),
)
def test_a_summary_removes_exactly_the_overflow_at_or_below_its_offset(offsets, through):
    policy = WindowPolicy(window=3, max_overflow=100)
    history = [(event(appended(f"at {o}")), at(o)) for o in offsets]
    history.append((event(summary(through)), at(100)))
    view, _ = fold(None, history, policy)
    assert view is not None
    overflow, window = offsets[:-3] if len(offsets) > 3 else [], offsets[-3:]
    assert [m.offset for m in view.messages] == [o for o in overflow if o > through] + window


def test_a_summary_never_removes_the_recent_window():
    policy = WindowPolicy(window=2, max_overflow=10)
    view = folded(*chat(5), summary(4, "everything"), policy=policy)
    assert contents(view.messages) == ["turn 3", "turn 4"]
    assert view.summary_through == 4


@pytest.mark.parametrize("through", [1, 3], ids=["older", "duplicate"])
def test_a_stale_summary_only_moves_the_offset_and_the_clock(through):
    before = folded(*chat(6), summary(3, "turns 0-3"))
    stale_at = T0 + timedelta(hours=1)
    after = evolve(before, event(summary(through, "stale"), at=stale_at), at(7))
    assert after == replace(before, last_offset=7, updated_at_ms=exact_ms(stale_at))


def test_a_newer_summary_replaces_the_older_one():
    one = WindowPolicy(window=1, max_overflow=10)
    view = folded(*chat(6), summary(2, "turns 0-2"), summary(4, "turns 0-4"), policy=one)
    assert (view.summary, view.summary_through) == ("turns 0-4", 4)
    assert [m.offset for m in view.messages] == [5]


def test_redaction_blanks_only_the_named_message():
    secret = appended(
        "card 4111 1111 1111 1111",
        message_id="m-secret",
        role=Role.ASSISTANT,
        tool_calls=(ToolCall(id="call_1", name="charge", arguments='{"card": "4111"}'),),
        metadata={"source": "paste"},
    )
    before = folded(appended("hi", message_id="m-a"), secret, appended("bye", message_id="m-b"))
    after = evolve(before, event(MessageRedacted(message_id="m-secret")), at(3))
    assert after is not None
    redacted = after.messages[1]
    assert redacted == replace(
        before.messages[1], content=REDACTED, tool_calls=(), metadata={}, redacted=True
    )
    assert (after.messages[0], after.messages[2]) == (before.messages[0], before.messages[2])
    assert after.last_offset == 3


def test_redacting_an_unknown_message_changes_no_message():
    before = folded(*chat(3))
    after = evolve(before, event(MessageRedacted(message_id="m-unknown")), at(3))
    assert after is not None
    assert after.messages == before.messages
    assert after.last_offset == 3


def test_closing_a_session_keeps_its_messages():
    before = folded(*chat(2))
    after = evolve(before, event(SessionClosed(reason="idle")), at(2))
    assert after == replace(before, status=SessionStatus.CLOSED, last_offset=2, closed_through=2)


def test_a_message_after_closing_reopens_the_session():
    view = folded(*chat(2), SessionClosed(), appended("back again"))
    assert view.status is SessionStatus.OPEN
    assert contents(view.messages) == ["turn 0", "turn 1", "back again"]


def test_erasure_leaves_a_tombstone_without_content():
    view = folded(SessionStarted(title="Order 7731"), *chat(4), summary(2), UserErased())
    assert view.status is SessionStatus.ERASED
    assert (view.messages, view.summary, view.title) == ((), None, None)
    assert (view.summary_model, view.summary_covered) == (None, 0)
    assert view.last_offset == 6


def test_replaying_the_log_before_an_erasure_brings_nothing_back():
    history = log(SessionStarted(title="Order 7731"), *chat(4), summary(2), UserErased())
    erased, _ = fold(None, history)
    assert fold(erased, history) == (erased, [])


@given(data=st.data(), history=histories(start=1, foreign=False))
def test_no_replay_brings_erased_content_back(data, history):
    history = [(event(appended("hello")), at(0)), *history]
    end = history[-1][1].offset
    history.append((event(UserErased()), at(end + 1)))
    erased, _ = fold(None, history)
    resent = data.draw(st.lists(st.sampled_from(history), max_size=30))
    view, _ = fold(erased, resent)
    assert view == erased
    assert view is not None
    assert view.status is SessionStatus.ERASED
    assert (view.messages, view.summary, view.title) == ((), None, None)


def test_a_summary_of_erased_turns_published_after_the_erasure_does_not_restore_them():
    # The summarizer read turns 0-3 before the erasure and published after it.
    view = folded(*chat(4), UserErased(), summary(3, "alice's card is 4111"))
    assert view.status is SessionStatus.ERASED
    assert view.summary is None


def test_a_message_after_an_erasure_starts_from_an_empty_session():
    view = folded(*chat(3), UserErased(), appended("new start"))
    assert view.status is SessionStatus.OPEN
    assert contents(view.messages) == ["new start"]
    assert view.summary is None


def test_a_new_title_replaces_the_old_one_and_a_start_without_title_keeps_it():
    assert folded(SessionStarted(title="a"), SessionStarted(title="b")).title == "b"
    assert folded(SessionStarted(title="a"), SessionStarted()).title == "a"


def test_foreign_event_is_an_invalid_event_and_a_value_error():
    assert issubclass(ForeignEvent, InvalidEvent)
    assert issubclass(ForeignEvent, ValueError)


@pytest.mark.parametrize("payload", [appended("hijack"), UserErased(), SessionClosed()])
def test_an_event_from_another_user_is_refused_naming_the_session(payload):
    view = folded(*chat(2))
    with pytest.raises(ForeignEvent, match=f"^session {SESSION} belongs to another user") as err:
        evolve(view, event(payload, user=INTRUDER), at(5))
    assert INTRUDER in str(err.value)
    assert err.value.context == {"session_id": SESSION, "partition": PARTITION, "offset": 5}


def test_fold_returns_events_from_another_user_as_refused_and_keeps_the_view():
    own = log(*chat(2))
    hijack = (event(appended("hijack"), user=INTRUDER), at(2))
    view, refused = fold(None, [*own, hijack])
    assert view == folded(*chat(2))
    assert [(e, p) for e, p, _ in refused] == [hijack]
    assert isinstance(refused[0][2], ForeignEvent)


def test_own_events_after_a_refused_one_still_apply():
    history = [*log(*chat(2)), (event(appended("hijack"), user=INTRUDER), at(2))]
    history.append((event(appended("mine")), at(3)))
    view, refused = fold(None, history)
    assert view is not None
    assert len(refused) == 1
    assert contents(view.messages) == ["turn 0", "turn 1", "mine"]
    assert view.last_offset == 3


@pytest.mark.parametrize("offset", [1, 2, 9], ids=["replayed", "next", "later"])
def test_an_event_for_the_session_on_another_partition_is_refused(offset):
    view = folded(*chat(2))
    with pytest.raises(ForeignEvent, match=f"^session {SESSION} lives on partition {PARTITION}"):
        evolve(view, event(appended("misrouted")), at(offset, OTHER_PARTITION))


def test_an_old_event_from_another_user_is_ignored_like_any_replay():
    view = folded(*chat(3))
    assert evolve(view, event(appended("hijack"), user=INTRUDER), at(1)) is view


@given(
    owners=st.lists(st.integers(0, 3), max_size=60),
    window=st.integers(1, 6),
    max_overflow=st.integers(0, 6),
)
def test_sessions_interleaved_on_one_partition_keep_only_their_own_messages(
    owners, window, max_overflow
):
    policy = WindowPolicy(window=window, max_overflow=max_overflow)
    history = [
        (event(appended(f"{n}@{offset}"), session=f"s-{n}", user=f"user-{n}"), at(offset))
        for offset, n in enumerate(owners)
    ]
    for n in set(owners):
        own = [(e, p) for e, p in history if e.session_id == f"s-{n}"]
        view, refused = fold(None, own, policy)
        assert view is not None
        assert refused == []
        assert (view.session_id, view.user_id) == (f"s-{n}", f"user-{n}")
        sent = [e.payload.content for e, _ in own]
        assert contents(view.messages) == sent[-(window + max_overflow) :]
        offsets = [m.offset for m in view.messages]
        assert offsets == sorted(set(offsets))


def test_the_position_is_the_partition_and_the_last_applied_offset():
    view = None
    for offset, payload in zip([0, 4, 5, 11], [*chat(2), summary(0), SessionClosed()], strict=True):
        view = evolve(view, event(payload), at(offset))
        assert view is not None
        assert view.position == Position(PARTITION, offset)
    after_refusal, _ = fold(view, [(event(appended("hijack"), user=INTRUDER), at(12))])
    assert after_refusal is not None
    assert after_refusal.position == Position(PARTITION, 11)


@pytest.mark.parametrize(
    ("window", "max_overflow", "message"),
    [
        (0, 0, "window must be at least 1, got 0"),
        (-1, 5, "window must be at least 1, got -1"),
        (1, -1, "max_overflow must be at least 0, got -1"),
    ],
)
def test_window_policy_refuses_an_empty_window_or_a_negative_overflow(
    window, max_overflow, message
):
    with pytest.raises(ValueError, match=f"^{message}$"):
        WindowPolicy(window=window, max_overflow=max_overflow)


def test_the_smallest_window_policy_is_allowed():
    assert WindowPolicy(window=1, max_overflow=0) == WindowPolicy(1, 0)


def test_importing_the_view_loads_no_network_library():
    # A fresh interpreter: this process has imported the adapters through conftest.
    libraries = ("confluent_kafka", "redis", "openai", "faust", "aiokafka")
    code = (
        "import sys, chatlog.projections.view; "
        f"print(','.join(m for m in {libraries!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    ).stdout.strip()
    assert loaded == ""


@pytest.mark.parametrize(
    ("session", "tenant"), [("s-other", "default"), (SESSION, "acme")], ids=["session", "tenant"]
)
def test_an_event_of_another_session_or_tenant_is_refused(session, tenant):
    before = folded(*chat(2))
    stray = event(appended("stray"), session=session, tenant=tenant)
    with pytest.raises(ForeignEvent, match=f"cannot change session {SESSION}"):
        evolve(before, stray, at(5))


def test_erasure_resets_the_counts_so_a_return_starts_fresh():
    view = folded(*chat(25), UserErased(), appended("I am back", message_id="m-back"))
    assert view.status is SessionStatus.OPEN
    assert (view.message_count, view.overflow_dropped) == (1, 0)
    assert contents(view.messages) == ["I am back"]


def test_a_retried_append_with_the_same_message_id_is_kept_once():
    view = folded(appended("hello", message_id="m-1"), appended("hello", message_id="m-1"))
    assert contents(view.messages) == ["hello"]
    assert view.message_count == 1
    assert view.last_offset == 1


@settings(max_examples=400)
@given(
    data=st.data(),
    history=histories(kinds=append_heavy),
    window=st.integers(1, 4),
    max_overflow=st.integers(0, 4),
)
def test_fold_gives_exactly_what_evolve_gives_event_by_event(data, history, window, max_overflow):
    policy = WindowPolicy(window=window, max_overflow=max_overflow)
    resent = data.draw(st.lists(st.sampled_from(history), max_size=8)) if history else []
    start = data.draw(st.sampled_from([None, *[view for view, _ in [fold(None, history[:3])]]]))
    log = history + resent
    expected, refused = start, []
    for item, position in log:
        try:
            expected = evolve(expected, item, position, policy)
        except ForeignEvent:
            refused.append((item, position))
    view, refused_by_fold = fold(start, log, policy)
    assert view == expected
    assert [(item, position) for item, position, _ in refused_by_fold] == refused


def test_a_close_is_remembered_after_a_later_message_reopens_the_session():
    view = folded(appended("before", message_id="m0"), SessionClosed(), appended("after"))
    assert view.status is SessionStatus.OPEN
    assert view.closed_through == 1
    assert [m.offset for m in view.messages if m.offset > view.closed_through] == [2]


# ---------------------------------------------------------------- redactions reach summaries

TWO = WindowPolicy(window=2, max_overflow=10)


def summarized_six(**fields: object) -> SessionView:
    """Six turns (offsets 0-5) with window 2, and at 6 a summary of turns 0-3."""
    return folded(*chat(6), summary(3, "m1 said canary-7Q2X", **fields), policy=TWO)


def redacting(view: SessionView, message_id: str, offset: int) -> SessionView:
    after = evolve(view, event(MessageRedacted(message_id=message_id)), at(offset), TWO)
    assert after is not None
    return after


def test_redacting_a_message_the_summary_covers_withholds_the_summary():
    before = summarized_six()
    after = redacting(before, "m1", 7)  # m1 (offset 1) is in the summary, gone from the view
    assert (after.summary, after.summary_sealed, after.summary_withheld) == (None, None, True)
    # Its coverage stays: the covered turns are not put back, nor asked for again.
    assert (after.summary_through, after.summary_covered) == (3, before.summary_covered)
    assert after.messages == before.messages
    assert after.redacted_at == 7


def test_redacting_a_message_no_longer_in_the_view_withholds_any_summary():
    # Its offset is unknown once it left the view: any summary may hold it.
    after = redacting(summarized_six(), "m-never-seen", 7)
    assert after.summary is None
    assert after.summary_withheld


def test_redacting_a_window_message_leaves_the_summary_alone():
    before = summarized_six()
    after = redacting(before, "m5", 7)
    assert after.messages[-1].redacted
    assert (after.summary, after.summary_withheld, after.redacted_at) == (before.summary, False, -1)


def test_redacting_an_overflow_message_no_summary_covers_keeps_the_summary_but_marks_the_race():
    seven = folded(*chat(7), summary(1, "turns 0-1"), policy=TWO)  # overflow 2, 3, 4
    after = redacting(seven, "m3", 8)
    assert [m.redacted for m in after.messages] == [False, True, False, False, False]
    assert (after.summary, after.summary_withheld) == ("turns 0-1", False)
    assert after.redacted_at == 8  # a summary in flight may have read m3


def test_a_summary_computed_before_a_redaction_and_published_after_it_is_withheld():
    # Overflow 0-3; the summarizer reads it at offset 5; m2 is redacted at 6; the summary
    # of turns 0-3 it computed from m2's text lands at 7.
    view = redacting(folded(*chat(6), policy=TWO), "m2", 6)
    raced = evolve(view, event(summary(3, "m2 said canary", redactions_through=5)), at(7), TWO)
    assert raced is not None
    assert (raced.summary, raced.summary_withheld, raced.summary_through) == (None, True, 3)
    assert [m.offset for m in raced.messages] == [4, 5]  # its coverage is taken all the same


@pytest.mark.parametrize("seen", [6, 7])
def test_a_summary_that_saw_the_redaction_is_served(seen):
    view = redacting(folded(*chat(6), policy=TWO), "m2", 6)
    clean = evolve(view, event(summary(3, "clean", redactions_through=seen)), at(7), TWO)
    assert clean is not None
    assert (clean.summary, clean.summary_withheld) == ("clean", False)


def test_a_summary_from_before_redactions_existed_is_withheld_only_after_one():
    # -1 claims nothing: fine while the session has no such redaction (old logs replay
    # as before), withheld once it has.
    assert summarized_six().summary_withheld is False
    view = redacting(folded(*chat(6), policy=TWO), "m2", 6)
    after = evolve(view, event(summary(3, "old")), at(7), TWO)
    assert after is not None
    assert after.summary_withheld


def test_a_clean_rebuild_with_the_same_coverage_lifts_the_withholding():
    withheld = redacting(summarized_six(), "m1", 7)
    rebuilt = evolve(withheld, event(summary(3, "rebuilt", redactions_through=7)), at(8), TWO)
    assert rebuilt is not None
    assert (rebuilt.summary, rebuilt.summary_withheld, rebuilt.summary_through) == (
        "rebuilt",
        False,
        3,
    )
    assert rebuilt.messages == withheld.messages
    # Once lifted, the same coverage again is a duplicate, as before.
    again = evolve(rebuilt, event(summary(3, "dup", redactions_through=9)), at(9), TWO)
    assert again is not None
    assert again.summary == "rebuilt"


def test_a_rebuild_that_missed_a_later_redaction_keeps_the_summary_withheld():
    withheld = redacting(redacting(summarized_six(), "m1", 7), "m0", 8)
    stale = evolve(withheld, event(summary(3, "has m0", redactions_through=7)), at(9), TWO)
    assert stale is not None
    assert (stale.summary, stale.summary_withheld) == (None, True)


def test_redacting_in_an_erased_session_withholds_nothing():
    erased = folded(*chat(6), summary(3), UserErased(), policy=TWO)
    after = redacting(erased, "m1", 8)
    assert (after.summary_withheld, after.redacted_at) == (False, -1)


def test_redact_is_the_rule_evolve_applies():
    before = summarized_six()
    by_event = redacting(before, "m1", 7)
    assert redact(before, "m1", 7, TWO) == replace(
        by_event, last_offset=before.last_offset, updated_at_ms=before.updated_at_ms
    )


@given(history=histories(foreign=False))
def test_a_withheld_summary_has_no_text_in_the_view(history):
    view, _ = fold(None, history)
    if view is not None and view.summary_withheld:
        assert (view.summary, view.summary_sealed) == (None, None)
