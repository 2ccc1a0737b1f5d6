"""The audit trail's contract: the record, its codec, and the hash chain that makes it
tamper-evident. Pure: no network, so the chain rules are unit-tested as they are.

What is an audit record? One operation that touched personal data outside its owner's own
path, or that changed what can be read at all: a session created, a message redacted, a
session or user erased, a key destroyed or rotated, an export, a replay, an operator's read
that bypasses ownership (`chatlog tail`, `chatlog context --as-of`). Each says who (the
principal), what (the action), when, the outcome, the session, and the user, by a keyed
HMAC of their tenant and id (`chatlog.schemas.master_keys.user_pseudonym`), never by the
id itself: the trail survives the user's erasure and holds nothing personal.

Why a chain? Each record carries the SHA-256 of the previous record's bytes in its
partition (`prev_hash`), the first one a fixed `GENESIS`. A record inserted, altered or
removed by anyone writing to the topic outside chatlog breaks the chain at a position
`verify_partition` names. The hash covers the record's value exactly as it is on the
topic, so the check needs no schema knowledge beyond reading `prev_hash`.

Who keeps one chain per partition? The writer (`chatlog.processors.kafka_audit`): one
transactional producer per partition, which fences every other writer of that partition
before it reads the last record's hash.
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from chatlog.schemas.errors import DecodeError, InvalidInput

__all__ = [
    "GENESIS",
    "AuditAction",
    "AuditCodec",
    "AuditRecord",
    "ChainBreak",
    "Outcome",
    "PartitionChain",
    "record_hash",
    "verify_partition",
]

GENESIS = hashlib.sha256(b"chatlog.audit genesis v1").digest()
"""The `prev_hash` of the first record of every partition."""

_SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_PRINCIPAL_MAX = 256


class AuditAction(enum.StrEnum):
    """What was done (past tense, as the events are named)."""

    SESSION_CREATED = "session_created"
    MESSAGE_REDACTED = "message_redacted"
    SESSION_ERASED = "session_erased"
    USER_ERASED = "user_erased"
    KEY_DESTROYED = "key_destroyed"
    KEYS_ROTATED = "keys_rotated"
    USER_EXPORTED = "user_exported"
    REPLAY_STARTED = "replay_started"
    REPLAY_FINISHED = "replay_finished"
    OPERATOR_READ = "operator_read"


class Outcome(enum.StrEnum):
    """How it ended."""

    OK = "ok"
    REFUSED = "refused"  # understood and answered "no" (an erased user's export, say)
    FAILED = "failed"  # it did not finish (no broker, no Redis, interrupted)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One audit record. `prev_hash` is set by the writer, which alone knows it."""

    action: str
    principal: str
    outcome: str = Outcome.OK
    tenant: str | None = None
    user: str | None = None  # a pseudonym, '<master key id>:<hex HMAC>'
    session_id: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    audit_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    prev_hash: bytes = b""

    def __post_init__(self) -> None:
        if self.action not in AuditAction.__members__.values():
            raise InvalidInput(f"unknown audit action {self.action!r}")
        if self.outcome not in Outcome.__members__.values():
            raise InvalidInput(f"unknown audit outcome {self.outcome!r}")
        principal = self.principal
        if not principal or len(principal) > _PRINCIPAL_MAX or not principal.isprintable():
            raise InvalidInput(
                f"principal {principal!r}: 1-{_PRINCIPAL_MAX} printable characters",
                setting="CHATLOG_PRINCIPAL",
            )
        if self.at.tzinfo is None:
            raise InvalidInput("an audit record's time must be timezone-aware")

    @property
    def key(self) -> str:
        """The Kafka key: the subject (user, else session, else action)."""
        return self.user or self.session_id or self.action

    def as_dict(self) -> dict[str, Any]:
        """For `chatlog audit --json` and the listing: the time in ISO 8601."""
        return {
            "at": self.at.astimezone(UTC).isoformat(timespec="milliseconds"),
            "principal": self.principal,
            "action": self.action,
            "outcome": self.outcome,
            "tenant": self.tenant,
            "user": self.user,
            "session_id": self.session_id,
            "details": dict(self.details),
            "audit_id": self.audit_id,
        }


@cache
def _schema() -> tuple[Any, bytes]:
    text = (resources.files("chatlog.schemas") / "avro" / "AuditEvent.v1.avsc").read_text(
        encoding="utf-8"
    )
    parsed = fastavro.parse_schema(json.loads(text))
    digest = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    return parsed, digest


