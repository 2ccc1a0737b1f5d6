"""The key directory on a real Redis: entries, the put-unless-erased rule, erasure."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis

from chatlog.projections.redis_keys import RedisKeyDirectory
from chatlog.schemas.key_records import ErasureRecord, KeyRecord
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.master_keys import LocalKeyProvider, WrappedKey, new_master_key
from chatlog.schemas.sealing import KeyScope
from tests.key_fakes import MemoryKeyLog

pytestmark = pytest.mark.integration

SCOPE = KeyScope("acme", "alice@example.com")


@pytest.fixture
def directory(redis_url, redis_prefix):
    client = redis.Redis.from_url(redis_url)
    yield RedisKeyDirectory(client, prefix=redis_prefix)
    client.close()


def _record(scope: KeyScope, key_id: str, blob: bytes = b"\x00wrapped\xff") -> KeyRecord:
    return KeyRecord(scope, key_id, WrappedKey("k1", blob), datetime.now(UTC))


def test_keys_are_kept_per_user_and_read_back_exactly(directory):
    assert directory.entries(SCOPE).keys == {}
    assert directory.put(_record(SCOPE, "key-1", b"\x01\x02"))
    assert directory.put(_record(SCOPE, "key-2", b"\x03"))
    assert directory.put(_record(KeyScope("acme", "bob"), "key-3"))
    entries = directory.entries(SCOPE)
    assert entries.keys == {
        "key-1": WrappedKey("k1", b"\x01\x02"),
        "key-2": WrappedKey("k1", b"\x03"),
    }
    assert entries.erased_at is None
    directory.remove(SCOPE, "key-1")
    assert set(directory.entries(SCOPE).keys) == {"key-2"}


def test_erasing_removes_every_key_keeps_the_first_time_and_refuses_new_keys(directory):
    directory.put(_record(SCOPE, "key-1"))
    directory.put(_record(SCOPE, "key-0"))
    first = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert directory.erase(ErasureRecord(SCOPE, first, ("key-1",))) == ("key-0", "key-1")
    # Twice: nothing left to remove.
    assert directory.erase(ErasureRecord(SCOPE, first + timedelta(hours=1), ("key-1",))) == ()
    assert not directory.put(_record(SCOPE, "key-2"))
    entries = directory.entries(SCOPE)
    assert entries.keys == {}
    assert entries.erased_at == first
    # Another user of the same tenant, and the same user id in another tenant, are untouched.
    assert directory.put(_record(KeyScope("acme", "bob"), "key-3"))
    assert directory.put(_record(KeyScope("other", SCOPE.user_id), "key-4"))


def test_two_keyrings_racing_for_a_new_user_both_stay_usable(directory):
    provider = LocalKeyProvider.from_spec(new_master_key("k1"))
    log = MemoryKeyLog()
    barrier = threading.Barrier(4)
    made = []

    def write() -> None:
        ring = Keyring(provider, log=log, directory=directory)
        barrier.wait()
        made.append(ring.for_writing(SCOPE))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = directory.entries(SCOPE).keys
    reader = Keyring(provider, log=log, directory=directory)
    for key in made:
        assert reader.for_reading(SCOPE, key.key_id, entries[key.key_id]).secret == key.secret
    assert len(log.records) == len(entries)  # every key made is in the log and the directory
