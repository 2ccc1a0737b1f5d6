"""The conversation events: frozen pydantic values that mirror the Avro contract.

An event is a fact that already happened, so its class is named in the past tense and
it is immutable. `ConversationEvent` is the envelope every event shares (who, which
session, when, written by what); `payload` is one of the thirteen payload types (a
LangGraph thread's checkpoints and pending writes since schema v4, a long-running task's
life since v5). The models
know nothing of Avro: `chatlog.schemas.codec` converts them to and from the wire format, and
`schemas/avro/ConversationEvent.v*.avsc` is the language-neutral contract they mirror.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeAlias, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from chatlog.schemas.errors import InvalidEvent, InvalidId, InvalidInput
from chatlog.schemas.ids import new_id, validate_id

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "MAX_CONTENT_CHARS",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_KEY_CHARS",
    "MAX_METADATA_VALUE_BYTES",
    "MAX_NAME_CHARS",
    "MAX_REASON_CHARS",
    "MAX_TASK_DATA_BYTES",
    "MAX_TITLE_CHARS",
    "MAX_TOOL_CALLS",
    "MAX_TOOL_CALL_ARGUMENTS_BYTES",
    "MAX_TOOL_CALL_ID_CHARS",
    "READ_FROM_LOG",
    "CheckpointSaved",
    "CheckpointWrite",
    "CheckpointWritesSaved",
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
    "TaskCancelled",
    "TaskEvent",
    "TaskFailed",
    "TaskFinished",
    "TaskId",
    "TaskProgressed",
    "TaskStarted",
    "ToolCall",
    "UserErased",
    "check_caps",
    "epoch_millis",
    "from_epoch_millis",
    "validated",
]

_M = TypeVar("_M", bound=BaseModel)

# A chat turn larger than 256 Ki characters is a bug upstream, not a memory. In UTF-8 that
# is 256 KiB to 1 MiB: below Kafka's default message.max.bytes (1,000,000) unless nearly
# every character takes 4 bytes, and such an event is refused whole by the producer
# ("too large for the broker"), never stored in part.
MAX_CONTENT_CHARS = 256 * 1024

# Caps on the other parts of an event. Why caps at all: metadata, tool calls and titles
# were unbounded, and one append with 40,000 metadata keys made a 918 KB Redis element
# that every read of the session then loads. Each cap is generous beside what real chat
# front ends and model APIs send, so that it stops only abuse and bugs:
#
# - names: OpenAI allows 64 characters for a message's and a function's name; twice that
#   leaves room for other providers and MCP-style prefixed tool names.
# - tool calls: OpenAI accepts at most 128 tools per request, so a model calls no more
#   distinct ones in a turn.
# - tool call ids: providers send 9 to about 40 characters; 256 is never reached by one.
# - metadata: a few dozen short labels per message (OpenAI's own metadata allows 16 keys
#   of 64 characters with 512-character values); 64 keys of 128 characters with values up
#   to 8 KiB of UTF-8 keep a maximal map near 530 KB, inside Kafka's 1 MB message.
# - tool call arguments: JSON the model wrote, bounded like a message's content is, but
#   in UTF-8 bytes (64 KiB), since the size on the wire is what a cap protects.
#
# These caps bind what is written, not what is read: `validated` applies them unless its
# context is `READ_FROM_LOG`, which the decoder passes, so an event already in the log
# that exceeds a cap added after it was written still decodes and projects. (The content
# cap is a field constraint from the first schema and binds reads too, as it always has:
# a replay must dead-letter what the live projector dead-lettered.)
MAX_NAME_CHARS = 128
MAX_TOOL_CALLS = 128
MAX_TOOL_CALL_ID_CHARS = 256
MAX_TOOL_CALL_ARGUMENTS_BYTES = 64 * 1024
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_BYTES = 8 * 1024
MAX_TITLE_CHARS = 512
MAX_REASON_CHARS = 1024

# A LangGraph checkpoint (or one call's pending writes) travels as one record of the events
# topic, so its serialized size is bounded by the broker's record limit: Kafka's default
# `message.max.bytes` and the topic's `max.message.bytes` are 1,048,588 bytes, and the
# local stack keeps that default. The serialized state is carried as base64 (4/3 of its
# size) and sealed (29 bytes a field), beside the envelope and the metadata: 700 KiB of
# serialized state is the most that still makes a record under 1 MB with room to spare.
# Past it the saver refuses before anything is published (`InvalidEvent`); keep large
# artefacts (files, embeddings) outside the graph's state and put their reference in it.
MAX_CHECKPOINT_BYTES = 700 * 1024

# A task's input, result or error travels in one record of the events topic, beside the
# chat; larger artefacts belong elsewhere (an object store), with their reference here.
MAX_TASK_DATA_BYTES = 256 * 1024

# The validation context under which the caps above are not applied: events read back
# from the log (`chatlog.schemas.codec`), which were accepted by whatever wrote them.
READ_FROM_LOG: Mapping[str, bool] = {"read_from_log": True}


def _id_field(field: str) -> AfterValidator:
    return AfterValidator(lambda value: validate_id(value, field=field))


EventId = Annotated[str, _id_field("event_id")]
SessionId = Annotated[str, _id_field("session_id")]
UserId = Annotated[str, _id_field("user_id")]
TenantId = Annotated[str, _id_field("tenant")]
MessageId = Annotated[str, _id_field("message_id")]
TaskId = Annotated[str, _id_field("task_id")]


def _utc(value: datetime) -> datetime:
    if value.tzinfo is UTC and not value.microsecond % 1000:
        return value  # already what the rest makes of it: every event read from the log
    if value.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware (use datetime.now(UTC))")
    # Avro timestamp-millis keeps milliseconds; truncate now so a round trip is exact.
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


Timestamp = Annotated[datetime, AfterValidator(_utc)]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)  # built once: epoch_millis runs for every event folded


def epoch_millis(at: datetime) -> int:
    """Milliseconds since the Unix epoch, exactly (`timestamp() * 1000` can be 1 ms short)."""
    return (at - _EPOCH) // _MILLISECOND


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


class CheckpointSaved(_Value):
    """A LangGraph checkpoint of the session's thread was saved (schema v4).

    The session is the thread (`thread_id`); `checkpoint` and `metadata` are what the
    saver's serializer made of them (`type` names its format, the bytes travel as base64
    text), both sealed under the owner's key like a message's content. The ids and the
    namespace stay clear: readers find a checkpoint by them.
    """

    checkpoint_ns: str = ""
    checkpoint_id: str
    parent_checkpoint_id: str | None = None
    checkpoint_type: str
    checkpoint: str
    metadata_type: str
    metadata: str


class CheckpointWrite(_Value):
    """One pending write of a task: a value for a channel (serialized, sealed)."""

    channel: str
    idx: int
    value_type: str
    value: str


class CheckpointWritesSaved(_Value):
    """A task's pending writes against one checkpoint of the thread (schema v4)."""

    checkpoint_ns: str = ""
    checkpoint_id: str
    task_id: str
    task_path: str = ""
    writes: tuple[CheckpointWrite, ...] = ()