class AuditCodec:
    """AuditRecord <-> bytes: Avro single-object encoding (C3 01, the schema's
    CRC-64-AVRO fingerprint, the body), as the events are written without a registry."""

    def encode(self, record: AuditRecord) -> bytes:
        """The record's value on the topic."""
        parsed, digest = _schema()
        out = io.BytesIO()
        out.write(_SINGLE_OBJECT_MAGIC + digest)
        fastavro.schemaless_writer(
            out,
            parsed,
            {
                "audit_id": record.audit_id,
                "at": record.at,
                "principal": record.principal,
                "action": str(record.action),
                "outcome": str(record.outcome),
                "tenant": record.tenant,
                "user": record.user,
                "session_id": record.session_id,
                "details": dict(record.details),
                "prev_hash": record.prev_hash,
            },
        )
        return out.getvalue()

    def decode(self, value: bytes) -> AuditRecord:
        """The record in `value`; `DecodeError` if it is not one."""
        parsed, digest = _schema()
        if value[:2] != _SINGLE_OBJECT_MAGIC or value[2:10] != digest:
            raise DecodeError(
                f"not an audit record: expected C3 01 and the AuditEvent fingerprint, got "
                f"{value[:10].hex(' ') or 'no bytes'}"
            )
        body = io.BytesIO(value)
        body.seek(10)
        try:
            raw = fastavro.schemaless_reader(body, parsed, None)
            assert isinstance(raw, dict)
            return AuditRecord(
                audit_id=raw["audit_id"],
                at=raw["at"],
                principal=raw["principal"],
                action=raw["action"],
                outcome=raw["outcome"],
                tenant=raw["tenant"],
                user=raw["user"],
                session_id=raw["session_id"],
                details=raw["details"],
                prev_hash=raw["prev_hash"],
            )
        except Exception as exc:  # fastavro (and the record's checks) raise many kinds
            raise DecodeError(f"not an audit record: {exc}") from exc


def record_hash(value: bytes) -> bytes:
    """What the next record of the partition carries as `prev_hash`: SHA-256 of `value`."""
    return hashlib.sha256(value).digest()


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """Where a partition's chain breaks, and how."""

    partition: int
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"partition {self.partition} offset {self.offset}: {self.reason}"


@dataclass(frozen=True, slots=True)
class PartitionChain:
    """The chain of one partition, as `verify_partition` found it."""

    partition: int
    records: int
    first_offset: int | None
    last_offset: int | None
    head: bytes  # the hash the next record must carry
    anchored: bool  # False: retention removed the partition's start; the first is trusted
    breaks: tuple[ChainBreak, ...] = ()

    @property
    def intact(self) -> bool:
        """No break found."""
        return not self.breaks


def verify_partition(
    partition: int,
    records: Iterable[tuple[int, bytes]],
    *,
    from_start: bool = True,
    codec: AuditCodec | None = None,
) -> PartitionChain:
    """Check one partition's chain: (offset, value) in offset order.

    `from_start`: the records begin at the partition's first offset ever written (0), so
    the first must carry `GENESIS`. When retention has removed the start, the first
    record's `prev_hash` cannot be checked and is taken as the anchor. After a break the
    check goes on from the record found there, so one inserted record is one break, and
    the records after it that chain to it are not reported again.
    """
    codec = codec or AuditCodec()
    expected: bytes | None = GENESIS if from_start else None
    breaks: list[ChainBreak] = []
    first: int | None = None
    last: int | None = None
    count = 0
    for offset, value in records:
        count += 1
        first = offset if first is None else first
        previous, last = last, offset
        try:
            carried = codec.decode(value).prev_hash
        except DecodeError as exc:
            breaks.append(ChainBreak(partition, offset, exc.message))
        else:
            if expected is not None and carried != expected:
                after = "the genesis value" if previous is None else f"offset {previous}"
                breaks.append(
                    ChainBreak(
                        partition,
                        offset,
                        f"prev_hash {carried.hex()[:16]}… is not the hash of {after} "
                        f"({expected.hex()[:16]}…): a record was inserted, altered or removed",
                    )
                )
        expected = record_hash(value)
    return PartitionChain(
        partition=partition,
        records=count,
        first_offset=first,
        last_offset=last,
        head=GENESIS if expected is None else expected,
        anchored=from_start,
        breaks=tuple(breaks),
    )
