"""The read rule (owner: tenant and user; then erased) and the write rule, which every
path calls."""

from __future__ import annotations

import pytest

from chatlog.projections.access import may_read, no_session, readable, refuse_writer, visible
from chatlog.projections.view import SessionStatus, SessionView
from chatlog.schemas.errors import OwnershipError, SessionNotFound
from chatlog.schemas.sealing import KeyScope


def view(
    *, user_id: str = "alice", tenant: str = "acme", status: SessionStatus = SessionStatus.OPEN
) -> SessionView:
    return SessionView(
        session_id="s-1",
        user_id=user_id,
        tenant=tenant,
        partition=2,
        last_offset=9,
        created_at_ms=1,
        updated_at_ms=2,
        status=status,
    )


def refusal(call) -> SessionNotFound:
    with pytest.raises(SessionNotFound) as refused:
        call()
    return refused.value


@pytest.mark.parametrize("status", [SessionStatus.OPEN, SessionStatus.CLOSED])
def test_the_owner_reads_an_open_or_closed_session(status):
    mine = view(status=status)
    assert readable(mine, tenant="acme", user_id="alice") is mine
    assert may_read(mine, tenant="acme", user_id="alice")


def test_no_view_is_left_to_the_caller():
    assert readable(None, tenant="acme", user_id="alice") is None
    assert not may_read(None, tenant="acme", user_id="alice")


@pytest.mark.parametrize(
    ("tenant", "user_id"), [("acme", "bob"), ("globex", "alice"), ("default", "alice")]
)
def test_another_users_or_tenants_session_answers_exactly_as_a_missing_one(tenant, user_id):
    theirs = refusal(lambda: readable(view(), tenant=tenant, user_id=user_id))
    missing = no_session("s-1", tenant=tenant, user_id=user_id)
    assert type(theirs) is type(missing) is SessionNotFound
    assert str(theirs) == str(missing)
    assert theirs.context == missing.context == {"session_id": "s-1"}
    # It names only what the reader asked with: never the owner, never "another user".
    assert str(theirs) == (
        f"no session s-1 of user {user_id} in tenant {tenant}; check the session id, the "
        f"user and the tenant"
    )
    assert "belongs" not in str(theirs)
    assert not may_read(view(), tenant=tenant, user_id=user_id)


def test_an_erased_session_is_not_found_and_its_owner_is_told_it_was_erased():
    erased = view(status=SessionStatus.ERASED)
    told = refusal(lambda: readable(erased, tenant="acme", user_id="alice"))
    assert str(told) == "session s-1 was erased"
    assert told.context == {"session_id": "s-1"}
    assert not may_read(erased, tenant="acme", user_id="alice")
    # A stranger learns nothing: not that it existed, not that it was erased.
    stranger = refusal(lambda: readable(erased, tenant="acme", user_id="bob"))
    assert str(stranger) == str(no_session("s-1", tenant="acme", user_id="bob"))


def test_a_read_of_the_past_says_as_of_when():
    erased = view(status=SessionStatus.ERASED)
    with pytest.raises(SessionNotFound, match=r"^session s-1 was erased as of position 2:9$"):
        readable(erased, tenant="acme", user_id="alice", as_of="position 2:9")
    theirs = refusal(lambda: readable(view(), tenant="acme", user_id="bob", as_of="position 2:9"))
    assert str(theirs) == str(no_session("s-1", tenant="acme", user_id="bob", as_of="position 2:9"))
    assert "as of position 2:9" in str(theirs)


def test_visible_is_the_rule_as_a_yes_or_no():
    alice = KeyScope("acme", "alice")
    assert visible(owner=alice, erased=False, reader=alice) is True
    assert visible(owner=alice, erased=True, reader=alice) is False
    assert visible(owner=alice, erased=False, reader=KeyScope("acme", "bob")) is False
    assert visible(owner=alice, erased=False, reader=KeyScope("globex", "alice")) is False


def test_a_writer_into_another_users_or_tenants_session_is_refused():
    alice = KeyScope("acme", "alice")
    refuse_writer("s-1", owner=alice, writer=alice)
    for writer in (KeyScope("acme", "bob"), KeyScope("globex", "alice")):
        with pytest.raises(OwnershipError, match=r"^session s-1 belongs to another user, not "):
            refuse_writer("s-1", owner=alice, writer=writer)
