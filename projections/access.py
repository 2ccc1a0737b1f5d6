"""Who may read a session: the read rule, written once for every read path.

The rule, in this order: an erased session is not found (`SessionNotFound`), whoever
asks, so an erasure hides even who owned the session; then a session owned by another
user is refused (`OwnershipError`) and nothing of it is returned. The Redis reader (sync
and asyncio), the point-in-time read from the log, the session list and the conversation
stores all call these functions rather than checking by hand, so the paths cannot drift
apart in what they refuse or in how they say it.

What "no session" means differs by path (never created or expired; not yet at that
point in the log; something to wait for), so a missing view is left to the caller.
"""

from __future__ import annotations

from typing import TypeVar

from chatlog.projections.view import SessionStatus, SessionView
from chatlog.schemas.errors import OwnershipError, SessionNotFound

__all__ = ["check_owner", "may_read", "readable", "visible"]

_View = TypeVar("_View", bound=SessionView | None)


def readable(view: _View, *, user_id: str, as_of: str | None = None) -> _View:
    """`view` if `user_id` may read it (None stays None); raises for a read to refuse.

    `as_of` names the point in time read (for a read of the past), for the message.
    """
    if view is None:
        return view
    erased = view.status is SessionStatus.ERASED
    if not visible(session_id=view.session_id, owner=view.user_id, erased=erased, user_id=user_id):
        when = "" if as_of is None else f" as of {as_of}"
        raise SessionNotFound(
            f"session {view.session_id} was erased{when}", session_id=view.session_id
        )
    return view


def visible(*, session_id: str, owner: str, erased: bool, user_id: str) -> bool:
    """The rule itself: False for an erased session, whoever asks; True for its owner;
    `OwnershipError` for anyone else. For paths that answer "none" rather than raise."""
    if erased:
        return False
    check_owner(owner, session_id=session_id, user_id=user_id)
    return True


def check_owner(owner: str, *, session_id: str, user_id: str) -> None:
    """Raise `OwnershipError` unless `user_id` is `owner`, the session's owner.

    The ownership half of the rule alone, for folds of the log that know only the owner.
    """
    if owner != user_id:
        raise OwnershipError(
            f"session {session_id} belongs to another user, not {user_id}",
            session_id=session_id,
        )


def may_read(view: SessionView | None, *, user_id: str) -> bool:
    """Whether `view` exists and `readable` lets `user_id` read it (for filtering lists)."""
    try:
        return readable(view, user_id=user_id) is not None
    except (SessionNotFound, OwnershipError):
        return False
