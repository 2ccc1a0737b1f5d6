"""The error hierarchy shared by every chatlog layer, grouped by what went wrong.

Every error subclasses `ChatlogError` and, where one fits, the builtin it resembles, so
callers can catch either. Errors carry their context (topic, partition, offset, session,
setting) as attributes as well as in the message. A group says what went wrong, never
who was calling: `BrokerUnavailable` is the same error from a publish and from a read
of the log, `StoreUnavailable` the same from a read and from a projector's write::

    ChatlogError
    ├── ConfigError(ValueError)            a setting is missing, unknown or invalid
    │   └── EmbeddingModelMismatch         the recall index was built by another embedding model
    ├── MissingExtra(ImportError)          a feature's optional dependencies are not installed
    ├── InvalidInput(ValueError)           the caller asked for something chatlog refuses
    │   ├── InvalidId                      an id breaks the id rules
    │   ├── InvalidEvent                   an event or command breaks the contract
    │   │   └── ForeignEvent               ... changing a session not its own (owner, partition)
    │   ├── SessionExists                  a new session's id is taken (or was, once)
    │   └── UnknownMessage                 a paging cursor is not a message of the session
    ├── Refused                            understood and answered "no"; nothing changed
    │   ├── SessionNotFound(LookupError)   no such session (never existed, expired, erased)
    │   │   └── Erased                     ... its owner was erased: their keys are destroyed
    │   ├── UnknownUser(LookupError)       nothing of the user to erase or export
    │   ├── OwnershipError(PermissionError) the session belongs to another user
    │   ├── Unauthenticated(PermissionError) no acceptable credentials (the gateway's token)
    │   ├── Forbidden(PermissionError)     authenticated, but not allowed this (an operator key)
    │   ├── LimitExceeded                  a limit the deployment sets was reached
    │   │   ├── RateLimited(RuntimeError)  ... too many requests: retry after `retry_after_s`
    │   │   └── TooManySessions(RuntimeError) ... the user has the most sessions allowed
    │   ├── TopicMissing(LookupError)      the events topic does not exist
    │   ├── NotQueued(RuntimeError)        the Kafka client refused to queue an event
    │   └── SummarizerError(RuntimeError)  the LLM answered, but not with a summary
    ├── Unavailable                        no answer (in time); nothing happened: retry later
    │   ├── BrokerUnavailable(ConnectionError) no Kafka broker answered
    │   ├── StoreUnavailable(ConnectionError)  Redis did not answer
    │   ├── JwksUnavailable(ConnectionError)   the identity provider's keys could not be fetched
    │   ├── QueueFull(BufferError)         the producer's queue stayed full; event not sent
    │   ├── ReadTimeout(TimeoutError)      the projection did not reach a position in time
    │   ├── ReadModelLost(LookupError)     Redis lost the read-model; served again once rebuilt
    │   │   └── RecallIndexLost            ... or the recall index: rebuilt by replay
    │   ├── LayoutMismatch(LookupError)    the live read-model has another key layout: replay it
    │   ├── RetryableSummarizerError(ConnectionError) the LLM is busy, failing or unreachable
    │   │   └── SummarizerTimeout(TimeoutError)        ... or did not answer in time
    │   └── SummarizerUnavailable(ConnectionError)     the circuit is open: the LLM not called
    ├── OutcomeUnknown                     an event was sent, but may or may not be stored
    │   ├── PublishTimeout(TimeoutError)   the broker did not acknowledge it in time
    │   └── DeliveryFailed(RuntimeError)   the client gave up on it for another reason
    ├── Corrupt                            data in the log or the store is unusable as it is
    │   ├── DecodeError(ValueError)        bytes on the topic are not a chatlog event
    │   │   └── UnknownSchema              ... written with a schema chatlog does not know
    │   ├── Undecryptable(ValueError)      a sealed field does not open: altered, or a wrong key
    │   └── DataLoss(RuntimeError)         Redis lost part of the read-model
    ├── Conflict(RuntimeError)             another writer changed the same state first
    ├── Incomplete(RuntimeError)           a part of a long run failed; run it again to resume
    │   └── NotAudited                     done and stored, but its audit record failed
    └── Interrupted(InterruptedError)      a long run (a replay, a retry) was asked to stop

What a writer does next follows from the group. After `OutcomeUnknown` the event may be
in the log: retry with the *same* event (the same ``message_id``), which the projection
keeps once, never with a new one, which would store the message twice. After any other
error from a publish the event is not stored: `Unavailable` says retry later, `Refused`,
`InvalidInput` and `ConfigError` say a retry gets the same answer until something changes.
"""

