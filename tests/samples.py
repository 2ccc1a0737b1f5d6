"""Sample events covering every payload type and optional field, for tests and vectors.

`python -m tests.samples` writes ``tests/vectors/ConversationEvent.v<N>.json`` for the
newest schema version if that file does not exist yet. Vector files are frozen once
written: every later codec must still decode them (schema evolution), and the codec of
their own version must reproduce their bytes exactly (byte compatibility across
implementations).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from chatlog.schemas.codec import EventCodec, schema_versions
from chatlog.schemas.events import (
    CheckpointSaved,
    CheckpointWrite,
    CheckpointWritesSaved,
    ConversationEvent,
    MessageAppended,
    MessageRedacted,
    Payload,
    ProducerInfo,
    Redaction,
    Sealed,
    SessionClosed,
    SessionStarted,
    SummaryUpdated,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    TaskProgressed,
    TaskStarted,
    ToolCall,
    UserErased,
)
from chatlog.schemas.sealing import DataKey, KeyScope, field_context

VECTORS = Path(__file__).parent / "vectors"

PAYLOADS: list[Payload] = [
    SessionStarted(),
    SessionStarted(title="Order 7731 delayed", metadata={"channel": "web", "locale": "de-DE"}),
    MessageAppended(message_id="m-1", role="user", content="Where is order 7731?"),
    MessageAppended(
        message_id="m-2",
        role="assistant",
        content="",
        tool_calls=(ToolCall(id="call_1", name="lookup_order", arguments='{"id": 7731}'),),
    ),
    MessageAppended(
        message_id="m-3",
        role="tool",
        content='{"status": "shipped"}',
        name="lookup_order",
        tool_call_id="call_1",
    ),
    MessageAppended(
        message_id="m-4",
        role="system",
        content="Ünïcödé ✓ 日本語 🙂\n\ttabs and newlines",
        metadata={"k": "v"},
    ),
    MessageRedacted(message_id="m-1", reason="contained a card number"),
    MessageRedacted(message_id="m-2"),
    SummaryUpdated(
        summary="User asked about order 7731; it shipped.",
        through_offset=41,
        model="gpt-4o-mini",
        prompt_tokens=120,
        completion_tokens=30,
        covered_messages=12,
    ),
    SessionClosed(),
    SessionClosed(reason="idle"),
    # v3: a summary rebuilt without a redacted message, honouring redactions through 57.
    SummaryUpdated(
        summary="User asked about an order; it shipped.",
        through_offset=41,
        model="gpt-4o-mini",
        covered_messages=12,
        redactions_through=57,
    ),
    UserErased(reason="GDPR article 17 request"),
    # v4: a LangGraph thread's checkpoint and a task's pending writes (base64 of msgpack).
    CheckpointSaved(
        checkpoint_ns="",
        checkpoint_id="1f0c2d6e-5d3a-6b2e-8001-1b2c3d4e5f60",
        parent_checkpoint_id="1f0c2d6e-5d3a-6b2e-8000-1b2c3d4e5f60",
        checkpoint_type="msgpack",
        checkpoint="gqF2AaJpZA==",
        metadata_type="msgpack",
        metadata="gaZzb3VyY2WkbG9vcA==",
    ),
    CheckpointWritesSaved(
        checkpoint_ns="tools:2",
        checkpoint_id="1f0c2d6e-5d3a-6b2e-8001-1b2c3d4e5f60",
        task_id="5f1e0a2b-0000-4000-8000-000000000001",
        task_path="~__pregel_pull, tools",
        writes=(
            CheckpointWrite(channel="messages", idx=0, value_type="msgpack", value="kaJoaQ=="),
            CheckpointWrite(channel="__interrupt__", idx=-3, value_type="null", value=""),
        ),
    ),
    # v5: a long-running task's life (input, result and error as JSON text).
    TaskStarted(task_id="t-1", kind="report", input='{"month": "2026-11"}'),
    TaskProgressed(task_id="t-1", progress=0.25, note="3 of 12 files"),
    TaskProgressed(task_id="t-1"),
    TaskFinished(task_id="t-1", result='{"url": "s3://reports/11.pdf"}'),
    TaskFailed(task_id="t-2", error="timeout after 3600 s"),
    TaskCancelled(task_id="t-3", reason="user asked"),
    TaskCancelled(task_id="t-4"),
]


def sample_events() -> list[ConversationEvent]:
    """One event per sample payload, with fixed ids and times so bytes are stable."""
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    return [
        ConversationEvent(
            event_id=f"00000000-0000-4000-8000-{i:012d}",
            session_id=f"session-{i % 3}",
            user_id="user@example.com",
            tenant="acme" if i % 2 else "default",
            occurred_at=at,
            producer=ProducerInfo(client="tests", version="1", host=None if i % 2 else "h1"),
            payload=payload,
        )
        for i, payload in enumerate(PAYLOADS)
    ]


# A fixed data key and nonces, so that sealed samples have stable bytes: the vectors then
# pin the sealing format too (any implementation that opens them reads it right).
VECTOR_KEY = DataKey(
    "00000000-0000-4000-8000-00000000cafe", KeyScope("acme", "user@example.com"), bytes(range(32))
)


def _sealed_fields(event_id: str, session_id: str, clear: dict[str, str]) -> dict[str, bytes]:
    """`clear` (path -> text) sealed under the vector key, the n-th with nonce n * 12."""
    aead = AESGCM(VECTOR_KEY.secret)
    fields = {}
    for n, (path, text) in enumerate(clear.items()):
        nonce = bytes([n]) * 12
        context = field_context(
            event_id=event_id,
            session_id=session_id,
            user_id="user@example.com",
            tenant="acme",
            field=path,
        )
        fields[path] = b"\x01" + nonce + aead.encrypt(nonce, text.encode(), context)
    return fields


def sealed_sample() -> ConversationEvent:
    """A sealed message (content, name, tool call, metadata), with fixed nonces."""
    event_id, session_id = "00000000-0000-4000-8000-000000000100", "session-1"
    clear = {
        "content": "My card is 4111 1111 1111 1111",
        "name": "Ada",
        "tool_calls.0.name": "refund",
        "tool_calls.0.arguments": '{"order": 7731}',
        "metadata.order": "7731",
    }
    fields = _sealed_fields(event_id, session_id, clear)
    return ConversationEvent(
        event_id=event_id,
        session_id=session_id,
        user_id="user@example.com",
        tenant="acme",
        occurred_at=datetime(2026, 12, 6, 3, 4, 5, tzinfo=UTC),
        producer=ProducerInfo(client="tests", version="2"),
        payload=MessageAppended(
            message_id="m-9",
            role="user",
            content="",
            name="",
            tool_calls=(ToolCall(id="call_9", name="", arguments=""),),
            metadata={"order": ""},
        ),
        sealed=Sealed(key_id=VECTOR_KEY.key_id, fields=fields),
    )


def redacted_sample() -> ConversationEvent:
    """A tokenized message (v3): its placeholders, their redaction records, and the
    originals sealed at ``tokens.<name>``, with fixed nonces."""
    event_id, session_id = "00000000-0000-4000-8000-000000000101", "session-1"
    originals = {"CARD#1": "4111 1111 1111 1111", "EMAIL#1": "ada@example.com"}
    clear = {
        "content": "My card is [CARD#1], mail [EMAIL#1]",
        **{f"tokens.{name}": original for name, original in originals.items()},
    }
    redactions = tuple(
        Redaction(
            field="content",
            kind=name.partition("#")[0],
            placeholder=f"[{name}]",
            # As the producer makes it: under the owner's data key, purpose "pii".
            mac_key_id=VECTOR_KEY.key_id,
            mac=VECTOR_KEY.mac("pii", original.encode()).digest,
        )
        for name, original in originals.items()
    )
    return ConversationEvent(
        event_id=event_id,
        session_id=session_id,
        user_id="user@example.com",
        tenant="acme",
        occurred_at=datetime(2026, 12, 6, 3, 4, 6, tzinfo=UTC),
        producer=ProducerInfo(client="tests", version="3"),
        payload=MessageAppended(message_id="m-10", role="user", content=""),
        sealed=Sealed(key_id=VECTOR_KEY.key_id, fields=_sealed_fields(event_id, session_id, clear)),
        redactions=redactions,
        tokens=dict.fromkeys(originals, ""),
    )


def vector_events() -> list[ConversationEvent]:
    """What the newest version's vectors hold: every payload type, a sealed event and a
    redacted one."""
    return [*sample_events(), sealed_sample(), redacted_sample()]


def vector_file(version: int) -> Path:
    return VECTORS / f"ConversationEvent.v{version}.json"


def write_current_vectors() -> Path | None:
    """Write the newest version's vector file unless it exists (vectors are frozen)."""
    newest = schema_versions()[-1]
    path = vector_file(newest.version)
    if path.exists():
        return None
    codec = EventCodec()
    rows = [
        {
            "payload_type": type(event.payload).__name__,
            "event": event.model_dump(mode="json"),
            "bytes": codec.encode(event).hex(),
        }
        for event in vector_events()
    ]
    VECTORS.mkdir(exist_ok=True)
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    written = write_current_vectors()
    print(f"wrote {written}" if written else "the newest version's vectors exist already")
    sys.exit(0)
