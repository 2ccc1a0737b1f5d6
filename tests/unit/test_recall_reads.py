"""What a recall does with the hits the index returned, with no server: the read rule is
applied again where the content is opened, an erased session's hits are left out, an
erased user is refused, and sealed turns come back opened."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chatlog.processors.redis_recall_reader import RecallRequest
from chatlog.producers.commands import append_message
from chatlog.projections.opening import ViewOpener
from chatlog.projections.recall import RecallHit
from chatlog.projections.view import SealedFields, message_of, redacted
from chatlog.schemas.errors import Erased, InvalidId, InvalidInput
from chatlog.schemas.events import MessageAppended, epoch_millis
from chatlog.schemas.keyring import KeyEntries, Keyring
from chatlog.schemas.master_keys import LocalKeyProvider, new_master_key
from chatlog.schemas.position import Position
from chatlog.schemas.sealing import KeyScope, seal_event
from tests.key_fakes import MemoryKeyDirectory, MemoryKeyLog

PROVIDER = LocalKeyProvider.from_spec(new_master_key("k1"))


class Keys:
    def __init__(self) -> None:
        self.directory = MemoryKeyDirectory()
        self.writer = Keyring(PROVIDER, log=MemoryKeyLog(), directory=self.directory)

    def hit(self, user: str, session: str, offset: int, text: str, *, tenant="acme") -> RecallHit:
        """A hit as the index returns it: the message sealed under its owner's key."""
        event = append_message(session, user_id=user, role="user", content=text, tenant=tenant)
        event = seal_event(event, self.writer.for_writing(KeyScope.of(event)))
        payload = event.payload
        assert isinstance(payload, MessageAppended)
        message = message_of(
            payload, offset, epoch_millis(event.occurred_at), SealedFields.of(event)
        )
        return RecallHit(tenant, user, session, 1, message, score=1.0 - offset / 100)

    def entries(self, user: str, tenant="acme") -> KeyEntries:
        return self.directory.entries(KeyScope(tenant, user))


def request(**overrides) -> RecallRequest:
    args = {"user_id": "alice", "query": "my order?", "tenant": "acme", "k": 5, "session_id": None}
    return RecallRequest(**(args | overrides))


def test_the_hits_come_back_opened_most_relevant_first():
    keys = Keys()
    hits = [keys.hit("alice", "s1", 1, "order A7-1042"), keys.hit("alice", "s2", 2, "Lyon")]
    assert hits[0].message.content != "order A7-1042"  # sealed as stored
    turns = request().opened(hits, keys.entries("alice"), set(), ViewOpener(Keyring(PROVIDER)))
    assert [(t.session_id, t.content) for t in turns] == [("s1", "order A7-1042"), ("s2", "Lyon")]
    assert turns[0].position == Position(1, 1)
    assert turns[0].occurred_at.tzinfo == UTC
    assert turns[0].occurred_at <= datetime.now(UTC)


def test_another_owners_hit_and_an_erased_sessions_are_left_out():
    keys = Keys()
    keys.hit("alice", "warm", 0, "warm the keys up")
    hits = [
        keys.hit("alice", "s1", 1, "mine"),
        # As if the index's filter had failed: another user's, another tenant's alice.
        keys.hit("bob", "b1", 2, "bob's"),
        keys.hit("alice", "x1", 3, "other tenant's", tenant="other"),
        keys.hit("alice", "gone", 4, "in an erased session"),
    ]
    turns = request().opened(hits, keys.entries("alice"), {"gone"}, ViewOpener(Keyring(PROVIDER)))
    assert [t.content for t in turns] == ["mine"]


def test_a_redacted_copy_is_left_out():
    keys = Keys()
    hit = keys.hit("alice", "s1", 1, "my card is 4111")
    gone = RecallHit(hit.tenant, hit.user_id, hit.session_id, 1, redacted(hit.message), 0.9)
    turns = request().opened([gone], keys.entries("alice"), set(), ViewOpener(Keyring(PROVIDER)))
    assert turns == []


def test_an_erased_user_is_refused_even_with_no_hit():
    # The embedder deleted their vectors: nothing found must still answer "erased".
    erased = KeyEntries({}, erased_at=datetime(2026, 12, 1, tzinfo=UTC))
    with pytest.raises(Erased, match="alice of tenant acme was erased"):
        request().opened([], erased, set(), ViewOpener(Keyring(PROVIDER)))


def test_a_request_is_checked_before_anything_is_asked():
    with pytest.raises(InvalidId):
        request(user_id="alice*")
    with pytest.raises(InvalidId):
        request(session_id="a b")
    with pytest.raises(InvalidInput, match="empty"):
        request(query=" ")
    with pytest.raises(InvalidInput, match="k="):
        request(k=0)


def test_the_sessions_left_out_are_the_erased_and_the_others_as_the_read_model_says():
    sessions = ["mine", "erased", "bobs", "other-tenant", "expired"]
    replies = [
        {},  # the owner's key entries: none yet, not erased
        [b"acme", b"alice", b"open"],
        [b"acme", b"alice", b"erased"],
        [b"acme", b"bob", b"open"],  # alice wrote into bob's session; the projector refused
        [b"other", b"alice", b"closed"],
        [None, None, None],  # gone from the read-model: its turns are what recall is for
    ]
    entries, refused = request().checked(sessions, replies)
    assert entries.erased_at is None
    assert refused == {"erased", "bobs", "other-tenant"}
