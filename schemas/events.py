"""The conversation events: frozen pydantic values that mirror the Avro contract.

An event is a fact that already happened, so its class is named in the past tense and
it is immutable. `ConversationEvent` is the envelope every event shares (who, which
session, when, written by what); `payload` is one of the six payload types. The models
know nothing of Avro: `chatlog.schemas.codec` converts them to and from the wire format, and
`schemas/avro/ConversationEvent.v*.avsc` is the language-neutral contract they mirror.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeAlias, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from chatlog.schemas.errors import InvalidEvent, InvalidId, InvalidInput
from chatlog.schemas.ids import new_id, validate_id

__all__ = [
    "MAX_CONTENT_CHARS",
    "ConversationEvent",
    "EventId",
    "MessageAppended",
    "MessageRedacted",
    "Payload",
    "ProducerInfo",
    "Redaction",
    "Role",
    "Sealed",
    "SessionClosed",
    "SessionStarted",
    "SummaryUpdated",
    "ToolCall",
    "UserErased",
    "epoch_millis",
    "from_epoch_millis",
    "validated",
]

_M = TypeVar("_M", bound=BaseModel)

# Kafka's default message.max.bytes is 1 MB; a 256 Ki-character message stays well below it
# even in 4-byte UTF-8, and a chat turn larger than that is a bug upstream, not a memory.
MAX_CONTENT_CHARS = 256 * 1024


def _id_field(field: str) -> AfterValidator:
    return AfterValidator(lambda value: validate_id(value, field=field))


EventId = Annotated[str, _id_field("event_id")]
SessionId = Annotated[str, _id_field("session_id")]
UserId = Annotated[str, _id_field("user_id")]
TenantId = Annotated[str, _id_field("tenant")]
MessageId = Annotated[str, _id_field("message_id")]


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware (use datetime.now(UTC))")
    # Avro timestamp-millis keeps milliseconds; truncate now so a round trip is exact.
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


Timestamp = Annotated[datetime, AfterValidator(_utc)]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_millis(at: datetime) -> int:
    """Milliseconds since the Unix epoch, exactly (`timestamp() * 1000` can be 1 ms short)."""
    return (at - _EPOCH) // timedelta(milliseconds=1)


def from_epoch_millis(ms: int) -> datetime:
    """The UTC time `ms` milliseconds after the Unix epoch; the inverse of `epoch_millis`."""
    return _EPOCH + timedelta(milliseconds=ms)


def _now() -> datetime:
    return _utc(datetime.now(UTC))


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class Role(enum.StrEnum):
    """Who wrote a message, as in the OpenAI chat format."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class ToolCall(_Value):
    """A function call an assistant message asked for; `arguments` is JSON text."""

    id: str
    name: str
    arguments: str = "{}"


class ProducerInfo(_Value):
    """Which client wrote the event (for debugging and audits)."""

    client: str = "chatlog"
    version: str = "0"
    host: str | None = None


class SessionStarted(_Value):
    """A session was opened (optional: appending to a new session starts it too)."""

    title: str | None = None
    metadata: Mapping[str, str] = Field(default_factory=dict)


class MessageAppended(_Value):
    """A chat message was added to the session."""

    message_id: MessageId = Field(default_factory=new_id)
    role: Role
    content: str = Field(max_length=MAX_CONTENT_CHARS)
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    metadata: Mapping[str, str] = Field(default_factory=dict)


class MessageRedacted(_Value):
    """A message's content must no longer be shown or summarized."""

    message_id: MessageId
    reason: str | None = None


class SummaryUpdated(_Value):
    """A rolling summary of the session's turns up to and including `through_offset`."""

    summary: str
    through_offset: int = Field(ge=0)
    model: str
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    covered_messages: int = Field(default=0, ge=0)
    # v3. Which redactions the summary honours: none of the messages redacted at or before
    # this offset of the session's partition reached it (nor the summaries it built on).
    # A summary that did not see a redaction of a message it may cover is withheld
    # (`chatlog.projections.view`); -1 (older events) claims nothing.
    redactions_through: int = Field(default=-1, ge=-1)


class SessionClosed(_Value):
    """The session ended; it stays readable until its time-to-live runs out."""

    reason: str | None = None


class UserErased(_Value):
    """The session's owner asked to be forgotten; derived views drop the session."""

    reason: str | None = None


Payload: TypeAlias = (
    SessionStarted | MessageAppended | MessageRedacted | SummaryUpdated | SessionClosed | UserErased
)


class Sealed(_Value):
    """An event's personal fields, sealed under its owner's data key `key_id`.

    `fields` maps each sealed field's path (``content``, ``tool_calls.0.arguments``,
    ``metadata.order``) to its ciphertext; the payload keeps an empty placeholder in its
    place. `chatlog.schemas.sealing` seals and opens them.
    """

    # JSON (the vectors, logs) carries the ciphertexts as base64.
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    key_id: str
    fields: Mapping[str, bytes]


class Redaction(_Value):
    """One piece of personal data the producer took out of a field before storing it.

    It keeps no personal data: the field's path (as sealing names it: ``content``,
    ``tool_calls.0.arguments``, ``metadata.order``, ``title``), the kind (``EMAIL``, or a
    custom pattern's name), the placeholder written in its place, and a keyed
    HMAC-SHA256 of the original (`mac`, under a MAC key derived from the owner's data key
    `mac_key_id`), which an audit holding that key can match against a value it is
    given, never reverse; once the user is erased, nobody can.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    field: str
    kind: str
    placeholder: str
    mac_key_id: str
    mac: bytes


class ConversationEvent(_Value):
    """The envelope: one event in one session's log. Its Kafka key is `session_id`.

    `sealed` is None for an event in the clear (written before encryption, or with
    nothing personal in it); otherwise its payload holds placeholders until opened.
    `redactions` lists what the producer redacted (schema v3); `tokens` maps each
    reversible placeholder's name (``EMAIL#1``, written ``[EMAIL#1]``) to its original,
    which is always sealed (``tokens.EMAIL#1``), so only the owner's key restores it.
    """

    event_id: EventId = Field(default_factory=new_id)
    session_id: SessionId
    user_id: UserId
    tenant: TenantId = "default"
    occurred_at: Timestamp = Field(default_factory=_now)
    producer: ProducerInfo = Field(default_factory=ProducerInfo)
    payload: Payload
    sealed: Sealed | None = None
    redactions: tuple[Redaction, ...] = ()
    tokens: Mapping[str, str] = Field(default_factory=dict)


def validated(model: type[_M], data: Mapping[str, Any]) -> _M:
    """Build `model` from `data`, raising chatlog's own errors instead of pydantic's.

    An id problem raises `InvalidId` (its message names the id and the rule); anything
    else raises `InvalidEvent` listing each bad field and why.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _translate(model, exc) from exc


def _translate(model: type[BaseModel], exc: ValidationError) -> InvalidInput:
    problems = []
    for error in exc.errors(include_url=False):
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, InvalidId):
            return InvalidId(cause.message, **cause.context)
        where = ".".join(str(part) for part in error["loc"]) or model.__name__
        problems.append(f"{where}: {error['msg']}")
    return InvalidEvent(f"invalid {model.__name__}: " + "; ".join(problems))
