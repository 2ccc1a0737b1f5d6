"""The embedder's core: which records become vectors, deletions and erasures, and how."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from chatlog.processors.projection import Record
from chatlog.processors.recall_indexing import RecallIndexing, SessionRef
from chatlog.producers.commands import append_message, new_event
from chatlog.projections.opening import ViewOpener
from chatlog.projections.recall import TurnRef
from chatlog.projections.view import SessionView
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.errors import EmbedderUnavailable
from chatlog.schemas.events import MessageRedacted, UserErased
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.sealing import KeyScope
from tests.unit.test_opening import PROVIDER, Keys

CODEC = EventCodec()


class Recorder:
    """An embedder that records what it was asked and answers one short vector a text."""

    model, dimension = "recorder", 2

    def __init__(self, *, down: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.down = down

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.down:
            raise EmbedderUnavailable("the embeddings endpoint is down")
        self.calls.append(list(texts))
        return [[float(len(text)), 1.0] for text in texts]

    async def aembed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed(texts)


def records(*events, partition: int = 0, start: int = 0) -> list[Record]:
    return [
        Record("events", partition, start + i, e.session_id.encode(), CODEC.encode(e))
        for i, e in enumerate(events)
    ]


def say(session: str, role: str, text: str, user: str = "u1"):
    return append_message(session, user_id=user, role=role, content=text)


def test_user_and_assistant_turns_are_embedded_in_one_call_tool_and_blank_ones_counted():
    embedder = Recorder()
    batch = records(
        say("a", "user", "my order is 1234"),
        say("a", "assistant", "found it"),
        say("a", "tool", '{"status": "shipped"}'),
        say("a", "system", "be brief"),
        say("a", "user", "   "),
    )
    work = RecallIndexing(embedder).plan(batch)
    assert embedder.calls == [["my order is 1234", "found it"]]
    assert [t.message.content for t in work.upserts] == ["my order is 1234", "found it"]
    assert [t.vector for t in work.upserts] == [[16.0, 1.0], [8.0, 1.0]]
    assert [(t.partition, t.message.offset) for t in work.upserts] == [(0, 0), (0, 1)]
    assert (work.events, work.not_embedded, work.records) == (5, 3, 5)
    assert work.marks == {0: 4}


def test_a_redaction_deletes_the_vector_and_one_in_the_same_batch_keeps_it_from_being_embedded():
    early = say("a", "user", "written in an earlier batch")
    late = say("a", "user", "my card is 4111")
    redact = [
        new_event("a", user_id="u1", payload=MessageRedacted(message_id=m.payload.message_id))
        for m in (early, late)
    ]
    embedder = Recorder()
    work = RecallIndexing(embedder).plan(records(late, *redact, start=10))
    assert work.upserts == []
    assert embedder.calls == []
    assert work.deletions == [
        TurnRef("default", "u1", "a", early.payload.message_id),
        TurnRef("default", "u1", "a", late.payload.message_id),
    ]
    assert work.marks == {0: 12}


def test_another_users_turn_of_the_same_ids_does_not_replace_the_owners_in_the_batch():
    # Bob names Alice's session and her message id: two turns, Alice's first, so the
    # index (first owner wins) keeps hers.
    alice = say("a", "user", "my order is A7-1042", user="alice")
    bob = append_message(
        "a", user_id="bob", role="user", content="forged", message_id=alice.payload.message_id
    )
    work = RecallIndexing(Recorder()).plan(records(alice, bob))
    assert [(t.user_id, t.message.content) for t in work.upserts] == [
        ("alice", "my order is A7-1042"),
        ("bob", "forged"),
    ]


def test_another_users_redaction_or_erasure_in_the_batch_keeps_the_owners_turn():
    alice = say("a", "user", "my order is A7-1042", user="alice")
    redaction = new_event(
        "a", user_id="bob", payload=MessageRedacted(message_id=alice.payload.message_id)
    )
    erasure = new_event("a", user_id="bob", payload=UserErased())
    work = RecallIndexing(Recorder()).plan(records(alice, redaction, erasure))
    assert [t.message.content for t in work.upserts] == ["my order is A7-1042"]
    # What they ask is asked in Bob's name: the index deletes only Bob's documents.
    assert work.deletions == [TurnRef("default", "bob", "a", alice.payload.message_id)]
    assert work.erased_sessions == [SessionRef("default", "bob", "a")]


def test_with_the_sessions_owners_known_anyone_elses_events_in_them_are_left_out():
    alice = say("a", "user", "my order is A7-1042", user="alice")
    forged = [
        say("a", "user", "a new id of bob's", user="bob"),
        new_event("a", user_id="bob", payload=MessageRedacted(message_id="m1")),
        new_event("a", user_id="bob", payload=UserErased()),
    ]
    bobs_own = say("b", "user", "in his own session", user="bob")
    asked: list[set[str]] = []

    def owners(sessions):
        asked.append(set(sessions))
        return {"a": KeyScope("default", "alice")}  # "b": not in the read-model yet

    work = RecallIndexing(Recorder()).plan(records(alice, *forged, bobs_own), owners=owners)
    assert asked == [{"a", "b"}]
    assert [(t.user_id, t.message.content) for t in work.upserts] == [
        ("alice", "my order is A7-1042"),
        ("bob", "in his own session"),
    ]
    assert (work.deletions, work.erased_sessions) == ([], [])
    assert (work.foreign, work.events, work.records) == (3, 2, 5)


def test_a_sessions_erasure_drops_its_earlier_turns_and_keeps_a_later_one():
    before = say("a", "user", "before the erasure")
    other = say("b", "user", "another session", user="u2")
    erased = new_event("a", user_id="u1", payload=UserErased())
    after = say("a", "user", "the session in use again")
    work = RecallIndexing(Recorder()).plan(records(before, other, erased, after))
    assert work.erased_sessions == [SessionRef("default", "u1", "a")]
    assert [t.message.content for t in work.upserts] == [
        "another session",
        "the session in use again",
    ]


def test_sealed_turns_are_embedded_opened_and_stored_sealed_as_the_read_model_keeps_them():
    keys = Keys()
    sealed = keys.sealed("a", "the secret is 42")
    embedder = Recorder()
    work = RecallIndexing(embedder, opener=keys.opener()).plan(records(sealed))
    assert embedder.calls == [["the secret is 42"]]
    [turn] = work.upserts
    assert "42" not in turn.message.content
    assert turn.message.sealed is not None
    view = SessionView("a", "u1", "default", 0, 0, 0, 0, messages=(turn.message,))
    entries = keys.directory.entries(KeyScope.of(sealed))
    opened = ViewOpener(Keyring(PROVIDER)).open(view, entries)
    assert opened.messages[0].content == "the secret is 42"


def test_an_erased_owners_turns_and_bytes_that_do_not_decode_are_counted_never_embedded():
    keys = Keys()
    gone, kept = keys.sealed("a", "forget me"), keys.sealed("b", "keep me", "u2")
    scope = KeyScope.of(gone)
    keys.directory.erase(keys.writer.erase(scope, key_ids=(gone.sealed.key_id,)))
    junk = Record("events", 1, 7, b"a", b"not an event")
    embedder = Recorder()
    work = RecallIndexing(embedder, opener=keys.opener()).plan([*records(gone, kept), junk])
    assert embedder.calls == [["keep me"]]
    assert (work.erased, work.undecodable, work.events) == (1, 1, 1)
    assert work.marks == {0: 1, 1: 7}


def test_an_embedder_that_is_down_fails_the_whole_batch_so_it_is_tried_again():
    with pytest.raises(EmbedderUnavailable):
        RecallIndexing(Recorder(down=True)).plan(records(say("a", "user", "hello")))