from __future__ import annotations

from typing import Any

from chatlog.distribution import DISTRIBUTION
from chatlog.schemas.secrets import redacted_url

__all__ = [
    "BrokerUnavailable",
    "ChatlogError",
    "ConfigError",
    "Conflict",
    "Corrupt",
    "DataLoss",
    "DecodeError",
    "DeliveryFailed",
    "EmbeddingModelMismatch",
    "Erased",
    "Forbidden",
    "ForeignEvent",
    "Incomplete",
    "Interrupted",
    "InvalidEvent",
    "InvalidId",
    "InvalidInput",
    "JwksUnavailable",
    "LayoutMismatch",
    "LimitExceeded",
    "MissingExtra",
    "NotAudited",
    "NotQueued",
    "OutcomeUnknown",
    "OwnershipError",
    "PublishTimeout",
    "QueueFull",
    "RateLimited",
    "ReadModelLost",
    "ReadTimeout",
    "RecallIndexLost",
    "Refused",
    "RetryableSummarizerError",
    "SessionExists",
    "SessionNotFound",
    "StoreUnavailable",
    "SummarizerError",
    "SummarizerTimeout",
    "SummarizerUnavailable",
    "TooManySessions",
    "TopicMissing",
    "Unauthenticated",
    "Unavailable",
    "Undecryptable",
    "UnknownMessage",
    "UnknownSchema",
    "UnknownUser",
]


class ChatlogError(Exception):
    """Root of every error chatlog raises; `context` holds what the error is about."""

    def __init__(self, message: str, **context: Any) -> None:
        # Messages often name a URL (Redis, the registry, the LLM) or quote a library's
        # error about one: its credentials are masked here, once, for every error.
        message = redacted_url(message)
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = {
            k: redacted_url(v) if isinstance(v, str) else v
            for k, v in context.items()
            if v is not None
        }


# -- the deployment or the caller is wrong -----------------------------------------------


class ConfigError(ChatlogError, ValueError):
    """A setting is missing, unknown or invalid; the message names it and the fix."""


class EmbeddingModelMismatch(ConfigError):
    """The recall index was built with one embedding model (name and dimension, in
    `context`) and the settings name another: vectors of two models cannot be compared,
    so the index is refused until it is rebuilt (`chatlog replay`) or the settings name
    its model again."""


class MissingExtra(ChatlogError, ImportError):
    """A feature needs an extra (a group of optional dependencies) that is not installed."""

    @classmethod
    def needs(
        cls,
        extra: str,
        feature: str,
        missing: ImportError,
        *,
        instead: str | None = None,
        **context: Any,
    ) -> MissingExtra:
        """The error for `feature`, whose import failed with `missing`: names the install,
        and `instead`, a way to do without it, where there is one."""
        alternative = f", or {instead}" if instead else ""
        return cls(
            f"{feature} needs the {missing.name or 'optional'} package: "
            f"pip install '{DISTRIBUTION}[{extra}]'{alternative}",
            extra=extra,
            module=missing.name,
            **context,
        )


class InvalidInput(ChatlogError, ValueError):
    """The caller asked for something chatlog refuses (a bad value, a closed client).

    Nothing was published; the same call fails the same way until the caller changes it.
    """


class InvalidId(InvalidInput):
    """An id (session, user, tenant, message) breaks the id rules."""


class InvalidEvent(InvalidInput):
    """An event or command does not satisfy the event contract."""


class ForeignEvent(InvalidEvent):
    """An event that must not touch this session: another owner, or another partition."""


