"""The integrations' pure parts: LangChain message mapping, paging, the position book."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)

from chatlog.integrations.conversations import LogPage, Page, UnknownMessage, page_of
from chatlog.integrations.langchain_messages import (
    CLEARED_KEY,
    FIELDS_KEY,
    cleared_through,
    from_chatlog,
    is_summary,
    summary_message,
    to_chatlog,
)
from chatlog.integrations.positions import PositionBook
from chatlog.producers.commands import (
    LANGCHAIN_METADATA,
    append_message,
    append_owned_message,
    new_event,
)
from chatlog.projections.context import SUMMARY_PREAMBLE, render_summary
from chatlog.projections.encoding import decode_message, encode_message
from chatlog.projections.view import Message
from chatlog.schemas.errors import InvalidInput
from chatlog.schemas.events import MessageRedacted, Role, SessionClosed, ToolCall, UserErased
from chatlog.schemas.position import Position


def stored(message: BaseMessage, *, cleared: int = -1, offset: int = 7) -> Message:
    """`message` as the read-model holds it: the event's fields, through Redis's encoding."""
    fields = to_chatlog(message, cleared_through=cleared)
    event = append_owned_message(
        LANGCHAIN_METADATA,
        "s1",
        user_id="u1",
        role=fields.role,
        content=fields.content,
        name=fields.name,
        tool_calls=fields.tool_calls,
        tool_call_id=fields.tool_call_id,
        metadata=fields.metadata,
        message_id=fields.message_id,
    )
    payload = event.payload
    as_view = Message(
        offset=offset,
        message_id=payload.message_id,
        role=payload.role.value,
        content=payload.content,
        occurred_at_ms=1,
        name=payload.name,
        tool_calls=payload.tool_calls,
        tool_call_id=payload.tool_call_id,
        metadata=payload.metadata,
    )
    return decode_message(encode_message(as_view))


ROUND_TRIPS = [
    HumanMessage("hi"),
    HumanMessage("hi", id="m-1", name="alice", additional_kwargs={"lang": "en"}),
    HumanMessage("an id chatlog refuses", id="run:1/2"),
    HumanMessage(
        [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]
    ),
    AIMessage(
        "calling",
        id="run-1",
        tool_calls=[{"name": "lookup", "args": {"order": 7731, "deep": [1, 2]}, "id": "c1"}],
        usage_metadata={"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
        response_metadata={"model_name": "m", "finish_reason": "tool_calls"},
        additional_kwargs={"refusal": None},
    ),
    AIMessage("no call id", tool_calls=[{"name": "f", "args": {}, "id": None}]),
    AIMessage(
        "",
        invalid_tool_calls=[
            {"name": "f", "args": "{oops", "id": "c2", "error": "bad", "type": "invalid_tool_call"}
        ],
    ),
    SystemMessage("be brief", id="sys"),
    ToolMessage("7731 shipped", tool_call_id="c1", artifact={"rows": 1}, status="error"),
    ChatMessage("a critic speaks", role="critic"),
    ChatMessage("as assistant", role="assistant"),
    FunctionMessage("42", name="answer"),
    AIMessageChunk("streamed", id="chunk-1"),
]


@pytest.mark.parametrize("message", ROUND_TRIPS, ids=lambda m: type(m).__name__)
def test_a_langchain_message_round_trips_without_loss(message):
    back = from_chatlog(stored(message))
    assert back == message
    assert type(back) is type(message)


def test_native_fields_carry_what_chatlog_understands():
    ai = AIMessage("x", id="run-9", tool_calls=[{"name": "f", "args": {"a": "é"}, "id": "c"}])
    fields = to_chatlog(ai)
    assert fields.role is Role.ASSISTANT
    assert fields.message_id == "run-9"  # a retry of the same message is stored once
    assert fields.tool_calls == (ToolCall(id="c", name="f", arguments='{"a": "é"}'),)
    assert fields.metadata == {}  # nothing beyond the native fields
    tool = to_chatlog(ToolMessage("r", tool_call_id="c"))
    assert (tool.role, tool.tool_call_id) == (Role.TOOL, "c")
    assert to_chatlog(ChatMessage("d", role="developer")).role is Role.SYSTEM
    assert to_chatlog(HumanMessage([{"type": "text", "text": "a"}, "b"])).content == "ab"


def test_an_id_chatlog_refuses_is_replaced_and_kept_aside():
    fields = to_chatlog(HumanMessage("x", id="has:colon"))
    assert fields.message_id != "has:colon"
    assert json.loads(fields.metadata[FIELDS_KEY]) == {"id": "has:colon"}


def test_what_cannot_be_stored_is_refused_before_anything_is_sent():
    with pytest.raises(InvalidInput, match="RemoveMessage"):
        to_chatlog(RemoveMessage(id="m1"))
    with pytest.raises(InvalidInput, match="not JSON"):
        to_chatlog(ToolMessage("r", tool_call_id="c", artifact=object()))


def test_messages_of_other_clients_show_their_metadata_and_redaction():
    plain = Message(
        offset=1,
        message_id="m1",
        role="assistant",
        content="[redacted]",
        occurred_at_ms=1,
        tool_calls=(ToolCall(id="c", name="f", arguments="not json"),),
        metadata={"channel": "web"},
        redacted=True,
    )
    message = from_chatlog(plain)
    assert isinstance(message, AIMessage)
    assert message.response_metadata == {
        "chatlog_metadata": {"channel": "web"},
        "chatlog_redacted": True,
    }
    assert message.tool_calls == []
    assert message.invalid_tool_calls[0]["args"] == "not json"


def test_a_corrupt_fields_entry_falls_back_to_the_native_fields():
    message = Message(
        offset=1, message_id="m1", role="user", content="hi", occurred_at_ms=1,
        metadata={FIELDS_KEY: "{not json"},
    )  # fmt: skip
    assert from_chatlog(message) == HumanMessage("hi", id="m1")


def test_the_clear_mark_travels_in_metadata_and_stays_out_of_langchain():
    message = stored(HumanMessage("after the clear", id="m2"), cleared=41, offset=50)
    assert message.metadata[CLEARED_KEY] == "41"
    assert cleared_through(message) == 41
    assert cleared_through(stored(HumanMessage("x"))) == -1
    assert from_chatlog(message) == HumanMessage("after the clear", id="m2")


def test_the_summary_message_is_marked_and_recognised():
    summary = summary_message("they talked about order 7731", through_offset=12)
    assert is_summary(summary)
    # By default quoted data with no system authority, exactly as to_openai renders it.
    assert type(summary) is HumanMessage
    assert summary.content == render_summary("they talked about order 7731")["content"]
    old = summary_message("they talked about order 7731", through_offset=12, role="system")
    assert type(old) is SystemMessage
    assert is_summary(old)
    assert old.content == SUMMARY_PREAMBLE + "they talked about order 7731"
    assert not is_summary(SystemMessage("a real system message"))
    assert not is_summary(HumanMessage("a real user message"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
ids = st.none() | st.from_regex(r"[A-Za-z0-9_.@-]{1,20}", fullmatch=True) | st.text(max_size=10)
contents = st.text(max_size=20) | st.lists(
    st.text(max_size=5) | st.fixed_dictionaries({"type": st.just("text"), "text": st.text()}),
    max_size=3,
)
extras = st.dictionaries(st.text(min_size=1, max_size=6), json_values, max_size=3)


@st.composite
def langchain_messages(draw):
    common = {
        "content": draw(contents),
        "id": draw(ids),
        "name": draw(st.none() | st.text(max_size=6)),
        "additional_kwargs": draw(extras),
        "response_metadata": draw(extras),
    }
    kind = draw(st.sampled_from(["human", "ai", "system", "tool", "chat"]))
    if kind == "human":
        return HumanMessage(**common)
    if kind == "system":
        return SystemMessage(**common)
    if kind == "tool":
        return ToolMessage(tool_call_id=draw(st.text(max_size=6)), **common)
    if kind == "chat":
        return ChatMessage(role=draw(st.sampled_from(["user", "critic", "tool"])), **common)
    calls = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.text(min_size=1, max_size=5),
                    "args": st.dictionaries(st.text(max_size=4), json_values, max_size=3),
                    "id": st.none() | st.text(max_size=6),
                }
            ),
            max_size=2,
        )
    )
    return AIMessage(tool_calls=calls, **common)


@given(langchain_messages())
def test_any_langchain_message_with_json_fields_round_trips(message):
    assert from_chatlog(stored(message)) == message


# -- paging ---------------------------------------------------------------------------


def msg(n: int) -> Message:
    return Message(offset=n, message_id=f"m{n}", role="user", content=f"c{n}", occurred_at_ms=n)


def reference(messages: list[Message], page: Page) -> list[Message]:
    """The paging rules, written the obvious way over every message."""
    ids = [m.message_id for m in messages]
    for cursor in (page.after, page.before):
        if cursor is not None and cursor not in ids:
            raise UnknownMessage(cursor)
    if page.after is not None:
        start = ids.index(page.after) + 1
        end = ids.index(page.before) if page.before is not None else len(messages)
        return messages[start:end][: page.limit] if end > start else []
    end = ids.index(page.before) if page.before is not None else len(messages)
    head = messages[:end]
    return head[-page.limit :] if page.limit is not None else head


pages = st.builds(
    Page,
    limit=st.none() | st.integers(1, 12),
    before=st.none() | st.sampled_from([f"m{n}" for n in range(-1, 12)]),
    after=st.none() | st.sampled_from([f"m{n}" for n in range(-1, 12)]),
)


def fold(events, page: Page, *, window: int = 3) -> LogPage:
    log = LogPage("s1", page, window=window)
    for offset, event in enumerate(events):
        log.take(event, offset)
    return log


def appended(n: int, *, user: str = "u1", message_id: str | None = None, session: str = "s1"):
    return append_message(
        session, user_id=user, role="user", content=f"c{n}", message_id=message_id or f"m{n}"
    )


@given(st.integers(0, 10), pages, st.integers(0, 10))
def test_a_page_from_recent_messages_is_the_page_of_all_or_none(total, page, held):
    messages = [msg(n) for n in range(total)]
    recent = messages[max(0, total - held) :]
    try:
        expected = reference(messages, page)
    except UnknownMessage:
        expected = None
    if expected is None:
        with pytest.raises(UnknownMessage):
            page_of(messages, page, complete=True, session_id="s1")
        return
    assert page_of(messages, page, complete=True, session_id="s1") == expected
    answer = page_of(recent, page, complete=len(recent) == total, session_id="s1")
    assert answer is None or answer == expected


@given(st.integers(0, 10), pages)
def test_a_page_folded_from_the_log_is_the_page_of_all(total, page):
    events = [appended(n) for n in range(total)]
    log = fold(events, page)
    try:
        expected = reference([msg(n) for n in range(total)], page)
    except UnknownMessage:
        with pytest.raises(UnknownMessage):
            log.result()
        return
    got = log.result()
    assert [(m.message_id, m.offset, m.content) for m in got] == [
        (m.message_id, m.offset, m.content) for m in expected
    ]


def test_the_log_fold_follows_the_projector_rules():
    events = [
        appended(0),
        appended(1),
        appended(1, message_id="m0"),  # a retry within the window: not a message
        appended(2, user="mallory"),  # not the owner: dead-lettered
        appended(3, session="other"),  # another session's record
        new_event("s1", user_id="u1", payload=MessageRedacted(message_id="m1")),
        appended(4),
    ]
    got = fold(events, Page(limit=None)).result()
    assert [(m.message_id, m.content, m.redacted) for m in got] == [
        ("m0", "c0", False),
        ("m1", "[redacted]", True),
        ("m4", "c4", False),
    ]
    # Beyond the window, an old id is a new message (the projector only looks there).
    late = [appended(n) for n in range(5)] + [appended(9, message_id="m0")]
    assert len(fold(late, Page(limit=None), window=3).result()) == 6


def test_an_erasure_forgets_what_came_before_it_in_the_log():
    events = [
        appended(0),
        new_event("s1", user_id="u1", payload=UserErased()),
        appended(1),
    ]
    assert [m.message_id for m in fold(events, Page(limit=None)).result()] == ["m1"]
    with pytest.raises(UnknownMessage):
        fold(events, Page(after="m0")).result()


def test_a_session_is_owned_by_its_first_creating_event():
    events = [
        new_event("s1", user_id="mallory", payload=SessionClosed()),  # starts nothing
        appended(0),
    ]
    log = fold(events, Page(limit=None))
    assert log.owner == ("u1", "default")
    assert [m.message_id for m in log.result()] == ["m0"]


def test_a_page_limit_below_one_is_refused():
    with pytest.raises(InvalidInput, match="limit"):
        Page(limit=0)
    with pytest.raises(InvalidInput, match="before"):
        Page(before="bad id")


# -- the position book ----------------------------------------------------------------


def test_the_book_keeps_the_newest_position_and_forgets_the_least_recently_used():
    book = PositionBook(max_sessions=2)
    key = ("t", "s1")
    assert book.note(key, Position(3, 10)) == Position(3, 10)
    assert book.note(key, Position(3, 4)) == Position(3, 10)  # never moves back
    assert book.note(key, None) == Position(3, 10)
    book.note(("t", "s2"), Position(0, 1))
    book.get(key)  # used: s2 is now the least recently used
    book.note(("t", "s3"), Position(0, 2))
    assert book.get(("t", "s2")) is None
    assert book.get(key) == Position(3, 10)
    assert len(book) == 2


def test_chatlog_imports_without_langchain():
    code = (
        "import sys; sys.modules['langchain_core'] = None; "
        "import chatlog, chatlog.integrations, chatlog.integrations.store; "
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr
