"""`KafkaExporter`: every session of a user, read from the events topic (not Redis).

Why the log? The read-model forgets: sessions expire from Redis (TTL), the overflow past
`CHATLOG_MAX_OVERFLOW` is dropped from it. The log keeps everything, so an export reads
every partition of the events topic from its start up to its end as it was when the
export began, decodes every record (the user is in each event's envelope, which is not
sealed), opens the user's events with their keys and folds them (`UserExport`). A
record of a session known to be someone else's is skipped by its key, undecoded.

What it costs: a whole-topic scan, like a replay without writes: every record is read,
the first of each session decoded, and only the user's events opened (docs/privacy.md
has the figures). Memory holds the user's
sessions and the ids of the sessions owned by others. An admin operation, not a hot path.

An erased user is refused (`Erased`) before anything is read, and if an erasure lands
while the scan runs; a user the log holds no session of is `UnknownUser`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import TopicPartition

from chatlog.processors.audit import AuditTrail
from chatlog.processors.export import UserExport
from chatlog.processors.kafka_consumer import groupless_consumer
from chatlog.processors.kafka_history import kafka_call, ranges_records
from chatlog.producers.kafka_topics import topic_partitions
from chatlog.projections.opening import EventOpener
from chatlog.projections.view import DEFAULT_POLICY, WindowPolicy
from chatlog.schemas.audit import AuditAction
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import DecodeError, Erased, Undecryptable, UnknownUser
from chatlog.schemas.events import ConversationEvent
from chatlog.schemas.ids import validate_id
from chatlog.schemas.keyring import KeyEntries
from chatlog.schemas.placeholders import revealed
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope

__all__ = ["KafkaExporter"]

log = logging.getLogger("chatlog.export")


def _erased(tenant: str, user_id: str, at: datetime | None) -> Erased:
    when = f" at {at.isoformat(timespec='milliseconds')}" if at is not None else ""
    return Erased(
        f"user {user_id} of tenant {tenant} was erased{when}: their keys are destroyed, so "
        f"nothing of theirs can be read or exported",
        user_id=user_id,
        tenant=tenant,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaExporter:
    """Exports a user's sessions from the events topic (`chatlog.wiring.exporter`)."""

    bootstrap_servers: str
    topic: str
    opener: EventOpener
    codec: EventCodec = field(default_factory=EventCodec)
    config: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 30.0
    # The read-model's window policy: the summary exported is the one it serves.
    policy: WindowPolicy = DEFAULT_POLICY

    def export(
        self, user_id: str, *, tenant: str = "default", audit: AuditTrail | None = None
    ) -> dict[str, Any]:
        """The user's export document (docs/privacy.md, "Export"), recorded in `audit`
        (a refusal or a failure too)."""
        if audit is None:
            return self._export(user_id, tenant)
        with audit.operation(AuditAction.USER_EXPORTED, tenant=tenant, user_id=user_id) as details:
            document = self._export(user_id, tenant)
            details["sessions"] = len(document["sessions"])
        return document

    def _export(self, user_id: str, tenant: str) -> dict[str, Any]:
        validate_id(user_id, field="user_id")
        validate_id(tenant, field="tenant")
        scope = KeyScope(tenant, user_id)
        known: dict[KeyScope, KeyEntries] = {}
        known.update(self.opener.directory.entries_many([scope]))
        if known[scope].erased_at is not None:
            raise _erased(tenant, user_id, known[scope].erased_at)
        exported_at = datetime.now(UTC)
        fold = UserExport(tenant=tenant, user_id=user_id, policy=self.policy)
        consumer = groupless_consumer(self.bootstrap_servers, self.config, purpose="export")
        try:
            count = topic_partitions(
                consumer, self.topic, bootstrap_servers=self.bootstrap_servers, timeout=self.timeout
            )
            ranges: dict[int, tuple[int, int]] = {}
            for partition in range(count):
                ranges[partition] = kafka_call(
                    consumer.get_watermark_offsets,
                    TopicPartition(self.topic, partition),
                    timeout=self.timeout,
                )
            undecodable = 0
            for message in ranges_records(consumer, self.topic, ranges, self.timeout):
                key = message.key()
                if key is not None and key.decode("utf-8", "replace") in fold.others:
                    continue  # a session someone else owns: not even decoded
                try:
                    event = self.codec.decode(message.value() or b"")
                except DecodeError:
                    undecodable += 1  # dead-lettered by the projector: in no view
                    continue
                if key is None or key.decode("utf-8", "replace") != event.session_id:
                    undecodable += 1  # keyed other than its session: dead-lettered too
                    continue
                position = Position(message.partition() or 0, message.offset() or 0)
                if not fold.wants(event, position):
                    continue
                [opened] = self.opener.open_batch([event], known=known)
                if isinstance(opened, Undecryptable):
                    undecodable += 1  # undecryptable: dead-lettered by the projector too
                    continue
                if not isinstance(opened, ConversationEvent):  # ERASED
                    raise _erased(tenant, user_id, None)
                # The user's own copy: tokenized originals go back in (the owner's reveal).
                fold.take(revealed(opened), position)
        finally:
            consumer.close()
        # The user's entries were read once, before the scan, and the opener keeps using
        # them: an erasure that landed meanwhile is seen here, before anything is handed out.
        erased_at = self.opener.directory.entries_many([scope])[scope].erased_at
        if erased_at is not None:
            raise _erased(tenant, user_id, erased_at)
        if not fold.views:
            raise UnknownUser(
                f"no session of user {user_id} of tenant {tenant} in {self.topic}; nothing "
                f"to export. Check the user id and the tenant",
                user_id=user_id,
                tenant=tenant,
            )
        if undecodable or fold.refused:
            log.warning(
                "export of %s: skipped %d record(s) the projector dead-letters and %d "
                "event(s) of theirs written into sessions they do not own",
                user_id,
                undecodable,
                fold.refused,
            )
        return fold.document(
            topic=self.topic,
            through={p: high for p, (_, high) in ranges.items()},
            exported_at=exported_at,
        )
