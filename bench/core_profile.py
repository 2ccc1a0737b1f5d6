"""The projection core per event, in one process: a target for py-spy and callgrind.

`python -m bench.core_profile MODE...` builds the projection scenario's kind of workload
(chat messages over sessions, by default 30,000 over 600), encodes it clear and sealed
(keys in memory), orders the records as a lagging consumer gets them (partition by
partition) and runs each MODE over them, printing the CPU time per event:

* ``decode``, ``decode_sealed``: `EventCodec.decode` alone;
* ``core``, ``core_sealed``: `ProjectionCore.handle` into an `InMemoryViewStore`
  (sealed: with the projector's `EventOpener`, which verifies every sealed field);
* ``core_redis_sealed``: the same into the live `RedisViewStore` of a fresh prefix
  (needs the local stack's environment: ``. .chatlog/services.env``; its keys stay
  under a fresh ``core-...`` prefix of that Redis);
* ``live_redis_sealed``: the same as the live projector writes at a paced rate: the
  records in publish order, in batches of ``LIVE_BATCH`` (default 20, so nearly every
  event is its own session write), with the applied notices on;
* ``none``: only the workload, for subtracting from a callgrind count.

Instructions per event, repeatable on a busy machine (issue 19's before/after)::

    export N=3000 SESSIONS=60
    REPEAT=1 valgrind --tool=callgrind .venv/bin/python -m bench.core_profile core_sealed
    REPEAT=0 valgrind --tool=callgrind .venv/bin/python -m bench.core_profile none

and (first minus second) / N. Where the time goes: ``py-spy record -f raw -o out.txt --``
in front of the same command.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Sequence

from bench.workload import chat_events
from chatlog import wiring
from chatlog.processors.projection import ProjectionCore, Record
from chatlog.projections.opening import EventOpener
from chatlog.projections.store import InMemoryViewStore, ViewStore
from chatlog.schemas.codec import EventCodec
from chatlog.schemas.events import ConversationEvent, ProducerInfo
from chatlog.schemas.keyring import Keyring
from chatlog.schemas.master_keys import LocalKeyProvider, new_master_key
from chatlog.schemas.sealing import KeyScope, seal_event
from chatlog.settings import Settings
from tests.key_fakes import MemoryKeyDirectory, MemoryKeyLog

_PARTITIONS = 6
_BATCH = 500
_MODES = (
    "none",
    "decode",
    "decode_sealed",
    "core",
    "core_sealed",
    "core_redis_sealed",
    "live_redis_sealed",
)


def main(modes: Sequence[str]) -> None:
    """Run `modes` over the workload (see the module)."""
    unknown = set(modes) - set(_MODES)
    if unknown or not modes:
        raise SystemExit(f"modes: {', '.join(_MODES)}; got {sorted(unknown) or 'none'}")
    events, repeat = int(os.environ.get("N", "30000")), int(os.environ.get("REPEAT", "3"))
    codec = EventCodec()
    traffic = chat_events(
        sessions=int(os.environ.get("SESSIONS", "600")),
        count=events,
        record_bytes=278,
        codec=codec,
        info=ProducerInfo(client="bench"),
    )
    provider = LocalKeyProvider.from_spec(new_master_key("k1"))
    directory = MemoryKeyDirectory()
    writer = Keyring(provider, log=MemoryKeyLog(), directory=directory)
    sealed_events = [seal_event(e, writer.for_writing(KeyScope.of(e))) for e in traffic.events]
    clear = _records(traffic.events, [codec.encode(e) for e in traffic.events])
    sealed = _records(traffic.events, [codec.encode(e) for e in sealed_events])
    live = _records(traffic.events, [codec.encode(e) for e in sealed_events], lagging=False)

    def opener() -> EventOpener:
        return EventOpener(Keyring(provider, directory=directory), directory)

    def decode(records: Sequence[Record]) -> None:
        for record in records:
            codec.decode(record.value or b"")

    def core(
        store: Callable[[], ViewStore],
        opener: Callable[[], EventOpener] | None,
        batch: int = _BATCH,
    ) -> _Run:
        def run(records: Sequence[Record]) -> None:
            projection = ProjectionCore(store(), codec=codec, opener=opener and opener())
            for start in range(0, len(records), batch):
                result = projection.handle(records[start : start + batch])
                if result.dead_letters:
                    raise AssertionError(f"dead letters: {result.dead_letters[:1]}")

        return run

    runs: dict[str, tuple[_Run, list[Record]]] = {
        "decode": (decode, clear),
        "decode_sealed": (decode, sealed),
        "core": (core(InMemoryViewStore, None), clear),
        "core_sealed": (core(InMemoryViewStore, opener), sealed),
    }
    if "core_redis_sealed" in modes:
        runs["core_redis_sealed"] = (core(_fresh_redis_store, opener), sealed)
    if "live_redis_sealed" in modes:
        live_batch = int(os.environ.get("LIVE_BATCH", "20"))
        runs["live_redis_sealed"] = (core(_live_redis_store, opener, live_batch), live)
    # Warm: imports, compiled builders, unwrapped keys (a callgrind `none` run does it too).
    core(InMemoryViewStore, None)(clear[:2000])
    core(InMemoryViewStore, opener)(sealed[:2000])
    # As the projector process runs: its start-up heap frozen, young collections rarer.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    for _ in range(repeat):
        for mode in modes:
            if mode != "none":
                _measure(mode, *runs[mode])


_Run = Callable[[Sequence[Record]], None]


def _records(
    events: Sequence[ConversationEvent], values: Sequence[bytes], *, lagging: bool = True
) -> list[Record]:
    """The records a lagging consumer gets, partition by partition (as the bench's core);
    not `lagging`: in publish order, as a consumer that keeps up gets them."""
    next_offset: dict[int, int] = {}
    records = []
    for event, value in zip(events, values, strict=True):
        partition = zlib.crc32(event.session_id.encode()) % _PARTITIONS
        offset = next_offset.get(partition, 0)
        next_offset[partition] = offset + 1
        records.append(Record("events", partition, offset, event.session_id.encode(), value))
    if lagging:
        records.sort(key=lambda record: (record.partition, record.offset))
    return records


def _fresh_redis_store(*, notify: bool = False) -> ViewStore:
    settings = Settings.from_env()
    settings = settings.model_copy(update={"redis_prefix": f"core-{uuid.uuid4().hex[:8]}"})
    client = wiring.redis_client(settings)
    wiring.generations(settings, client).initialise("g1")
    return wiring.generation_store(settings, "g1", client, notify=notify)


def _live_redis_store() -> ViewStore:
    return _fresh_redis_store(notify=True)


def _measure(mode: str, run: _Run, records: list[Record]) -> None:
    started, cpu = time.perf_counter(), time.process_time()
    run(records)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - started
    print(
        f"{mode:18s} {cpu / len(records) * 1e6:6.1f} µs CPU an event "
        f"({len(records) / cpu:,.0f}/s of CPU, {len(records) / wall:,.0f}/s wall)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
