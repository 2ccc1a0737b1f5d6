"""The key directory projected again from the keys topic, after Redis lost it."""

from __future__ import annotations

import pytest
import redis

from chatlog import wiring
from chatlog.processors.kafka_keys_projection import catch_up_keys
from chatlog.producers.kafka_keys import KafkaKeyLog
from chatlog.projections.redis_keys import RedisKeyDirectory
from chatlog.schemas.errors import Erased
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.master_keys import LocalKeyProvider, new_master_key
from chatlog.schemas.sealing import KeyScope
from tests.processes import unique_settings

pytestmark = pytest.mark.integration


def test_a_lost_directory_comes_back_from_the_topic_erasures_included(
    kafka, redis_url, redis_prefix
):
    settings = unique_settings(kafka, redis_url, redis_prefix)
    keys_topic = kafka.create_topic("keys", partitions=3, config={"cleanup.policy": "compact"})
    client = redis.Redis.from_url(redis_url)
    directory = RedisKeyDirectory(client, prefix=redis_prefix)
    provider = LocalKeyProvider.from_spec(new_master_key("k1"))
    users = [KeyScope("acme", f"u{n}") for n in range(20)]
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        ring = Keyring(provider, log=KafkaKeyLog(producer, topic=keys_topic), directory=directory)
        keys = {scope: ring.for_writing(scope) for scope in users}
        erased = users[:5]
        for scope in erased:
            directory.erase(ring.erase(scope, key_ids=(keys[scope].key_id,)))
    before = {scope: directory.entries(scope) for scope in users}

    client.delete(*[directory.key_of(scope) for scope in users])  # Redis lost it
    assert all(not directory.entries(scope).keys for scope in users)

    report = catch_up_keys(directory, bootstrap_servers=kafka.bootstrap, topic=keys_topic)
    # Every key record is read: an erased user's key is put and then removed by the
    # erasure, or refused if the erasure's partition was read first.
    assert report.keys + report.refused == 20
    assert report.refused <= 5
    assert (report.tombstones, report.erasures, report.skipped) == (5, 5, 0)
    after = {scope: directory.entries(scope) for scope in users}
    assert after == before
    fresh = Keyring(provider, log=KafkaKeyLog(producer, topic=keys_topic), directory=directory)
    for scope in users[5:]:
        entry = after[scope].keys[keys[scope].key_id]
        assert fresh.for_reading(scope, keys[scope].key_id, entry).secret == keys[scope].secret
    for scope in erased:
        with pytest.raises(Erased):
            fresh.for_writing(scope)
    again = catch_up_keys(directory, bootstrap_servers=kafka.bootstrap, topic=keys_topic)
    assert {scope: directory.entries(scope) for scope in users} == before  # idempotent
    assert again.erasures == 5
    client.close()
