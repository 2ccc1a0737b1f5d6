"""`--as-of` values and the refusals of a point-in-time read that need no broker."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import pytest

from chatlog.cli import main
from chatlog.cli.read import as_of_argument, parse_as_of
from chatlog.processors.kafka_history import KafkaHistory, LogContext, describe
from chatlog.projections.context import Context
from chatlog.projections.view import SessionStatus
from chatlog.schemas.errors import InvalidId, InvalidInput
from chatlog.schemas.position import Position


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3:1042", Position(3, 1042)),
        ("0:0", Position(0, 0)),
        (" 2:7 ", Position(2, 7)),
        ("1748781000000", datetime(2025, 6, 1, 12, 30, tzinfo=UTC)),
        ("0", datetime(1970, 1, 1, tzinfo=UTC)),
        ("2025-06-01T12:30:00Z", datetime(2025, 6, 1, 12, 30, tzinfo=UTC)),
        ("2025-06-01T12:30:00.250+00:00", datetime(2025, 6, 1, 12, 30, 0, 250_000, tzinfo=UTC)),
        ("2025-06-01 12:30", datetime(2025, 6, 1, 12, 30, tzinfo=UTC)),
        ("2025-06-01", datetime(2025, 6, 1, tzinfo=UTC)),
    ],
)
def test_parse_as_of_reads_positions_epoch_millis_and_iso_times(text, expected):
    assert parse_as_of(text) == expected


def test_a_time_with_an_offset_keeps_it_and_a_naive_one_is_utc():
    parsed = parse_as_of("2025-06-01T14:30:00+02:00")
    assert isinstance(parsed, datetime)
    assert parsed.utcoffset() == timedelta(hours=2)
    assert parsed == datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
    naive = parse_as_of("2025-06-01T12:30:00")
    assert isinstance(naive, datetime)
    assert naive.tzinfo is UTC


@pytest.mark.parametrize(
    "text", ["", "banana", "3:", ":5", "3:x", "-1:5", "-5", "1.5", "99999999999999999999999"]
)
def test_parse_as_of_refuses_anything_else_naming_the_forms(text):
    with pytest.raises(InvalidInput) as raised:
        parse_as_of(text)
    message = raised.value.message
    assert "ISO 8601" in message
    assert "epoch milliseconds" in message
    assert "PARTITION:OFFSET" in message


def test_as_of_argument_turns_refusals_into_usage_errors():
    with pytest.raises(argparse.ArgumentTypeError, match="'x' is neither a time"):
        as_of_argument("x")


def test_as_of_and_after_together_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["context", "s-1", "--user", "u", "--after", "0:1", "--as-of", "0:1"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_malformed_as_of_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["context", "s-1", "--user", "u", "--as-of", "yesterday"])
    assert exited.value.code == 2
    assert "argument --as-of: 'yesterday' is neither a time" in capsys.readouterr().err


def _read(**overrides):
    arguments = {"user_id": "alice", "as_of": Position(0, 1)}
    # Nothing listens here; every refusal below comes before any connection.
    history = KafkaHistory(bootstrap_servers="127.0.0.1:1", topic="chatlog.events")
    return history.read(overrides.pop("session_id", "s-1"), **(arguments | overrides))


def test_a_naive_datetime_is_refused_before_any_connection():
    with pytest.raises(InvalidInput, match="has no timezone"):
        _read(as_of=datetime(2025, 6, 1, 12, 30))


def test_bad_ids_are_refused_before_any_connection():
    with pytest.raises(InvalidId):
        _read(session_id="no spaces allowed")
    with pytest.raises(InvalidId):
        _read(user_id="")


def test_describe_names_a_position_or_a_time_in_milliseconds():
    assert describe(Position(3, 17)) == "position 3:17"
    at = datetime(2025, 6, 1, 14, 30, 0, 123_456, tzinfo=timezone(timedelta(hours=2)))
    assert describe(at) == "2025-06-01T14:30:00.123+02:00"


def _log_context(start: int, end: int) -> LogContext:
    ctx = Context(
        session_id="s-1",
        user_id="alice",
        title=None,
        status=SessionStatus.OPEN,
        summary=None,
        summary_through=-1,
        messages=(),
        window_size=2,
        position=Position(1, 4),
        message_count=0,
        updated_at_ms=0,
    )
    return LogContext(ctx, Position(1, 4), "t", 1, start_offset=start, end_offset=end)


def test_log_context_through_is_the_last_offset_read_or_none():
    assert _log_context(0, 5).through == Position(1, 4)
    assert _log_context(3, 3).through is None
    assert _log_context(0, 0).through is None
