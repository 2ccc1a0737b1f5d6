"""Erasing a user: their keys destroyed, their sessions out of the read-model.

What does erasing a user do, in this order, and why this order?

1. Find the user's key ids in the key directory. If it has none, read the keys topic
   into it first (`catch_up`): a Redis that lost the directory must not make an erasure
   miss a key.
2. Publish the erasure (`Keyring.erase`): a tombstone for each key, then the erasure
   record, all acknowledged by the broker before anything else is done. From then on
   the log says "erased": a directory lost later is projected again from it, erasures
   included, and compaction takes the keys off the disks.
3. Mark the user erased in the key directory (`erase`: every key removed, the mark
   set). Readers of the log get ERASED for the user's events from then on, writers get
   `Erased`, and the view store refuses to write a view of the user.
4. Remove every session of the user from every generation of the read-model. After
   the mark, so that nothing is written back behind the removal: a view written before
   the mark is found, and one written after it is refused by the store (on one node a
   session's view and its index entry are one script's write; on a cluster the store
   reads the mark after writing and deletes what it wrote).
5. Remove every vector of the user from every generation's recall index (`vectors`):
   vectors are derived personal data in clear. Their own erasure mark is set first, so
   an embedder's write already under way cannot bring one back.

With an audit trail (`erase(..., audit=trail)`), one transaction records the user erased,
each key destroyed and each session removed from the read-model (a refusal or a failure
is recorded too); the records name the user by their pseudonym only.

Erasing twice is harmless: the second call finds the mark, publishes nothing and
removes whatever sessions are left (say `already_erased`). Erasing a user chatlog has
nothing of (no key in the directory or the keys topic, no erasure, no session) raises
`UnknownUser` and writes nothing: a mistyped id must not retire an id silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from chatlog.processors.audit import AuditTrail
from chatlog.schemas.audit import AuditAction
from chatlog.schemas.errors import Unavailable, UnknownUser
from chatlog.schemas.ids import validate_id
from chatlog.schemas.key_records import ErasureRecord
from chatlog.schemas.keyring import KeyEntries, Keyring
from chatlog.schemas.sealing import KeyScope

__all__ = ["ErasableDirectory", "Erasure", "ReadModelSessions", "RecallVectors", "UserEraser"]

log = logging.getLogger("chatlog.keys")


class ErasableDirectory(Protocol):
    """The key directory as an erasure uses it (`RedisKeyDirectory`)."""

    def entries(self, scope: KeyScope) -> KeyEntries:
        """What the directory holds for `scope`."""
        ...

    def erase(self, record: ErasureRecord) -> tuple[str, ...]:
        """Remove every key of the user and mark them erased; the key ids removed."""
        ...


class ReadModelSessions(Protocol):
    """A user's sessions in every generation of the read-model (`RedisUserSessions`)."""

    def find(self, scope: KeyScope) -> set[str]:
        """The ids of the sessions of `scope` held anywhere in the read-model."""
        ...

    def remove(self, scope: KeyScope) -> set[str]:
        """Delete them all; the ids of those removed."""
        ...


class RecallVectors(Protocol):
    """A user's vectors in every generation's recall index (`RedisRecallErasure`)."""

    def erase(self, scope: KeyScope) -> int:
        """Delete them all, and keep later writes of theirs out; the number deleted."""
        ...


@dataclass(frozen=True, slots=True)
class Erasure:
    """What erasing a user did."""

    tenant: str
    user_id: str
    key_ids: tuple[str, ...]  # destroyed by this call (none if already erased)
    sessions_removed: int  # from the read-model, by this call
    erased_at: datetime  # the first erasure's time when erased before
    already_erased: bool
    seconds: float
    vectors_removed: int = 0  # from the recall index, by this call

    def as_dict(self) -> dict[str, Any]:
        """For the CLI and JSON: the time in ISO 8601."""
        return {
            "tenant": self.tenant,
            "user_id": self.user_id,
            "key_ids": list(self.key_ids),
            "sessions_removed": self.sessions_removed,
            "vectors_removed": self.vectors_removed,
            "erased_at": self.erased_at.isoformat(timespec="milliseconds"),
            "already_erased": self.already_erased,
            "seconds": round(self.seconds, 3),
        }

    def audit_details(self) -> dict[str, object]:
        """What the audit trail records of it: counts and times, nothing personal."""
        return {
            "keys_destroyed": len(self.key_ids),
            "sessions_removed": self.sessions_removed,
            "vectors_removed": self.vectors_removed,
            "already_erased": self.already_erased,
            "erased_at": self.erased_at.isoformat(timespec="milliseconds"),
        }


