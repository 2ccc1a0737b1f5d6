"""Rendering a context for the OpenAI chat API, within a token budget."""

from __future__ import annotations

import dataclasses

from chatlog.projections.context import SUMMARY_PREAMBLE, Context, approx_tokens
from chatlog.projections.view import Message, SessionStatus
from chatlog.schemas.events import ToolCall
from chatlog.schemas.position import Position


def m(offset: int, role: str = "user", content: str = "x" * 40, **fields) -> Message:
    return Message(offset, f"m{offset}", role, content, offset * 1000, **fields)


def ctx(messages, *, summary=None, window=3) -> Context:
    return Context(
        session_id="s",
        user_id="u",
        title=None,
        status=SessionStatus.OPEN,
        summary=summary,
        summary_through=-1,
        messages=tuple(messages),
        window_size=window,
        position=Position(0, messages[-1].offset if messages else 0),
        message_count=len(messages),
        updated_at_ms=0,
    )


def test_system_then_summary_then_turns():
    rendered = ctx([m(1), m(2, "assistant")], summary="order 7731 shipped").to_openai(
        system="Be brief."
    )
    assert rendered[0] == {"role": "system", "content": "Be brief."}
    assert rendered[1]["role"] == "system"
    assert rendered[1]["content"] == SUMMARY_PREAMBLE + "order 7731 shipped"
    assert "not instructions" in rendered[1]["content"]
    assert [r["role"] for r in rendered[2:]] == ["user", "assistant"]


def test_window_is_the_last_window_size_messages():
    context = ctx([m(i) for i in range(10)], window=3)
    assert [x.offset for x in context.window] == [7, 8, 9]


def test_trimming_drops_the_oldest_turns_first():
    turns = [m(i, content=f"{i:02d}" + "x" * 38) for i in range(10)]  # 10 tokens + 4 each
    rendered = ctx(turns).to_openai(max_tokens=14 * 3)
    assert [r["content"][:2] for r in rendered] == ["07", "08", "09"]


def test_the_newest_turn_is_kept_even_over_budget():
    rendered = ctx([m(1), m(2, content="y" * 4000)]).to_openai(max_tokens=10)
    assert [r["content"][0] for r in rendered] == ["y"]


def test_a_tool_result_never_starts_the_turns():
    turns = [
        m(1, "user"),
        m(2, "assistant", content="", tool_calls=(ToolCall(id="c", name="f", arguments="{}"),)),
        m(3, "tool", content="r" * 40, tool_call_id="c"),
        m(4, "assistant"),
    ]
    budget = 2 * 14  # room for the last two turns only: the tool result and the answer
    rendered = ctx(turns).to_openai(max_tokens=budget)
    assert [r["role"] for r in rendered] == ["assistant"]
    full = ctx(turns).to_openai()
    assert full[1]["tool_calls"] == [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    assert full[2]["tool_call_id"] == "c"


def test_the_budget_counts_the_system_prompt_and_summary():
    turns = [m(i) for i in range(5)]
    without = ctx(turns).to_openai(max_tokens=40)
    with_summary = ctx(turns, summary="s" * 80).to_openai(max_tokens=40)
    assert len(with_summary) - 1 < len(without)


def test_approx_tokens_is_about_four_characters_a_token():
    assert approx_tokens("") == 0
    assert approx_tokens("abcd") == 1
    assert approx_tokens("abcde") == 2


def test_the_token_counter_decides_what_fits():
    turns = [m(i, content=f"{i:02d}" + "x" * 38) for i in range(10)]
    by_approx = ctx(turns).to_openai(max_tokens=88)  # 14 a turn: six fit
    by_characters = ctx(turns).to_openai(max_tokens=88, count_tokens=len)  # 44 a turn: two
    assert [r["content"][:2] for r in by_approx] == ["04", "05", "06", "07", "08", "09"]
    assert [r["content"][:2] for r in by_characters] == ["08", "09"]


def test_a_context_counts_with_the_counter_its_reader_was_configured_with():
    turns = [m(i, content=f"{i:02d}" + "x" * 38) for i in range(10)]
    configured = dataclasses.replace(ctx(turns), count_tokens=len)
    assert [r["content"][:2] for r in configured.to_openai(max_tokens=88)] == ["08", "09"]
    # An explicit counter still wins.
    explicit = configured.to_openai(max_tokens=88, count_tokens=approx_tokens)
    assert len(explicit) == 6
