"""The Redis layout of a view: every message round-trips; every delta rebuilds the list."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from chatlog.projections.encoding import (
    decode_message,
    decode_view,
    diff,
    encode_message,
    encode_meta,
    loads,
)
from chatlog.projections.view import Message, SessionView, WindowPolicy, evolve
from chatlog.schemas.events import MessageRedacted, SummaryUpdated, ToolCall
from chatlog.schemas.position import Position
from tests.contracts import event, message

messages = st.builds(
    Message,
    offset=st.integers(0, 2**40),
    message_id=st.text("abc123-", min_size=1, max_size=8),
    role=st.sampled_from(["system", "user", "assistant", "tool"]),
    content=st.text(max_size=50),
    occurred_at_ms=st.integers(0, 2**42),
    name=st.none() | st.text(max_size=5),
    tool_calls=st.lists(
        st.builds(ToolCall, id=st.text(max_size=4), name=st.text(max_size=4)), max_size=2
    ).map(tuple),
    tool_call_id=st.none() | st.text(max_size=4),
    metadata=st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    redacted=st.booleans(),
)


@given(messages)
def test_a_message_round_trips(message_value):
    assert decode_message(encode_message(message_value)) == message_value


@given(messages)
def test_a_message_round_trips_from_the_bytes_redis_returns(message_value):
    # Lone surrogates (st.text makes them) are what orjson refuses: json.loads reads them.
    stored = encode_message(message_value).encode("utf-8", "surrogatepass")
    assert decode_message(stored) == message_value


def test_what_orjson_refuses_still_parses_as_json_loads_parses_it():
    for stored in ('{"c":"\\ud800"}', b'{"c":NaN}', b'{"c":1e400}'):
        assert repr(loads(stored)) == repr(json.loads(stored))


def _apply(stored: list[str], delta) -> list[str]:
    """What the Lua script does to the list, in Python."""
    if delta.replace_all is not None:
        return list(delta.replace_all)
    rest = stored[delta.trim_left :]
    for index, doc in delta.overwrite:
        rest[index] = doc
    return rest + list(delta.append)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 3)),
        st.tuples(st.just("redact"), st.integers(0, 30)),
        st.tuples(st.just("summary"), st.integers(0, 30)),
    ),
    max_size=40,
)


@given(ops, st.integers(1, 4), st.integers(0, 4))
def test_any_sequence_of_evolutions_is_rebuilt_by_its_deltas(operations, window, overflow):
    policy = WindowPolicy(window=window, max_overflow=overflow)
    view: SessionView | None = None
    stored: list[str] = []
    for offset, (op, n) in enumerate(operations):
        if op == "append":
            payload = message(f"t{offset}", message_id=f"m{offset}")
        elif op == "redact":
            payload = MessageRedacted(message_id=f"m{n}")
        else:
            payload = SummaryUpdated(summary=f"s{offset}", through_offset=n, model="m")
        new = evolve(view, event("s", payload, seconds=offset), Position(0, offset), policy)
        if new is None:
            continue
        delta = diff(view.messages if view else (), new.messages)
        stored = _apply(stored, delta)
        assert stored == [encode_message(m) for m in new.messages]
        assert delta.replace_all is None  # evolve only ever trims, overwrites and appends
        meta = encode_meta(new, window=window)
        assert decode_view(meta, stored) == new
        view = new