class UserEraser:
    """Erases users, from built parts (`chatlog.wiring.eraser` builds them from settings)."""

    def __init__(
        self,
        *,
        keyring: Keyring,
        directory: ErasableDirectory,
        catch_up: Callable[[], object],
        sessions: ReadModelSessions,
        keys_topic: str = "chatlog.keys",
        vectors: RecallVectors | None = None,
    ) -> None:
        # The keyring of the process's producer, so that it stops sealing for the user.
        self.keyring = keyring
        self.directory = directory
        self.catch_up = catch_up
        self.sessions = sessions
        self.keys_topic = keys_topic
        self.vectors = vectors

    def _mark(
        self, scope: KeyScope, record: ErasureRecord, key_ids: tuple[str, ...]
    ) -> tuple[str, ...]:
        """Mark the user erased in the directory; the keys made meanwhile, tombstoned."""
        # A writer may have made a key between the look-up and the mark: it is in the
        # directory but has no tombstone yet, and would stay on the keys topic's disks.
        made_meanwhile = tuple(set(self.directory.erase(record)) - set(key_ids))
        if made_meanwhile:
            self.keyring.destroy(scope, made_meanwhile)
        return made_meanwhile

    def erase(
        self, user_id: str, *, tenant: str = "default", audit: AuditTrail | None = None
    ) -> Erasure:
        """Erase the user (see the module docstring for the steps), recorded in `audit`."""
        validate_id(user_id, field="user_id")
        validate_id(tenant, field="tenant")
        if audit is None:
            return self._erase(user_id, tenant, removed_ids=set())
        removed: set[str] = set()
        try:
            erasure = self._erase(user_id, tenant, removed_ids=removed)
        except BaseException as exc:
            audit.failed(AuditAction.USER_ERASED, exc, tenant=tenant, user_id=user_id)
            raise
        # One transaction: the user, each key destroyed, each session removed.
        audit.record_many(
            [
                audit.entry(
                    AuditAction.USER_ERASED,
                    tenant=tenant,
                    user_id=user_id,
                    details=erasure.audit_details(),
                ),
                *(
                    audit.entry(
                        AuditAction.KEY_DESTROYED,
                        tenant=tenant,
                        user_id=user_id,
                        details={"key_id": key_id},
                    )
                    for key_id in erasure.key_ids
                ),
                *(
                    audit.entry(
                        AuditAction.SESSION_ERASED,
                        tenant=tenant,
                        user_id=user_id,
                        session_id=session,
                    )
                    for session in sorted(removed)
                ),
            ]
        )
        return erasure

    def _erase(self, user_id: str, tenant: str, *, removed_ids: set[str]) -> Erasure:
        scope = KeyScope(tenant, user_id)
        started = time.monotonic()
        # The directory is a copy: the keys topic may hold a key it lacks (a writer that
        # could not reach Redis made one), and a key missed here would never be shredded.
        self.catch_up()
        entries = self.directory.entries(scope)
        already = entries.erased_at is not None
        key_ids: tuple[str, ...] = ()
        record: ErasureRecord | None = None
        if entries.erased_at is not None:
            erased_at = entries.erased_at
        else:
            key_ids = tuple(sorted(entries.keys))
            if not key_ids and not self.sessions.find(scope):
                raise UnknownUser(
                    f"nothing to erase for user {user_id} of tenant {tenant}: no data key in "
                    f"the key directory or in {self.keys_topic}, and no session in the "
                    f"read-model; nothing was written. Check the user id and the tenant "
                    f"(`chatlog sessions {user_id}` lists their sessions)",
                    user_id=user_id,
                    tenant=tenant,
                )
            record = self.keyring.erase(scope, key_ids=key_ids)
            erased_at = record.erased_at
        try:
            if record is not None:
                key_ids += self._mark(scope, record, key_ids)
            removed = self.sessions.remove(scope)
            vectors = 0 if self.vectors is None else self.vectors.erase(scope)
        except Unavailable as exc:
            # The keys are destroyed in the log already: say so, not just "unavailable".
            raise type(exc)(
                f"{exc.message}. User {user_id}'s keys are destroyed (their tombstones are "
                f"in {self.keys_topic}), but the erasure is not finished: run it again "
                f"until it returns",
                **exc.context,
            ) from exc
        removed_ids.update(removed)
        erasure = Erasure(
            tenant=tenant,
            user_id=user_id,
            key_ids=key_ids,
            sessions_removed=len(removed),
            erased_at=erased_at,
            already_erased=already,
            seconds=time.monotonic() - started,
            vectors_removed=vectors,
        )
        log.info("erased user %s of tenant %s: %s", user_id, tenant, erasure)
        return erasure