class SessionExists(InvalidInput):
    """`create_session` named a session that exists (or existed: deleted ids are not reused)."""

    @classmethod
    def about(cls, session_id: str, *, deleted: bool) -> SessionExists:
        """The error for `session_id`, which exists, or existed and was `deleted`."""
        if deleted:
            return cls(
                f"session {session_id} was deleted, and session ids are not reused; use a new id",
                session_id=session_id,
            )
        return cls(f"session {session_id} exists already", session_id=session_id)


class UnknownMessage(InvalidInput):
    """A paging cursor (`before` / `after`) is not a message of the session."""


# -- understood, and answered "no" -------------------------------------------------------


class Refused(ChatlogError):
    """The request was understood and answered "no": nothing was returned or stored.

    Asking again gets the same answer until something changes (the session is written,
    the topic is created, the prompt is fixed).
    """


class SessionNotFound(Refused, LookupError):
    """No such session: it never existed, expired, or its owner was erased."""


class Erased(SessionNotFound):
    """The session's owner was erased: the keys that sealed their data are destroyed.

    What is left of the session in the log is unreadable for good; nothing can bring it
    back, and a retry gets the same answer.
    """


class UnknownUser(Refused, LookupError):
    """chatlog has nothing of the user: for an erasure, no data key (in the key directory
    or the keys topic), no erasure, no session in the read-model, and nothing was erased
    or retired; for an export, no session of theirs in the log."""


class OwnershipError(Refused, PermissionError):
    """The session belongs to another user; nothing of it is returned."""


class Unauthenticated(Refused, PermissionError):
    """A request carries no acceptable credentials: no token, or one that does not check.

    Its message is safe to show the caller (it says why, never what the secret is).
    """


class Forbidden(Refused, PermissionError):
    """The credentials check, but they may not do this: an operator's API key on a route
    of user data, a user's token naming another user. Asking again gets the same answer."""


class LimitExceeded(Refused):
    """A limit the deployment sets (``CHATLOG_RATE_*``, ``CHATLOG_MAX_SESSIONS_PER_USER``)
    was reached: nothing was done. The same call succeeds once the count is back under it."""


class RateLimited(LimitExceeded, RuntimeError):
    """Too many requests of a user or a tenant in too short a time (a token bucket).

    `retry_after_s` says when the next request would be let through; `scope` says
    whose bucket was empty (``user`` or ``tenant``).
    """

    def __init__(self, message: str, *, retry_after_s: float, scope: str, **context: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, scope=scope, **context)
        self.retry_after_s = retry_after_s
        self.scope = scope


class TooManySessions(LimitExceeded, RuntimeError):
    """The user has as many sessions as ``CHATLOG_MAX_SESSIONS_PER_USER`` allows; the new
    one was not started and nothing was published.

    Waiting does not lift it (a session counts until it expires, idle for
    ``CHATLOG_SESSION_TTL_S``, or its user is erased): the caller ends sessions first.
    """


class TopicMissing(Refused, LookupError):
    """The events topic does not exist; `chatlog topics create` makes it."""


class NotQueued(Refused, RuntimeError):
    """librdkafka refused to queue the event (e.g. a fatal producer state): it was not sent."""


class SummarizerError(Refused, RuntimeError):
    """The summarizer answered, but not with a summary (a 4xx, a refusal, a bad body).

    Retrying the same request will not help; transient failures are `Unavailable`.
    """


# -- no answer (in time): nothing happened, retry later ----------------------------------


class Unavailable(ChatlogError):
    """A service chatlog depends on did not answer, or not in time; nothing happened.

    No event was stored and nothing was read, so the same call may simply be retried
    later (a new event id is harmless here; see `OutcomeUnknown` for when it is not).
    """


class BrokerUnavailable(Unavailable, ConnectionError):
    """No Kafka broker answered, whether to a publish's check or to a read of the log."""


class StoreUnavailable(Unavailable, ConnectionError):
    """The read-model's store (Redis) did not answer, to a read or to a projector's write."""


class JwksUnavailable(Unavailable, ConnectionError):
    """The identity provider's signing keys (its JWKS URL, in `context`) could not be
    fetched, or were no key set: no token can be checked until they can."""


class QueueFull(Unavailable, BufferError):
    """The producer's local queue stayed full for the whole timeout (back-pressure).

    The event never left the process: it is not stored.
    """


