"""Id rules: what is accepted, what is refused, and that the refusal names the problem."""

from __future__ import annotations

import uuid

import pytest

from chatlog.schemas.errors import InvalidId, InvalidInput
from chatlog.schemas.ids import MAX_ID_LENGTH, new_id, validate_id


@pytest.mark.parametrize(
    "value",
    # A random value gets an id: every xdist worker must collect the same test names.
    [
        "s1",
        "user@example.com",
        "a.b-c_d",
        "0",
        "x" * MAX_ID_LENGTH,
        pytest.param(str(uuid.uuid4()), id="uuid4"),
    ],
)
def test_valid_ids_pass_unchanged(value):
    assert validate_id(value, field="session_id") == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a:b", "contains ':' (U+003A) at position 1"),
        ("{x}", "contains '{' (U+007B) at position 0"),
        ("*", "contains '*' (U+002A) at position 0"),
        ("", "session_id is empty"),
        ("x" * 10_240, "10240 characters long; the limit is 128"),
        ("ab\x00", "contains '\\x00' (U+0000) at position 2"),
        ("a\nb", "contains '\\n' (U+000A) at position 1"),
        ("a\x1bb", "contains '\\x1b' (U+001B)"),
        ("a b", "contains ' ' (U+0020)"),
        ("a?", "contains '?'"),
        ("ß", "contains 'ß' (U+00DF)"),
        (42, "must be a string, got int"),
    ],
)
def test_bad_ids_are_refused_with_the_problem_named(value, expected):
    with pytest.raises(InvalidId) as caught:
        validate_id(value, field="session_id")
    assert expected in str(caught.value)
    assert "session_id" in str(caught.value)
    assert caught.value.context["field"] == "session_id"


def test_invalid_id_is_also_a_value_error():
    assert issubclass(InvalidId, ValueError)
    assert issubclass(InvalidId, InvalidInput)


def test_new_id_is_a_valid_uuid4():
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100
    for value in ids:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == value  # the canonical form: lower-case, grouped 8-4-4-4-12
        assert validate_id(value) == value
