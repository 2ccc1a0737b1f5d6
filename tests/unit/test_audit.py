"""The audit trail's pure parts: the record and its codec, the hash chain and its check,
the trail's pseudonyms and outcomes (against a list-backed `AuditLog`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from chatlog.processors.audit import AuditTrail
from chatlog.schemas.audit import (
    GENESIS,
    AuditAction,
    AuditCodec,
    AuditRecord,
    Outcome,
    record_hash,
    verify_partition,
)
from chatlog.schemas.errors import DecodeError, InvalidInput, StoreUnavailable, UnknownUser
from chatlog.schemas.master_keys import LocalKeyProvider, new_master_key, user_pseudonyms
from chatlog.schemas.position import Position

CODEC = AuditCodec()


def record(n: int = 0, **fields: object) -> AuditRecord:
    values: dict[str, object] = {
        "action": AuditAction.SESSION_CREATED,
        "principal": "ops@host",
        "session_id": f"s-{n}",
        "at": datetime(2026, 12, 6, 12, 0, n, tzinfo=UTC),
    }
    values.update(fields)
    return AuditRecord(**values)  # type: ignore[arg-type]


def chained(records: Sequence[AuditRecord], head: bytes = GENESIS) -> list[bytes]:
    """The values a writer puts on a partition, each carrying the previous one's hash."""
    values = []
    for each in records:
        value = CODEC.encode(replace(each, prev_hash=head))
        values.append(value)
        head = record_hash(value)
    return values


class ListLog:
    """An `AuditLog` that keeps what it is given, chained as the Kafka writer chains."""

    def __init__(self) -> None:
        self.values: list[bytes] = []
        self.fail: Exception | None = None

    def append(self, records: Sequence[AuditRecord]) -> list[Position]:
        if self.fail is not None:
            raise self.fail
        head = record_hash(self.values[-1]) if self.values else GENESIS
        start = len(self.values)
        self.values += chained(records, head)
        return [Position(0, start + n) for n in range(len(records))]

    def close(self) -> None:
        pass

    def records(self) -> list[AuditRecord]:
        return [CODEC.decode(v) for v in self.values]


def test_a_record_round_trips_through_its_codec():
    original = record(
        3,
        action=AuditAction.USER_ERASED,
        outcome=Outcome.REFUSED,
        tenant="acme",
        user="k1:00ff",
        details={"keys_destroyed": "2"},
        prev_hash=b"\x01" * 32,
    )
    value = CODEC.encode(original)
    assert value[:2] == b"\xc3\x01"
    assert CODEC.decode(value) == original


def test_bytes_that_are_not_an_audit_record_do_not_decode():
    with pytest.raises(DecodeError, match="not an audit record"):
        CODEC.decode(b"\xc3\x01" + b"\x00" * 8 + b"junk")
    with pytest.raises(DecodeError):
        CODEC.decode(b"")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"action": "looked_around"}, "unknown audit action"),
        ({"outcome": "meh"}, "unknown audit outcome"),
        ({"principal": ""}, "principal"),
        ({"principal": "evil\nforged line"}, "principal"),
        ({"at": datetime(2026, 1, 1)}, "timezone"),
    ],
)
def test_a_record_that_would_mislead_is_refused(fields, problem):
    with pytest.raises(InvalidInput, match=problem):
        record(**fields)


def test_an_intact_chain_verifies_from_genesis():
    values = chained([record(n) for n in range(5)])
    chain = verify_partition(2, enumerate(values))
    assert chain.intact
    assert (chain.records, chain.first_offset, chain.last_offset) == (5, 0, 4)
    assert chain.head == record_hash(values[-1])


def test_a_record_inserted_with_a_wrong_previous_hash_breaks_the_chain_exactly_there():
    values = chained([record(n) for n in range(3)])
    forged = CODEC.encode(record(9, prev_hash=b"\x00" * 32))
    # A writer that comes after the forgery chains to it, as the Kafka writer does.
    after = chained([record(4)], head=record_hash(forged))
    offsets = [0, 1, 2, 5, 7]  # gaps: transaction markers take offsets
    chain = verify_partition(1, zip(offsets, [*values, forged, *after], strict=True))
    assert [(b.partition, b.offset) for b in chain.breaks] == [(1, 5)]
    assert "offset 2" in chain.breaks[0].reason
    assert str(chain.breaks[0]).startswith("partition 1 offset 5:")