class ReadTimeout(Unavailable, TimeoutError):
    """The projection did not reach the awaited position within the timeout."""


class ReadModelLost(Unavailable, LookupError):
    """Redis no longer holds the read-model (or never held one): nothing is served from it.

    An `Unavailable`, not a `Corrupt`: the caller did nothing wrong and the log still
    holds everything, so the same read succeeds once the read-model is rebuilt (by the
    projector with ``CHATLOG_ON_DATA_LOSS=rebuild``, or by ``chatlog replay``); meanwhile
    ``ChatLog.context(..., as_of=...)`` reads the log itself. The operator's side of the
    same event is the projector's `DataLoss`.
    """


class RecallIndexLost(ReadModelLost):
    """Redis no longer holds the recall index of the live generation (its definition or
    its metadata is gone: a restart without persistence, a flush, a dropped index).

    The log still holds every turn: a replay rebuilds the index, and recall answers again.
    """


class LayoutMismatch(Unavailable, LookupError):
    """The live generation of the read-model was built with a key layout other than the
    one this code reads, and the read depends on it (a session list): refused rather
    than served partly.

    An `Unavailable`: the log holds everything, and the read succeeds once ``chatlog
    replay`` has rebuilt the read-model in the current layout (or, for a layout newer
    than this code's, once chatlog is upgraded).
    """


class RetryableSummarizerError(Unavailable, ConnectionError):
    """A transient summarizer failure (rate limit, server error, lost connection).

    `retry_after` is the server's hint, in seconds, when it gave one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **context: Any) -> None:
        super().__init__(message, retry_after=retry_after, **context)
        self.retry_after = retry_after


class SummarizerTimeout(RetryableSummarizerError, TimeoutError):
    """The summarizer did not answer within its timeout."""


class SummarizerUnavailable(Unavailable, ConnectionError):
    """The circuit breaker is open: the summarizer was not called at all."""


# -- sent, but maybe not stored: retry with the same event -------------------------------


class OutcomeUnknown(ChatlogError):
    """An event was handed to the broker, and whether it is stored is not known.

    The broker may have written it and lost only the acknowledgement. Retry with the
    same event (the same ``message_id``): the projection keeps a message once, so a
    retry of a stored event changes nothing, while a new id would store it twice.
    """


class PublishTimeout(OutcomeUnknown, TimeoutError):
    """The broker did not acknowledge the event in time; it may or may not be stored."""


class DeliveryFailed(OutcomeUnknown, RuntimeError):
    """The Kafka client gave up on the event; its error does not say whether it is stored."""


# -- data in the log or the store is unusable -----------------------------------------------


class Corrupt(ChatlogError):
    """What chatlog finds in the log or the store is not what it can use as it is.

    Retrying does not help: a bad record goes to the dead-letter topic, a damaged
    read-model is rebuilt from the log with `chatlog replay`.
    """


class DecodeError(Corrupt, ValueError):
    """Bytes read from the topic are not a decodable chatlog event."""


class UnknownSchema(DecodeError):
    """The event names a writer schema (fingerprint or registry id) chatlog cannot find."""


class Undecryptable(Corrupt, ValueError):
    """A sealed field does not open: it was altered, moved from another event or field,
    or sealed under a key or master key this process does not have."""


class DataLoss(Corrupt, RuntimeError):
    """Redis no longer holds what the projector had written: it must be rebuilt."""


# -- a long run that did not finish, or lost a race ------------------------------------------


class Conflict(ChatlogError, RuntimeError):
    """Another writer changed what this one was changing, first; nothing was applied over it.

    E.g. a second replay flipped the live generation, or a second projector kept writing the
    same sessions. Run the operation again if it is still needed.
    """


class Incomplete(ChatlogError, RuntimeError):
    """A part of a long run (a replay's worker process) failed; what was done stays.

    Running it again resumes from what was written; the failed part logged its own error.
    """


class NotAudited(Incomplete):
    """The operation is done (its event stored, at `position`), but its audit record could
    not be written. Running it again repeats it harmlessly and records it."""


class Interrupted(ChatlogError, InterruptedError):
    """A long run (a replay) was asked to stop before it finished; what it did stays."""
