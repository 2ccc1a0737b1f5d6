"""An erased user's key leaves the broker's disk within `CHATLOG_KEY_SHRED_WITHIN`.

Crypto-shredding forgets a person by destroying their data key, so the guarantee is
only as good as the time the wrapped key stays in the keys topic's files. The keys
topic is created as `chatlog topics create` makes it for the setting's minimum, 60 s
(`keys_topic_config`), and users X and Y write, which makes their keys. A projector runs
with that bound, as every deployment runs one. X is erased (`ChatLog.erase_user`: a
tombstone for each key, then an erasure record), and then nothing else is written: no
new user, no erasure, no event. Kafka rolls a segment only when a record is appended,
and the log cleaner never touches the active segment, so what makes the key leave is
the projector's ticks (`chatlog.processors.kafka_keys_tick`), one on each partition
every eighth of the bound; the test checks that they are all the topic received.

Every file of the topic's partition directories on the local broker's disk (the
segments, and the cleaner's ``.cleaned``, ``.swap`` and ``.deleted`` files too) is then
searched, byte for byte, for X's wrapped key until it is in none. Compression is off
(lz4 would hide the bytes by itself), and Y's wrapped key must be found the same way
before and after, so the search is known to look in the right place.

It needs the local stack's data directories, so it is skipped against services someone
else runs (``CHATLOG_KAFKA_BOOTSTRAP`` naming another cluster, or testcontainers).
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from pathlib import Path

import pytest

from chatlog import wiring
from chatlog.client import ChatLog
from chatlog.processors.kafka_key_log import read_key_log
from chatlog.producers.kafka_topics import keys_tick_interval_ms, keys_topic_config
from chatlog.projections.opening import ERASED
from chatlog.schemas.key_records import ErasureRecord, KeyRecord, KeysTick, decode_key_record
from chatlog.schemas.sealing import KeyScope
from dev.services.state import read_state
from tests.processes import running_projector, stop, unique_settings

pytestmark = pytest.mark.system

SHRED_WITHIN_S = 60  # the least CHATLOG_KEY_SHRED_WITHIN accepts
STOP_BOUND_S = 10  # `chatlog run projector` exits within this of SIGTERM


def _topic_files(kafka_bootstrap: str, topic: str) -> list[Path]:
    state = read_state(state_dir=Path(".chatlog").resolve())
    if state is None or state.kafka.bootstrap != kafka_bootstrap:
        pytest.skip("needs the local stack's data directories (services run by someone else)")
    return [
        path
        for data_dir in state.kafka.data_dirs
        for path in Path(data_dir, "data").glob(f"{topic}-*/*")
    ]


def _holding(files: list[Path], needle: bytes) -> list[str]:
    found = []
    for path in files:
        try:
            if needle in path.read_bytes():
                found.append(path.name)
        except (FileNotFoundError, IsADirectoryError):  # removed by the cleaner meanwhile
            continue
    return found


def _kinds(kafka_bootstrap: str, topic: str) -> Counter[str]:
    """How many records of each kind the keys topic holds now."""
    kinds: Counter[str] = Counter()
    for key, value in read_key_log(bootstrap_servers=kafka_bootstrap, topic=topic):
        record = decode_key_record(key, value)
        kinds[
            "tick"
            if isinstance(record, KeysTick)
            else "key"
            if isinstance(record, KeyRecord)
            else "erasure"
            if isinstance(record, ErasureRecord)
            else "tombstone"
        ] += 1
    return kinds


def test_an_erased_users_key_leaves_the_brokers_disk_within_the_bound(
    kafka, redis_url, redis_prefix, tmp_path
):
    settings = unique_settings(kafka, redis_url, redis_prefix, key_shred_within=SHRED_WITHIN_S)
    keys_topic = kafka.create_topic(
        "keys", partitions=2, config=keys_topic_config(SHRED_WITHIN_S * 1000)
    )
    settings = settings.model_copy(
        update={"keys_topic": keys_topic, "kafka": {"compression.type": "none"}}
    )
    x, y = KeyScope("default", "xavier"), KeyScope("default", "yvonne")
    directory = wiring.key_directory(settings)
    projector_log = tmp_path / "projector.log"
    with (
        wiring.producer(settings, flush_on_sigterm=False) as producer,
        running_projector(settings, log=projector_log) as projector,
    ):
        for scope in (x, y):
            producer.append(f"s-{scope.user_id}", user_id=scope.user_id, role="user", content="hi")
        wrapped = {scope: directory.entries(scope).keys for scope in (x, y)}
        needles = {
            scope: [base64.b64encode(w.blob) for w in keys.values()]
            for scope, keys in wrapped.items()
        }
        assert all(len(n) == 1 for n in needles.values()), wrapped
        (x_key,), (y_key,) = needles[x], needles[y]
        files = _topic_files(kafka.bootstrap, keys_topic)
        for needle in (x_key, y_key):
            assert _holding(files, needle), "the search looks in the wrong place"

        chat = ChatLog(
            producer=producer,
            reader=wiring.reader(settings, directory.client),
            eraser=wiring.eraser(settings, producer, directory.client),
        )
        erasure = chat.erase_user(x.user_id)
        erased_at = time.monotonic()
        assert erasure.key_ids == tuple(wrapped[x]), erasure
        before = _kinds(kafka.bootstrap, keys_topic)
        out_of_segments = None
        deadline = erased_at + 2 * SHRED_WITHIN_S
        while holding := _holding(_topic_files(kafka.bootstrap, keys_topic), x_key):
            if out_of_segments is None and not [h for h in holding if h.endswith(".log")]:
                # Cleaned away; a replaced segment waits `file.delete.delay.ms` as .deleted.
                out_of_segments = time.monotonic() - erased_at
            assert time.monotonic() < deadline, (
                f"xavier's key is still in {holding} "
                f"{time.monotonic() - erased_at:.0f} s after the erasure"
            )
            time.sleep(0.5)
        took = time.monotonic() - erased_at
        out_of_segments = took if out_of_segments is None else out_of_segments
        after = _kinds(kafka.bootstrap, keys_topic)
        asked_to_stop = time.monotonic()
        assert stop(projector) == 0, projector_log.read_text()
        stopped_in = time.monotonic() - asked_to_stop

    # Nothing but ticks was written: no key, no erasure (a tombstone is an erasure's).
    assert after["tick"] > 0, after
    assert (after["key"], after["erasure"]) == (before["key"] - 1, before["erasure"]), after
    assert stopped_in < STOP_BOUND_S, f"the projector took {stopped_in:.1f} s to stop"

    assert _holding(_topic_files(kafka.bootstrap, keys_topic), y_key), "yvonne's key is gone"
    assert took <= SHRED_WITHIN_S, f"xavier's key stayed {took:.0f} s, beyond the bound"
    opener = wiring.opener(settings)
    codec = wiring.codec(settings)
    events = [codec.decode(m.value()) for m in kafka.consume_all(settings.topic)]
    opened = dict(zip((e.user_id for e in events), opener.open_batch(events), strict=False))
    assert opened["xavier"] is ERASED
    assert opened["yvonne"].payload.content == "hi"
    directory.client.close()
    tick_s = keys_tick_interval_ms(SHRED_WITHIN_S * 1000) / 1000
    print(
        f"\nshredding: xavier's wrapped key left the keys topic's segments "
        f"{out_of_segments:.1f} s and every file of it {took:.1f} s after the erasure "
        f"(bound {SHRED_WITHIN_S} s; no record but the projector's ticks, every {tick_s:g} s, "
        f"meanwhile); yvonne's is still there; the projector stopped {stopped_in:.1f} s "
        f"after SIGTERM"
    )
