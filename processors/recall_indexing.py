"""The embedder's logic, without Kafka or Redis: turn a batch of records into recall index work.

What does one batch become? Every user and assistant turn with text is embedded (one
call to the model for the whole batch) and becomes an `IndexedTurn` holding the message
*sealed*, as the read-model stores it; a redaction becomes the deletion of that turn's
vector; a session's `UserErased` event becomes the erasure of every vector of that
session (in every generation: the sink's job). With the last offset of each partition as
progress marks, that is an `IndexWork`, which the Kafka adapter hands to the index in one
atomic call and only then stores the batch's offsets.

What is embedded is the opened content: decrypted with the owner's key, but with the
producer's PII placeholders (``[EMAIL#1]``) left in place, because tokens are restored
only for their owner's eyes. The vector is derived personal data in clear; erasure
removes it (`chatlog.projections.redis_vectors`).

What is never indexed, and counted instead: records that do not decode (the projector
dead-letters them; the embedder does not write a second dead letter), events of an erased
owner (their key is destroyed), events that do not open, tool and system messages, turns
with no text. A turn appended and redacted in one batch is not embedded; its deletion is
written all the same.

Whose turn is it? Anyone who can publish can name another user's session and message
id (a producer sets the message id; a bare Kafka producer sets anything), so every
step is keyed by the event's owner (tenant and user) as well: a turn of Bob's never
replaces Alice's turn of the same id in the batch, Bob's redaction deletes only Bob's
turn of that id (`TurnRef`), and Bob's `UserErased` in Alice's session drops only Bob's
turns of it. The index applies the same rule to what it already holds
(`chatlog.projections.redis_vectors`: the first owner of a document keeps it). Where the
caller knows sessions' owners (the live embedder reads them from the read-model's views:
`owners`), an event of anyone else in such a session is left out altogether, counted
`foreign`, as the projector refuses it.
Pure: the model, the opener and the codec are handed in.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from chatlog.processors.embeddings import Embedder
from chatlog.processors.projection import Record, decode_record
from chatlog.projections.opening import ERASED, EventOpener, Opened
from chatlog.projections.recall import IndexedTurn, TurnRef
from chatlog.projections.view import SealedFields, message_of
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import DecodeError, InvalidInput, Undecryptable
from chatlog.schemas.events import (
    ConversationEvent,
    MessageAppended,
    MessageRedacted,
    Role,
    UserErased,
    epoch_millis,
)
from chatlog.schemas.sealing import KeyScope

__all__ = ["EMBEDDED_ROLES", "IndexWork", "Owners", "RecallIndexing", "SessionRef", "TurnRef"]

# The owners of those of the given sessions whose owner is known (a session's owner is
# the tenant and user of its first event, and never changes).
Owners = Callable[[Collection[str]], Mapping[str, KeyScope]]

# The turns a later question may be about; tool results and system prompts are not
# conversation memory.
EMBEDDED_ROLES = frozenset({Role.USER, Role.ASSISTANT})


@dataclass(frozen=True, slots=True)
class SessionRef:
    """A session whose vectors all go (its owner asked to be forgotten)."""

    tenant: str
    user_id: str
    session_id: str


@dataclass(slots=True)
class IndexWork:
    """What one batch asks of the index, and what it counted on the way."""

    # Erased first: a session in use again after its erasure keeps its new turns.
    erased_sessions: list[SessionRef] = field(default_factory=list)
    upserts: list[IndexedTurn] = field(default_factory=list)
    # Redactions: each deletes its turn if the redacting user owns it.
    deletions: list[TurnRef] = field(default_factory=list)
    # partition -> last offset in the batch: all of it is indexed once the work is applied.
    marks: dict[int, int] = field(default_factory=dict)
    events: int = 0  # records that decoded and opened
    undecodable: int = 0
    undecryptable: int = 0
    erased: int = 0  # events of an owner whose key is destroyed
    not_embedded: int = 0  # turns of other roles, or with no text
    foreign: int = 0  # events in a session someone else owns (`plan`'s `owners`)

    @property
    def records(self) -> int:
        """Every record of the batch, whatever became of it."""
        return self.events + self.undecodable + self.undecryptable + self.erased + self.foreign


class RecallIndexing:
    """Turns batches of records into `IndexWork`, embedding with `embedder`."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        codec: EventCodec | None = None,
        opener: EventOpener | None = None,
    ) -> None:
        self.embedder = embedder
        self.codec = codec or EventCodec()
        # Opens sealed content to embed it; without one, only events in the clear embed.
        self.opener = opener

    def plan(self, records: Sequence[Record], *, owners: Owners | None = None) -> IndexWork:
        """The index work for `records` (in log order per partition). `owners` tells the
        owners of the batch's sessions, where known: an event of anyone else in one of
        them is left out (`foreign`). Raises what the embedder raises
        (`EmbedderUnavailable`) or `owners` does: nothing of the batch is then done, and
        the caller tries the same batch again later."""
        work = IndexWork()
        decoded: list[tuple[Record, ConversationEvent]] = []
        for record in records:
            if record.offset > work.marks.get(record.partition, -1):
                work.marks[record.partition] = record.offset
            try:
                decoded.append((record, decode_record(self.codec, record)))
            except (DecodeError, InvalidInput):
                work.undecodable += 1
        # (sealed event, opened event, record) of each turn to embed, by owner, session and
        # message: another user's event of the same ids is another turn (the index keeps
        # the first owner's).
        turns: dict[TurnRef, tuple[ConversationEvent, ConversationEvent, Record]] = {}
        known = {} if owners is None else owners({e.session_id for _, e in decoded})
        for (record, event), opened in zip(decoded, self._open(decoded), strict=True):
            if opened is ERASED:
                work.erased += 1
                continue
            if isinstance(opened, Undecryptable):
                work.undecryptable += 1
                continue
            assert isinstance(opened, ConversationEvent)
            owner = known.get(opened.session_id)
            if owner is not None and owner != KeyScope(opened.tenant, opened.user_id):
                work.foreign += 1
                continue
            work.events += 1
            payload = opened.payload
            if isinstance(payload, MessageAppended):
                if payload.role in EMBEDDED_ROLES and payload.content.strip():
                    turns[_ref(opened, payload.message_id)] = (event, opened, record)
                else:
                    work.not_embedded += 1
            elif isinstance(payload, MessageRedacted):
                # Deleted even when this batch held the turn: another writer of the same
                # index (a replay's hand-over beside the live embedder) may have written it.
                ref = _ref(opened, payload.message_id)
                turns.pop(ref, None)
                work.deletions.append(ref)
            elif isinstance(payload, UserErased):
                erased = SessionRef(opened.tenant, opened.user_id, opened.session_id)
                for key in [key for key in turns if _session_of(key) == erased]:
                    del turns[key]
                work.erased_sessions.append(erased)
        if turns:
            texts = [_content(opened) for _, opened, _ in turns.values()]
            vectors = self.embedder.embed(texts)
            for (event, _, record), vector in zip(turns.values(), vectors, strict=True):
                work.upserts.append(_indexed(event, record, vector))
        return work

    def _open(self, decoded: list[tuple[Record, ConversationEvent]]) -> list[Opened]:
        events = [event for _, event in decoded]
        if self.opener is None or not events:
            return list(events)
        return self.opener.open_batch(events)


def _ref(event: ConversationEvent, message_id: str) -> TurnRef:
    return TurnRef(event.tenant, event.user_id, event.session_id, message_id)


def _session_of(ref: TurnRef) -> SessionRef:
    return SessionRef(ref.tenant, ref.user_id, ref.session_id)


def _content(opened: ConversationEvent) -> str:
    payload = opened.payload
    assert isinstance(payload, MessageAppended)
    return payload.content


def _indexed(event: ConversationEvent, record: Record, vector: Sequence[float]) -> IndexedTurn:
    """The turn as the index keeps it: the message as the read-model stores it, sealed
    fields and all (the projector's `message_of`)."""
    payload = event.payload
    assert isinstance(payload, MessageAppended)
    message = message_of(
        payload, record.offset, epoch_millis(event.occurred_at), SealedFields.of(event)
    )
    return IndexedTurn(
        tenant=event.tenant,
        user_id=event.user_id,
        session_id=event.session_id,
        partition=record.partition,
        message=message,
        vector=vector,
    )
