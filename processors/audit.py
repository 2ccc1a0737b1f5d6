"""`AuditTrail`: how chatlog's operations write the audit trail, in one call each.

    trail.record(AuditAction.MESSAGE_REDACTED, tenant=t, user_id=u, session_id=s,
                 details={"message_id": m})

The trail turns a user id into its pseudonym (a keyed HMAC under the current master key,
`user_pseudonym`) before anything is written, stamps the principal, and hands the record
to its `AuditLog` (`chatlog.processors.kafka_audit.KafkaAuditWriter`), which chains it.
`operation` wraps a whole operation and records how it ended: ok, refused (a `Refused`
error: an erased user's export) or failed (anything else, re-raised as it was).

Who is the principal? chatlog has no authenticated principals yet: the caller names one
(`ChatLog(..., principal=...)`), else `CHATLOG_PRINCIPAL`, else ``<os user>@<host>``. The
HTTP gateway (planned) will pass the principal it authenticated. Pure: no network here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypedDict, Unpack

from chatlog.schemas.audit import AuditRecord, Outcome
from chatlog.schemas.errors import ChatlogError, Refused
from chatlog.schemas.master_keys import KeyProvider, user_pseudonym
from chatlog.schemas.position import Position

__all__ = ["AuditFields", "AuditLog", "AuditSubject", "AuditTrail"]

log = logging.getLogger("chatlog.audit")


class AuditLog(Protocol):
    """Where audit records go (`KafkaAuditWriter`): appended in order, in one chain."""

    def append(self, records: Sequence[AuditRecord]) -> list[Position]:
        """Append `records` at once (all or none); their positions once they are stored."""
        ...

    def close(self) -> None:
        """Release its connections."""
        ...


class AuditSubject(TypedDict, total=False):
    """Whom a record is about, each part optional."""

    tenant: str | None
    user_id: str | None
    session_id: str | None


class AuditFields(AuditSubject, total=False):
    """What a record says beside its action: written once, for every method that makes
    a record."""

    outcome: str
    details: Mapping[str, object] | None


@dataclass(frozen=True, slots=True)
class AuditTrail:
    """Writes audit records for `principal`; names users by their pseudonyms only."""

    log: AuditLog
    provider: KeyProvider
    principal: str
    _pseudonyms: dict[tuple[str, str], str] = field(default_factory=dict, compare=False)

    def as_principal(self, principal: str | None) -> AuditTrail:
        """The same trail for another principal (None: this one)."""
        if principal is None or principal == self.principal:
            return self
        return AuditTrail(self.log, self.provider, principal, self._pseudonyms)

    def pseudonym(self, *, tenant: str, user_id: str) -> str:
        """The user's pseudonym under the current master key."""
        found = self._pseudonyms.get((tenant, user_id))
        if found is None:
            found = str(user_pseudonym(self.provider, tenant=tenant, user_id=user_id))
            if len(self._pseudonyms) > 10_000:  # a long-lived process: bounded
                self._pseudonyms.clear()
            self._pseudonyms[(tenant, user_id)] = found
        return found

    def entry(self, action: str, **fields: Unpack[AuditFields]) -> AuditRecord:
        """The record of `action`, not yet written (see `record`)."""
        tenant, user_id = fields.get("tenant"), fields.get("user_id")
        if user_id is not None and tenant is None:
            tenant = "default"
        return AuditRecord(
            action=action,
            outcome=fields.get("outcome", Outcome.OK),
            principal=self.principal,
            tenant=tenant,
            user=None if user_id is None else self.pseudonym(tenant=tenant or "", user_id=user_id),
            session_id=fields.get("session_id"),
            details={k: str(v) for k, v in (fields.get("details") or {}).items()},
        )

    def record(self, action: str, **fields: Unpack[AuditFields]) -> Position:
        """Write one record; returns its position once it is stored (chained).

        `details` must hold nothing personal: ids, counts, times. A user is named by
        `user_id` (and `tenant`, default "default"), which is written as its pseudonym.
        """
        [position] = self.log.append([self.entry(action, **fields)])
        return position

    def close(self) -> None:
        """Release the log's connections (a trail shared by principals closes once)."""
        self.log.close()

    def record_many(self, records: Sequence[AuditRecord]) -> list[Position]:
        """Write `records` (made by `entry`) at once, in order: one transaction."""
        return self.log.append(records) if records else []

    @contextmanager
    def operation(
        self,
        action: str,
        **subject: Unpack[AuditSubject],
    ) -> Iterator[dict[str, object]]:
        """Record `action` once the block ends, with its outcome; the block may add
        details to the dict it is given. An error of the block is re-raised as it was,
        even if its record cannot be written (that is logged)."""
        details: dict[str, object] = {}
        try:
            yield details
        except Exception as exc:  # not on Ctrl-C: a blocking write must not hold it up
            self.failed(action, exc, **subject, details=details)
            raise
        self.record(action, **subject, details=details)

    def failed(self, action: str, error: BaseException, **fields: Unpack[AuditFields]) -> None:
        """Record that `action` ended with `error`: refused (a `Refused` error) or failed.

        Never raises: the caller re-raises `error`, which must not be masked by an audit
        write that failed too (that is logged).
        """
        outcome = Outcome.REFUSED if isinstance(error, Refused) else Outcome.FAILED
        try:
            marked: AuditFields = {
                **fields,
                "outcome": outcome,
                "details": {**(fields.get("details") or {}), "error": type(error).__name__},
            }
            self.record(action, **marked)
        except ChatlogError as audit_error:
            log.error("could not audit the %s %s: %s", outcome, action, audit_error)
