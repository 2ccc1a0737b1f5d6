"""The keyring and the keys topic's records, against in-memory stand-ins for both stores."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from chatlog.processors import kafka_key_log
from chatlog.schemas.errors import DecodeError, Erased, StoreUnavailable
from chatlog.schemas.key_records import ErasureRecord, KeyRecord, decode_key_record
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.master_keys import LocalKeyProvider, new_master_key
from chatlog.schemas.sealing import KeyScope
from tests.key_fakes import MemoryKeyDirectory, MemoryKeyLog

SCOPE = KeyScope("t1", "u1")


def _ring(log=None, directory=None, **kwargs) -> Keyring:
    provider = LocalKeyProvider.from_spec(new_master_key("k1"))
    return Keyring(provider, log=log or MemoryKeyLog(), directory=directory, **kwargs)


def test_the_first_write_logs_a_wrapped_key_and_later_writes_reuse_it():
    log, directory = MemoryKeyLog(), MemoryKeyDirectory()
    ring = _ring(log, directory)
    key = ring.for_writing(SCOPE)
    assert ring.for_writing(SCOPE) is key
    assert len(log.records) == 1
    record = decode_key_record(*log.records[0])
    assert isinstance(record, KeyRecord)
    assert record.key_id == key.key_id
    assert key.secret not in log.records[0][1]
    assert directory.entries(SCOPE).keys == {key.key_id: record.wrapped}


def test_another_process_finds_the_key_in_the_directory_instead_of_making_one():
    log, directory = MemoryKeyLog(), MemoryKeyDirectory()
    provider = LocalKeyProvider.from_spec(new_master_key("k1"))
    first = Keyring(provider, log=log, directory=directory).for_writing(SCOPE)
    second = Keyring(provider, log=log, directory=directory).for_writing(SCOPE)
    assert second.key_id == first.key_id
    assert second.secret == first.secret
    assert len(log.records) == 1


def test_two_writers_at_the_same_instant_both_keep_a_usable_key():
    log, directory = MemoryKeyLog(), MemoryKeyDirectory()
    provider = LocalKeyProvider.from_spec(new_master_key("k1"))
    rings = [Keyring(provider, log=log, directory=directory) for _ in range(2)]
    barrier = threading.Barrier(2)
    keys = {}

    def write(n: int) -> None:
        barrier.wait()
        keys[n] = rings[n].for_writing(SCOPE)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader = Keyring(provider, log=log, directory=directory)
    entries = directory.entries(SCOPE).keys
    for key in keys.values():
        assert reader.for_reading(SCOPE, key.key_id, entries[key.key_id]).secret == key.secret


def test_threads_of_one_process_writing_a_new_user_together_share_one_key():
    class SlowLog(MemoryKeyLog):
        def publish_key(self, record: KeyRecord) -> None:
            time.sleep(0.05)  # a broker's acknowledgement: the window where threads race
            super().publish_key(record)

    log, directory = SlowLog(), MemoryKeyDirectory()
    ring = _ring(log, directory)
    barrier = threading.Barrier(8)
    keys = []

    def write() -> None:
        barrier.wait()
        keys.append(ring.for_writing(SCOPE).key_id)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8
    assert len(set(keys)) == 1
    assert len(log.records) == 1


def test_an_erased_user_is_retired_for_writers():
    log, directory = MemoryKeyLog(), MemoryKeyDirectory()
    ring = _ring(log, directory)
    key = ring.for_writing(SCOPE)
    record = ring.erase(SCOPE, key_ids=(key.key_id,))
    directory.erase(record)
    with pytest.raises(Erased, match="retired"):
        ring.for_writing(SCOPE)
    assert log.records[-2] == (f"t1/u1/{key.key_id}", None)  # the tombstone
    decoded = decode_key_record(*log.records[-1])
    assert isinstance(decoded, ErasureRecord)
    assert decoded.key_ids == (key.key_id,)
    assert decode_key_record(*log.records[-2]) == (SCOPE, key.key_id)
    # Other users are untouched.
    assert ring.for_writing(KeyScope("t1", "u2")).scope == KeyScope("t1", "u2")


def test_a_key_made_while_its_user_was_being_erased_is_refused():
    class ErasedMeanwhile(MemoryKeyDirectory):
        """The erasure lands right after the writer's look-up, before its put."""

        def entries(self, scope):
            seen = super().entries(scope)
            self.erased.setdefault(scope, datetime.now(UTC))
            return seen

    log, directory = MemoryKeyLog(), ErasedMeanwhile()
    with pytest.raises(Erased):
        _ring(log, directory).for_writing(SCOPE)
    # Logged, found refused, tombstoned: off the disks once compacted, and never used.
    assert [value is None for _, value in log.records] == [False, True]
    assert directory.entries(SCOPE).keys == {}