def test_an_altered_record_breaks_the_chain_at_the_next_one():
    values = chained([record(n) for n in range(3)])
    decoded = CODEC.decode(values[1])
    values[1] = CODEC.encode(replace(decoded, principal="someone-else"))
    chain = verify_partition(0, enumerate(values))
    assert [b.offset for b in chain.breaks] == [2]


def test_a_first_record_without_the_genesis_value_breaks_a_chain_read_from_its_start():
    values = chained([record(n) for n in range(2)], head=b"\x07" * 32)
    assert [b.offset for b in verify_partition(0, enumerate(values)).breaks] == [0]
    # Retention removed the start: the first record is the anchor and is not checked.
    anchored = verify_partition(0, enumerate(values), from_start=False)
    assert anchored.intact
    assert not anchored.anchored


def test_a_record_that_does_not_decode_is_a_break():
    values = chained([record(0)])
    chain = verify_partition(0, [(0, values[0]), (1, b"garbage")])
    assert [b.offset for b in chain.breaks] == [1]
    assert verify_partition(0, []).intact


@pytest.fixture
def provider() -> LocalKeyProvider:
    return LocalKeyProvider.from_spec(f"{new_master_key('k2')},{new_master_key('k1')}")


def test_the_trail_names_users_by_pseudonym_only(provider):
    log = ListLog()
    trail = AuditTrail(log, provider, "ops@host")
    trail.record(
        AuditAction.USER_EXPORTED, tenant="acme", user_id="alice@example.com", details={"n": 2}
    )
    [written] = log.records()
    assert "alice" not in CODEC.encode(written).decode("latin-1")
    assert written.user == str(
        user_pseudonyms(provider, tenant="acme", user_id="alice@example.com")[0]
    )
    assert written.user.startswith("k2:")  # the current master key's MAC
    assert written.details == {"n": "2"}
    assert written.tenant == "acme"


def test_a_user_without_a_tenant_is_of_the_default_tenant(provider):
    log = ListLog()
    trail = AuditTrail(log, provider, "ops@host")
    trail.record(AuditAction.SESSION_CREATED, user_id="bob", session_id="s-1")
    [written] = log.records()
    assert written.tenant == "default"
    lookups = {str(m) for m in user_pseudonyms(provider, tenant="default", user_id="bob")}
    assert written.user in lookups


def test_another_principal_writes_to_the_same_log(provider):
    log = ListLog()
    trail = AuditTrail(log, provider, "ops@host")
    trail.as_principal("gateway:carol").record(AuditAction.OPERATOR_READ, session_id="s-1")
    trail.record(AuditAction.OPERATOR_READ, session_id="s-2")
    assert [r.principal for r in log.records()] == ["gateway:carol", "ops@host"]
    assert trail.as_principal(None) is trail
    assert verify_partition(0, enumerate(log.values)).intact


def test_an_operation_records_its_outcome(provider):
    log = ListLog()
    trail = AuditTrail(log, provider, "ops@host")
    with trail.operation(AuditAction.USER_EXPORTED, user_id="u1") as details:
        details["sessions"] = 3
    with (
        pytest.raises(UnknownUser),
        trail.operation(AuditAction.USER_EXPORTED, user_id="u2"),
    ):
        raise UnknownUser("nothing of u2")
    with pytest.raises(StoreUnavailable), trail.operation(AuditAction.USER_ERASED, user_id="u3"):
        raise StoreUnavailable("redis down")
    outcomes = [(r.action, r.outcome, dict(r.details)) for r in log.records()]
    assert outcomes == [
        ("user_exported", "ok", {"sessions": "3"}),
        ("user_exported", "refused", {"error": "UnknownUser"}),
        ("user_erased", "failed", {"error": "StoreUnavailable"}),
    ]


def test_an_operation_that_fails_keeps_its_own_error_when_the_trail_fails_too(provider):
    log = ListLog()
    log.fail = StoreUnavailable("the audit topic is unreachable")
    trail = AuditTrail(log, provider, "ops@host")
    with pytest.raises(UnknownUser), trail.operation(AuditAction.USER_EXPORTED, user_id="u"):
        raise UnknownUser("nothing of u")


def test_many_records_are_chained_in_order_in_one_append(provider):
    log = ListLog()
    trail = AuditTrail(log, provider, "ops@host")
    entries = [
        trail.entry(AuditAction.SESSION_ERASED, user_id="u", session_id=f"s{n}") for n in range(3)
    ]
    assert trail.record_many(entries) == [Position(0, n) for n in range(3)]
    assert trail.record_many([]) == []
    assert [r.session_id for r in log.records()] == ["s0", "s1", "s2"]
    assert verify_partition(0, enumerate(log.values)).intact
