"""Who may read a session, and who may write to it: the rules, written once for every path.

A session belongs to one user of one tenant (`KeyScope`): the tenant and user of its
first event. The read rule, in this order:

1. Someone else's session (another user, or the same user id in another tenant) is not
   found: `SessionNotFound`, with exactly the message a missing session gets
   (`no_session`), so a read can never tell "someone else's" from "none" (no existence
   oracle). Nothing of the session, not even that it exists, leaves the read.
2. An erased session is not found either; its owner is told it was erased.

The write rule: a writer appending into someone else's session is refused before
anything is published (`OwnershipError`, `refuse_writer`; the session claims and the
conversation store call it). A write cannot hide that the id is taken, and need not: it
returns nothing of the session.

The Redis reader (sync and asyncio), the point-in-time read from the log, the session
list, the LangChain history and the conversation stores all call these functions rather
than checking by hand, so the paths cannot drift apart in what they refuse or in how
they say it. What "no session" means beyond that differs by path (something to wait for,
not yet at that point in the log), so a missing view is left to the caller, which
answers with `no_session`.
"""

from __future__ import annotations

from typing import TypeVar

from chatlog.projections.view import SessionStatus, SessionView
from chatlog.schemas.errors import OwnershipError, SessionNotFound
from chatlog.schemas.sealing import KeyScope

__all__ = ["may_read", "no_session", "readable", "refuse_writer", "visible"]

_View = TypeVar("_View", bound=SessionView | None)


def readable(view: _View, *, tenant: str, user_id: str, as_of: str | None = None) -> _View:
    """`view` if `user_id` of `tenant` may read it (None stays None); raises
    `SessionNotFound` for a read to refuse.

    `as_of` names the point in time read (for a read of the past), for the message.
    """
    if view is None:
        return view
    reader = KeyScope(tenant, user_id)
    if _owner(view) != reader:
        raise no_session(view.session_id, tenant=tenant, user_id=user_id, as_of=as_of)
    if view.status is SessionStatus.ERASED:
        when = "" if as_of is None else f" as of {as_of}"
        raise SessionNotFound(
            f"session {view.session_id} was erased{when}", session_id=view.session_id
        )
    return view


def no_session(
    session_id: str, *, tenant: str, user_id: str, as_of: str | None = None
) -> SessionNotFound:
    """The one answer for a session the reader cannot see: never created, expired, not
    yet created at `as_of`, or someone else's. It names only what the reader asked with."""
    when = "" if as_of is None else f" as of {as_of}"
    return SessionNotFound(
        f"no session {session_id} of user {user_id} in tenant {tenant}{when}; check the "
        f"session id, the user and the tenant",
        session_id=session_id,
    )


def visible(*, owner: KeyScope, erased: bool, reader: KeyScope) -> bool:
    """The read rule as a yes or no, for paths that answer "none" rather than raise:
    True only for the owner's session that is not erased."""
    return owner == reader and not erased


def may_read(view: SessionView | None, *, tenant: str, user_id: str) -> bool:
    """Whether `view` exists and `user_id` of `tenant` may read it (for filtering lists)."""
    return view is not None and visible(
        owner=_owner(view),
        erased=view.status is SessionStatus.ERASED,
        reader=KeyScope(tenant, user_id),
    )


def refuse_writer(session_id: str, *, owner: KeyScope, writer: KeyScope) -> None:
    """`OwnershipError` unless `writer` owns the session (same tenant, same user): the
    write is refused and nothing is published."""
    if owner != writer:
        raise OwnershipError(
            f"session {session_id} belongs to another user, not {writer.user_id} (tenant "
            f"{writer.tenant}); nothing was published. Start a session of your own (a new "
            f"session id)",
            session_id=session_id,
        )


def _owner(view: SessionView) -> KeyScope:
    return KeyScope(view.tenant, view.user_id)