def test_unwrapped_keys_are_cached_bounded_and_forgotten_on_erasure():
    log = MemoryKeyLog()
    ring = _ring(log, cache_size=2)
    scopes = [KeyScope("t1", f"u{n}") for n in range(3)]
    keys = [ring.for_writing(s) for s in scopes]
    records = [decode_key_record(*r) for r in log.records]
    reads = [ring.for_reading(r.scope, r.key_id, r.wrapped) for r in records]
    assert [k.secret for k in reads] == [k.secret for k in keys]
    assert len(ring._opened) == 2  # bounded
    ring.forget(scopes[2])
    assert all(k.scope != scopes[2] for k in ring._opened.values())
    assert scopes[2] not in ring._writing


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (b"t1", b"{}", "not a chatlog.keys record key"),
        (b"t1//k", b"{}", "not a chatlog.keys record key"),
        (b"t1/u1", None, "erasures are kept"),
        (b"t1/u1/k", b"not json", "not JSON"),
        (b"t1/u1/k", b"[]", "not a JSON object"),
        (b"t1/u1/k", b'{"v": 2}', "format 2"),
        (b"t1/u1/k", b'{"v": 1, "kek": "k1"}', "malformed"),
        (b"t1/u1/k", b'{"v": 1, "kek": "k1", "wrapped": "!!", "created_at": 1}', "malformed"),
    ],
)
def test_a_bad_keys_record_is_a_decode_error_naming_the_problem(key, value, problem):
    with pytest.raises(DecodeError, match=problem):
        decode_key_record(key, value)


def test_a_writer_does_not_wait_for_an_unreachable_directory():
    class Down(MemoryKeyDirectory):
        def entries(self, scope):
            raise StoreUnavailable("Redis did not answer")

        def put(self, record):
            raise StoreUnavailable("Redis did not answer")

    log = MemoryKeyLog()
    key = _ring(log, Down()).for_writing(SCOPE)
    [(kafka_key, value)] = log.records  # made without looking, and logged before use
    assert kafka_key == f"t1/u1/{key.key_id}"
    assert value is not None


def test_a_writer_holding_the_key_learns_of_the_erasure_within_the_recheck_time():
    now = [0.0]
    log, directory = MemoryKeyLog(), MemoryKeyDirectory()
    writer = _ring(log, directory, recheck_s=1.0, clock=lambda: now[0])
    key = writer.for_writing(SCOPE)
    # Erased by another process: this writer's keyring is not the one that erased.
    eraser = _ring(log, directory)
    directory.erase(eraser.erase(SCOPE, key_ids=(key.key_id,)))
    now[0] = 0.5
    assert writer.for_writing(SCOPE) is key  # its answer is still fresh
    now[0] = 1.5
    with pytest.raises(Erased):
        writer.for_writing(SCOPE)
    assert SCOPE not in writer._writing


def test_a_recheck_the_directory_does_not_answer_keeps_the_key_for_another_interval():
    class Flaky(MemoryKeyDirectory):
        down = False
        asked = 0

        def entries(self, scope):
            self.asked += 1
            if self.down:
                raise StoreUnavailable("Redis did not answer")
            return super().entries(scope)

    now = [0.0]
    directory = Flaky()
    writer = _ring(MemoryKeyLog(), directory, recheck_s=1.0, clock=lambda: now[0])
    key = writer.for_writing(SCOPE)
    directory.down, asked = True, directory.asked
    now[0] = 2.0
    assert writer.for_writing(SCOPE) is key
    now[0] = 2.5
    assert writer.for_writing(SCOPE) is key
    assert directory.asked == asked + 1  # one wait per interval, not one per append


def test_a_catch_up_tombstones_an_erased_users_keys_the_topic_still_holds_alive():
    # A writer that could not reach Redis made `late` for a user being erased; the
    # erasure record names only the key the eraser saw. Both must leave the disks.
    log, directory = MemoryKeyLog(), MemoryKeyDirectory()
    ring = _ring(log, directory)
    seen = ring.for_writing(SCOPE)
    late = _ring(log, MemoryKeyDirectory()).for_writing(SCOPE)
    late_record = log.records[-1]
    ring.erase(SCOPE, key_ids=(seen.key_id,))
    topic = [late_record, *log.records[2:]]  # the late key, then the erasure's records
    shredder = MemoryKeyLog()
    counts = dict.fromkeys(
        ("keys", "refused", "tombstones", "erasures", "ticks", "skipped", "shredded"), 0
    )
    fresh = MemoryKeyDirectory()  # a directory caught up from the topic
    for key, value in topic:
        kafka_key_log._apply(fresh, key.encode(), value, counts, shredder)
    assert shredder.records == [(f"t1/u1/{late.key_id}", None)]
    # Read again (the late key now refused: the user is erased): its tombstone once more,
    # which compaction makes harmless.
    for key, value in topic:
        kafka_key_log._apply(fresh, key.encode(), value, counts, shredder)
    assert set(shredder.records) == {(f"t1/u1/{late.key_id}", None)}
    assert counts["refused"] == 1