class TaskStarted(_Value):
    """A long-running task of the session was started (schema v5).

    `kind` names what sort of task it is (clear: listings show it); `input` is JSON text,
    sealed under the owner's key like a message's content.
    """

    task_id: TaskId
    kind: str
    input: str = ""


class TaskProgressed(_Value):
    """A heartbeat of the task's worker, with how far it got (`progress`, 0 to 1)."""

    task_id: TaskId
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    note: str | None = None


class TaskFinished(_Value):
    """The task succeeded; `result` is JSON text, sealed."""

    task_id: TaskId
    result: str = ""


class TaskFailed(_Value):
    """The task failed; `error` says why, sealed (it may quote the input)."""

    task_id: TaskId
    error: str


class TaskCancelled(_Value):
    """The task was cancelled."""

    task_id: TaskId
    reason: str | None = None


TaskEvent: TypeAlias = TaskStarted | TaskProgressed | TaskFinished | TaskFailed | TaskCancelled

Payload: TypeAlias = (
    SessionStarted
    | MessageAppended
    | MessageRedacted
    | SummaryUpdated
    | SessionClosed
    | UserErased
    | CheckpointSaved
    | CheckpointWritesSaved
    | TaskStarted
    | TaskProgressed
    | TaskFinished
    | TaskFailed
    | TaskCancelled
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

    @model_validator(mode="after")
    def _within_caps(self, info: ValidationInfo) -> ConversationEvent:
        # On the envelope, not on each payload model: every event written goes through
        # `validated(ConversationEvent, ...)` (`chatlog.producers.commands.new_event`),
        # however its payload was built, while payload values built on the read side
        # (a ToolCall rebuilt from Redis or from sealed fields) are never refused.
        context = info.context or {}
        if not context.get("read_from_log"):
            check_caps(self.payload, unbounded_prefix=context.get("unbounded_prefix"))
        return self


def check_caps(payload: Payload, *, unbounded_prefix: str | None = None) -> None:
    """Raise `InvalidEvent` for the first part of `payload` over its cap.

    `unbounded_prefix` names a reserved metadata namespace whose values are exempt from
    `MAX_METADATA_VALUE_BYTES`: the LangChain integration keeps a whole message's extra
    fields (content blocks, response metadata) in one value, bounded by the message
    itself and, in the end, by the broker's message size.
    """
    if isinstance(payload, SessionStarted):
        _cap_chars("payload.title", payload.title, MAX_TITLE_CHARS, "MAX_TITLE_CHARS")
        _cap_metadata(payload.metadata, unbounded_prefix)
    elif isinstance(payload, MessageAppended):
        _cap_chars("payload.name", payload.name, MAX_NAME_CHARS, "MAX_NAME_CHARS")
        _cap_chars(
            "payload.tool_call_id",
            payload.tool_call_id,
            MAX_TOOL_CALL_ID_CHARS,
            "MAX_TOOL_CALL_ID_CHARS",
        )
        if len(payload.tool_calls) > MAX_TOOL_CALLS:
            _refuse(
                "payload.tool_calls",
                f"has {len(payload.tool_calls)} tool calls; the limit is {MAX_TOOL_CALLS} "
                f"per message (MAX_TOOL_CALLS). Split the calls over several messages",
                limit=MAX_TOOL_CALLS,
                size=len(payload.tool_calls),
            )
        for at, call in enumerate(payload.tool_calls):
            where = f"payload.tool_calls.{at}"
            _cap_chars(f"{where}.id", call.id, MAX_TOOL_CALL_ID_CHARS, "MAX_TOOL_CALL_ID_CHARS")
            _cap_chars(f"{where}.name", call.name, MAX_NAME_CHARS, "MAX_NAME_CHARS")
            _cap_bytes(
                f"{where}.arguments",
                call.arguments,
                MAX_TOOL_CALL_ARGUMENTS_BYTES,
                "MAX_TOOL_CALL_ARGUMENTS_BYTES",
            )
        _cap_metadata(payload.metadata, unbounded_prefix)
    elif isinstance(payload, MessageRedacted | SessionClosed | UserErased | TaskCancelled):
        _cap_chars("payload.reason", payload.reason, MAX_REASON_CHARS, "MAX_REASON_CHARS")
    elif isinstance(payload, TaskStarted):
        _cap_chars("payload.kind", payload.kind, MAX_NAME_CHARS, "MAX_NAME_CHARS")
        _cap_bytes("payload.input", payload.input, MAX_TASK_DATA_BYTES, "MAX_TASK_DATA_BYTES")
    elif isinstance(payload, TaskProgressed):
        _cap_chars("payload.note", payload.note, MAX_REASON_CHARS, "MAX_REASON_CHARS")
    elif isinstance(payload, TaskFinished):
        _cap_bytes("payload.result", payload.result, MAX_TASK_DATA_BYTES, "MAX_TASK_DATA_BYTES")
    elif isinstance(payload, TaskFailed):
        _cap_bytes("payload.error", payload.error, MAX_TASK_DATA_BYTES, "MAX_TASK_DATA_BYTES")
    elif isinstance(payload, CheckpointSaved):
        _cap_state("payload.checkpoint", len(payload.checkpoint) + len(payload.metadata))
    elif isinstance(payload, CheckpointWritesSaved):
        _cap_state("payload.writes", sum(len(w.value) for w in payload.writes))


def _cap_state(where: str, encoded: int) -> None:
    # The fields hold base64 text: 4 characters for every 3 bytes of serialized state.
    size = encoded * 3 // 4
    if size > MAX_CHECKPOINT_BYTES:
        _refuse(
            where,
            f"is {size} bytes of serialized state; the limit is {MAX_CHECKPOINT_BYTES} "
            f"(MAX_CHECKPOINT_BYTES), what one Kafka record carries. Keep large artefacts "
            f"(files, embeddings, documents) outside the graph's state and store their "
            f"reference in it",
            limit=MAX_CHECKPOINT_BYTES,
            size=size,
        )


def _cap_metadata(metadata: Mapping[str, str], unbounded_prefix: str | None) -> None:
    if len(metadata) > MAX_METADATA_KEYS:
        _refuse(
            "payload.metadata",
            f"has {len(metadata)} keys; the limit is {MAX_METADATA_KEYS} "
            f"(MAX_METADATA_KEYS). Keep fewer labels per event, or store bulky data "
            f"elsewhere and put its reference in one key",
            limit=MAX_METADATA_KEYS,
            size=len(metadata),
        )
    for key, value in metadata.items():
        _cap_chars(
            f"payload.metadata key {key[:40]!r}",
            key,
            MAX_METADATA_KEY_CHARS,
            "MAX_METADATA_KEY_CHARS",
            field=f"payload.metadata.{key[:MAX_METADATA_KEY_CHARS]}",
        )
        if unbounded_prefix is None or not key.startswith(unbounded_prefix):
            _cap_bytes(
                f"payload.metadata.{key}",
                value,
                MAX_METADATA_VALUE_BYTES,
                "MAX_METADATA_VALUE_BYTES",
            )


def _cap_chars(
    where: str, value: str | None, limit: int, name: str, *, field: str | None = None
) -> None:
    if value is not None and len(value) > limit:
        _refuse(
            where,
            f"is {len(value)} characters long; the limit is {limit} ({name}). Shorten it",
            field=field,
            limit=limit,
            size=len(value),
        )


def _cap_bytes(where: str, value: str, limit: int, name: str) -> None:
    # Measured in UTF-8 bytes only when it could matter: a string of at most limit/4
    # characters fits whatever it holds.
    if len(value) * 4 > limit and (size := len(value.encode("utf-8"))) > limit:
        _refuse(
            where,
            f"is {size} bytes of UTF-8; the limit is {limit} ({name}). "
            f"Shorten it, or store it elsewhere and keep a reference here",
            limit=limit,
            size=size,
        )


def _refuse(where: str, problem: str, *, limit: int, size: int, field: str | None = None) -> None:
    raise InvalidEvent(
        f"{where} {problem}; nothing was published", field=field or where, limit=limit, size=size
    )


def validated(
    model: type[_M], data: Mapping[str, Any], *, context: Mapping[str, Any] | None = None
) -> _M:
    """Build `model` from `data`, raising chatlog's own errors instead of pydantic's.

    An id problem raises `InvalidId` (its message names the id and the rule); a part over
    its cap raises `InvalidEvent` naming the field, the limit and the size; anything else
    raises `InvalidEvent` listing each bad field and why. `context` is pydantic's
    validation context: `READ_FROM_LOG` waives the caps (see `MAX_NAME_CHARS`).
    """
    try:
        return model.model_validate(data, context=dict(context) if context else None)
    except ValidationError as exc:
        raise _translate(model, exc) from exc


def _translate(model: type[BaseModel], exc: ValidationError) -> InvalidInput:
    problems = []
    for error in exc.errors(include_url=False):
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, InvalidId):
            return InvalidId(cause.message, **cause.context)
        if isinstance(cause, InvalidEvent):  # a cap: its message is already complete
            return type(cause)(cause.message, **cause.context)
        where = ".".join(str(part) for part in error["loc"]) or model.__name__
        problems.append(f"{where}: {error['msg']}")
    return InvalidEvent(f"invalid {model.__name__}: " + "; ".join(problems))
