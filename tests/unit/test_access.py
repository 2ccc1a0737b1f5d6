"""The read rule (erased, then owner), which every read path calls."""

from __future__ import annotations

import pytest

from chatlog.projections.access import check_owner, may_read, readable, visible
from chatlog.projections.view import SessionStatus, SessionView
from chatlog.schemas.errors import OwnershipError, SessionNotFound


def view(*, user_id: str = "alice", status: SessionStatus = SessionStatus.OPEN) -> SessionView:
    return SessionView(
        session_id="s-1",
        user_id=user_id,
        tenant="default",
        partition=2,
        last_offset=9,
        created_at_ms=1,
        updated_at_ms=2,
        status=status,
    )


@pytest.mark.parametrize("status", [SessionStatus.OPEN, SessionStatus.CLOSED])
def test_the_owner_reads_an_open_or_closed_session(status):
    mine = view(status=status)
    assert readable(mine, user_id="alice") is mine
    assert may_read(mine, user_id="alice")


def test_no_view_is_left_to_the_caller():
    assert readable(None, user_id="alice") is None
    assert not may_read(None, user_id="alice")


def test_another_users_session_is_refused_with_who_asked():
    with pytest.raises(OwnershipError) as refused:
        readable(view(), user_id="bob")
    assert str(refused.value) == "session s-1 belongs to another user, not bob"
    assert refused.value.context == {"session_id": "s-1"}
    assert not may_read(view(), user_id="bob")


@pytest.mark.parametrize("user_id", ["alice", "bob"])
def test_an_erased_session_is_not_found_whoever_asks(user_id):
    # Erased first: a stranger learns no more than the owner, not even that it was owned.
    with pytest.raises(SessionNotFound) as missing:
        readable(view(status=SessionStatus.ERASED), user_id=user_id)
    assert str(missing.value) == "session s-1 was erased"
    assert missing.value.context == {"session_id": "s-1"}
    assert not may_read(view(status=SessionStatus.ERASED), user_id=user_id)


def test_a_read_of_the_past_says_as_of_when_it_was_erased():
    with pytest.raises(SessionNotFound, match=r"^session s-1 was erased as of position 2:9$"):
        readable(view(status=SessionStatus.ERASED), user_id="alice", as_of="position 2:9")


def test_the_ownership_half_alone_lets_the_owner_through():
    check_owner("alice", session_id="s-1", user_id="alice")
    with pytest.raises(OwnershipError, match=r"^session s-1 belongs to another user, not bob$"):
        check_owner("alice", session_id="s-1", user_id="bob")


def test_visible_hides_an_erased_session_from_everyone_and_refuses_another_user():
    rule = {"session_id": "s-1", "owner": "alice"}
    assert visible(**rule, erased=False, user_id="alice") is True
    assert visible(**rule, erased=True, user_id="alice") is False
    assert visible(**rule, erased=True, user_id="bob") is False
    with pytest.raises(OwnershipError, match="belongs to another user"):
        visible(**rule, erased=False, user_id="bob")
