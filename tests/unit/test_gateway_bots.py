"""The stand-in bots of the development chat page, and `chatlog serve`'s dev-mode refusals."""

from __future__ import annotations

import pytest

from chatlog.cli import main
from chatlog.cli import serve as serve_command
from chatlog.gateway.bots import BOTS, EchoBot, reply_id
from chatlog.projections.context import Context
from chatlog.projections.view import Message, SessionStatus
from chatlog.schemas.ids import validate_id
from chatlog.schemas.position import Position


def context(*contents: str, count: int | None = None) -> Context:
    messages = tuple(
        Message(offset=i, message_id=f"m{i}", role="user", content=c, occurred_at_ms=i)
        for i, c in enumerate(contents)
    )
    return Context(
        session_id="s1",
        user_id="alice",
        title=None,
        status=SessionStatus.OPEN,
        summary=None,
        summary_through=-1,
        messages=messages,
        window_size=20,
        position=Position(0, len(messages)),
        message_count=len(messages) if count is None else count,
        updated_at_ms=0,
    )


def test_the_echo_bot_says_back_the_message_it_answers_and_counts_the_turns():
    ctx = context("hello", "where is order 7731?", count=7)
    assert EchoBot().reply(ctx, "m1") == "You said: where is order 7731? (turn 7 of this chat)"
    assert EchoBot().reply(ctx, "m0").startswith("You said: hello ")


def test_the_echo_bot_shortens_a_long_message():
    reply = EchoBot().reply(context("x" * 5000), "m0")
    assert len(reply) < 300
    assert "x" * 200 + "…" in reply


def test_a_reply_id_is_a_valid_id_derived_from_the_message_id():
    longest = "m" * 128
    assert validate_id(reply_id(longest)) == reply_id(longest)
    assert reply_id("a") == reply_id("a") != reply_id("b")


def test_the_cli_knows_every_bot_by_its_name():
    # The CLI lists them without importing the server extra.
    assert set(serve_command._BOT_NAMES) == set(BOTS)
    assert all(BOTS[name]().name == name for name in BOTS)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["serve", "--bot", "echo"], "add --dev"),
        (["serve", "--dev", "--host", "0.0.0.0"], "loopback address only"),
    ],
)
def test_dev_mode_is_refused_where_it_would_be_a_hole(argv, named, monkeypatch, capsys):
    monkeypatch.setenv("CHATLOG_AUTH_SECRET", "s" * 40)
    assert main(argv) == 1
    assert named in capsys.readouterr().err
