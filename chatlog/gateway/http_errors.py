"""chatlog's errors as HTTP answers: one table, so every route answers a failure alike.

The table is walked in order and the first class the error is an instance of wins, so a
subclass listed before its group gets its own answer. Two rules shape it:

- No existence oracle: another user's session (`OwnershipError`) and a missing one
  (`SessionNotFound`, its subclass `Erased` included) answer the same 404 with the same
  body, which names nothing the caller did not send.
- No internals: an error not in the table is a 500 whose body says only that; the
  exception goes to the server's log, not to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chatlog.schemas.errors import (
    ChatlogError,
    Forbidden,
    InvalidInput,
    JwksUnavailable,
    OutcomeUnknown,
    OwnershipError,
    RateLimited,
    ReadModelLost,
    ReadTimeout,
    SessionNotFound,
    TooManySessions,
    Unauthenticated,
    Unavailable,
    UnknownUser,
)

__all__ = ["RETRY_AFTER_S", "HttpError", "http_error", "not_found"]

RETRY_AFTER_S = 1
"""What ``Retry-After`` says on a 503: the outages it covers usually pass within seconds."""


@dataclass(frozen=True, slots=True)
class HttpError:
    """An HTTP answer to a failure: status, a stable code, a message safe to show."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON body every error answer has."""
        return {"error": {"code": self.code, "message": self.message}}


def not_found() -> HttpError:
    """The one answer for a session the caller may not see, whatever the reason."""
    return HttpError(404, "not_found", "no such session")


def _unauthenticated(error: ChatlogError) -> HttpError:
    return HttpError(401, "unauthenticated", error.message, {"WWW-Authenticate": "Bearer"})


def _forbidden(error: ChatlogError) -> HttpError:
    # Authenticated, so no WWW-Authenticate: other credentials would not help the same caller.
    return HttpError(403, "forbidden", error.message)


def _jwks_unavailable(error: ChatlogError) -> HttpError:
    # Names the URL (its credentials masked by ChatlogError), which a front end's
    # developer needs; the identity provider publishes it anyway.
    return HttpError(
        503,
        "auth_unavailable",
        f"the identity provider's signing keys ({error.context.get('url')}) could not be "
        f"fetched, so no token can be checked; retry later",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


def _invalid(error: ChatlogError) -> HttpError:
    # Its message names the field and the rule, from the caller's own input.
    return HttpError(422, "invalid", error.message)


def _unknown_user(error: ChatlogError) -> HttpError:
    # Only ever about the caller themself (erase me, export me): no oracle to avoid.
    return HttpError(404, "unknown_user", "chatlog holds nothing of you (no session, no key)")


def _unavailable(error: ChatlogError) -> HttpError:
    return HttpError(
        503,
        "unavailable",
        "a service chatlog needs did not answer; retry later",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


def _read_timeout(error: ChatlogError) -> HttpError:
    return HttpError(
        504,
        "read_timeout",
        "the read-model did not reach the requested position in time; retry the read",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


def _outcome_unknown(error: ChatlogError) -> HttpError:
    # The event may be stored: the caller retries with the same Idempotency-Key.
    return HttpError(
        503,
        "outcome_unknown",
        "the message may or may not be stored; retry with the same Idempotency-Key",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


def _rate_limited(error: ChatlogError) -> HttpError:
    assert isinstance(error, RateLimited)
    # Whole seconds, rounded up (`chatlog.schemas.limits.retry_after_s`): a client that
    # waits that long finds a token.
    return HttpError(
        429, "rate_limited", error.message, {"Retry-After": str(int(error.retry_after_s))}
    )


def _too_many_sessions(error: ChatlogError) -> HttpError:
    # 409, not 429: waiting does not lift the cap (a session counts until it expires or
    # its user is erased), and clients retry a 429 on their own after Retry-After.
    return HttpError(
        409,
        "too_many_sessions",
        "you have as many sessions as this service allows; a new one can start once one "
        "is deleted or expires",
    )


# Checked in order: the first class `error` is an instance of decides.
_TABLE: tuple[tuple[type[ChatlogError], Any], ...] = (
    (Unauthenticated, _unauthenticated),
    (Forbidden, _forbidden),
    (OwnershipError, lambda error: not_found()),
    (SessionNotFound, lambda error: not_found()),  # Erased too: no oracle either way
    (UnknownUser, _unknown_user),
    (InvalidInput, _invalid),
    (RateLimited, _rate_limited),
    (TooManySessions, _too_many_sessions),
    (ReadTimeout, _read_timeout),
    (ReadModelLost, _unavailable),
    (JwksUnavailable, _jwks_unavailable),
    (Unavailable, _unavailable),
    (OutcomeUnknown, _outcome_unknown),
)


def http_error(error: BaseException) -> HttpError:
    """The HTTP answer to `error`; a 500 saying nothing more for anything unmapped."""
    if isinstance(error, ChatlogError):
        for kind, answer in _TABLE:
            if isinstance(error, kind):
                result: HttpError = answer(error)
                return result
    return HttpError(500, "internal", "internal error")
