"""The key directory projected again from the keys topic, after Redis lost it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis
from pydantic import SecretStr

from chatlog import wiring
from chatlog.processors.kafka_key_log import catch_up_keys, rotate_keys
from chatlog.producers.kafka_keys import KafkaKeyLog
from chatlog.projections.redis_keys import RedisKeyDirectory
from chatlog.schemas.errors import Erased
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.master_keys import LocalKeyProvider, new_master_key
from chatlog.schemas.sealing import KeyScope
from tests.processes import chatlog_env, unique_settings

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


def test_rotation_rewraps_every_live_key_so_the_old_master_key_can_go(
    kafka, redis_url, redis_prefix
):
    settings = unique_settings(kafka, redis_url, redis_prefix)
    keys_topic = kafka.create_topic("keys", partitions=2, config={"cleanup.policy": "compact"})
    client = redis.Redis.from_url(redis_url)
    directory = RedisKeyDirectory(client, prefix=redis_prefix)
    old, new = new_master_key("k1"), new_master_key("k2")
    users = [KeyScope("acme", f"u{n}") for n in range(10)]
    with wiring.producer(settings, flush_on_sigterm=False) as producer:
        key_log = KafkaKeyLog(producer, topic=keys_topic)
        before = Keyring(LocalKeyProvider.from_spec(old), log=key_log, directory=directory)
        keys = {scope: before.for_writing(scope) for scope in users}
        for scope in users[:2]:
            directory.erase(before.erase(scope, key_ids=(keys[scope].key_id,)))

        during = Keyring(
            LocalKeyProvider.from_spec(f"{new},{old}"), log=key_log, directory=directory
        )
        rotated = rotate_keys(
            during, directory, key_log, bootstrap_servers=kafka.bootstrap, topic=keys_topic
        )
        assert (rotated.rewrapped, rotated.current, rotated.erased) == (8, 0, 0)
        again = rotate_keys(
            during, directory, key_log, bootstrap_servers=kafka.bootstrap, topic=keys_topic
        )
        assert (again.rewrapped, again.current) == (0, 8)

    # With the old master key destroyed, every live key still opens, from the directory
    # and from the topic alike (a directory projected again from it).
    after = Keyring(LocalKeyProvider.from_spec(new), log=key_log, directory=directory)
    rebuilt = RedisKeyDirectory(client, prefix=redis_prefix + "b")
    catch_up_keys(rebuilt, bootstrap_servers=kafka.bootstrap, topic=keys_topic)
    for scope in users[2:]:
        key = keys[scope]
        for source in (directory, rebuilt):
            wrapped = source.entries(scope).keys[key.key_id]
            assert wrapped.kek_id == "k2"
            assert after.for_reading(scope, key.key_id, wrapped).secret == key.secret
    for scope in users[:2]:
        assert rebuilt.entries(scope).erased_at is not None
        assert rebuilt.entries(scope).keys == {}
    client.delete(*[rebuilt.key_of(scope) for scope in users])
    client.close()


def test_chatlog_keys_rotate_rewraps_and_reports(kafka, redis_url, redis_prefix):
    settings = unique_settings(kafka, redis_url, redis_prefix)
    settings = settings.model_copy(update={"keys_topic": f"keys.{redis_prefix}"})
    kafka.created.append(settings.keys_topic)
    wiring.create_topics(settings)
    old, new = new_master_key("k1"), new_master_key("k2")
    first = settings.model_copy(update={"master_key": SecretStr(old)})
    with wiring.producer(first, flush_on_sigterm=False) as producer:
        ring = wiring.keyring(first, producer)
        for n in range(3):
            ring.for_writing(KeyScope("default", f"u{n}"))
    env = {**chatlog_env(settings), "CHATLOG_MASTER_KEY": f"{new},{old}"}
    result = subprocess.run(
        [sys.executable, "-m", "chatlog.cli", "keys", "rotate", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["rewrapped"], report["current"], report["erased"]) == (3, 0, 0)
    assert old.partition(":")[2] not in result.stdout + result.stderr
    assert new.partition(":")[2] not in result.stdout + result.stderr
