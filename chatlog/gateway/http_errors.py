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
    InvalidInput,
    OutcomeUnknown,
    OwnershipError,
    ReadModelLost,
    ReadTimeout,
    SessionNotFound,
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


# Checked in order: the first class `error` is an instance of decides.
_TABLE: tuple[tuple[type[ChatlogError], Any], ...] = (
    (Unauthenticated, _unauthenticated),
    (OwnershipError, lambda error: not_found()),
    (SessionNotFound, lambda error: not_found()),  # Erased too: no oracle either way
    (UnknownUser, _unknown_user),
    (InvalidInput, _invalid),
    (ReadTimeout, _read_timeout),
    (ReadModelLost, _unavailable),
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
