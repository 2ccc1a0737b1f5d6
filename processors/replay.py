"""Replay orchestration: rebuild the read-model from the log, or check the live one against it.

`rebuild` runs the steps `chatlog.processors.kafka_replay` describes: build a new generation,
catch up with the live projector, flip, hand over, delete the old generation. `verify`
builds a scratch generation up to the log's end offsets, compares it key by key with the
live one, and deletes it. Both report their progress to a callback.

Both take their parts built (`ReplayParts`: the generation store, a view store per
generation, a factory of Kafka readers, a worker for parallel partitions, and with
semantic recall on the recall indexes) rather than settings, so a test or a benchmark
can hand them other stores; `chatlog.wiring.replay_parts` builds them from `Settings`.

With recall on, every generation a replay builds gets its recall index built from the
same batches (`chatlog.processors.replay_recall`), one deleted loses its index too, and
`verify` compares the indexes document by document beside the read-model's keys.
"""

from __future__ import annotations

import functools
import gc
import logging
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ParamSpec, Protocol, TypeVar

from chatlog.processors.kafka_replay import KafkaReplay, ReplayProgress
from chatlog.processors.replay_recall import RecallSink
from chatlog.projections.redis_generations import Difference, GenerationStore, next_generation
from chatlog.projections.redis_reader import DEFAULT_GENERATION
from chatlog.projections.store import ViewStore
from chatlog.schemas.errors import Conflict, Incomplete, Interrupted

log = logging.getLogger("chatlog.replay")

P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "PartitionWorker",
    "RebuildReport",
    "RecallGenerations",
    "ReplayFactory",
    "ReplayParts",
    "VerifyReport",
    "rebuild",
    "rebuild_partitions",
    "verify",
]


class ReplayFactory(Protocol):
    """Makes the Kafka reader that folds the events topic into `store`."""

    def __call__(
        self,
        store: ViewStore,
        *,
        recall: RecallSink | None = None,
        stop: threading.Event | None = None,
        on_progress: Callable[[ReplayProgress], None] | None = None,
    ) -> KafkaReplay: ...


class RecallCounts(Protocol):
    """What comparing two recall indexes found."""

    documents: int
    sessions: int
    differences: list[Difference]


class RecallGenerations(Protocol):
    """Every generation's recall index, as a replay builds, drops and compares them
    (`chatlog.processors.redis_recall.RedisRecallGenerations`)."""

    def sink(self, generation: str) -> RecallSink:
        """A sink indexing into `generation`, which is being built."""
        ...

    def drop(self, generation: str) -> None:
        """Delete `generation`'s index, its documents, metadata and progress."""
        ...

    def progress(self, generation: str) -> Mapping[int, int]:
        """How far `generation`'s index has indexed: partition -> last offset."""
        ...

    def problem(self, generation: str) -> str | None:
        """Why `generation`'s index is lost (None: whole, or never built)."""
        ...

    def documents(self, generation: str) -> int:
        """How many turns `generation`'s index holds."""
        ...

    def compare(self, live: str, rebuilt: str) -> RecallCounts:
        """`live`'s index against `rebuilt`'s, document by document."""
        ...

    def close(self) -> None:
        """Release the embedder."""
        ...


# Rebuilds some partitions of a generation up to their end offsets, in a process of its
# own: `(generation, partitions, ends)`. Sent to a spawned process, so it must pickle.
PartitionWorker = Callable[[str, list[int], dict[int, int]], None]


@dataclass(frozen=True, slots=True)
class ReplayParts:
    """What a replay works with, built by the caller (`chatlog.wiring.replay_parts`)."""

    generations: GenerationStore
    store_for: Callable[[str], ViewStore]  # the view store of one generation
    replay_for: ReplayFactory
    worker: PartitionWorker | None = None  # needed for `rebuild(workers=...)` > 1
    recall: RecallGenerations | None = None  # semantic recall on: build its index too


@dataclass(slots=True)
class RebuildReport:
    """What a rebuild did."""

    generation: str
    replaced: str | None
    resumed: bool
    events: int
    seconds: float
    deleted_keys: int
    dead_letters: int
    recall_documents: int | None = None  # in the new recall index (None: recall off)


@dataclass(slots=True)
class VerifyReport:
    """What a verification found."""

    live: str
    sessions: int
    users: int
    events: int
    seconds: float
    differences: list[Difference] = field(default_factory=list)
    moved_on: int = 0  # sessions that changed after the verification started
    recall_documents: int | None = None  # in the rebuilt recall index (None: recall off)


def _collector_paused(function: Callable[P, R]) -> Callable[P, R]:
    """Run `function` with no cyclic garbage collection; the setting is restored after.

    A replay holds a large, acyclic cache of views and allocates fast: each full
    collection walks the whole cache (seconds, every few hundred thousand events), while
    reference counting alone frees what the replay drops.
    """

    @functools.wraps(function)
    def paused(*args: P.args, **kwargs: P.kwargs) -> R:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return paused


@_collector_paused
def rebuild(
    parts: ReplayParts,
    *,
    restart: bool = False,
    handover_s: float = 3.0,
    keep_old: bool = False,
    workers: int = 1,
    stop: threading.Event | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
) -> RebuildReport:
    """Rebuild the read-model into a new generation and make it live.

    With `workers` > 1 the partitions are rebuilt by that many processes (sessions never
    span partitions, so they write disjoint keys); the catch-up and the flip follow in
    this process.
    """
    worker = parts.worker if workers > 1 else None
    if workers > 1 and worker is None:
        raise ValueError("a rebuild with workers needs ReplayParts.worker")
    generations = parts.generations
    live = generations.live()
    _say_if_recall_lost(parts, live)
    target, resumed = _target(parts, live, restart=restart)
    target_store = parts.store_for(target)
    sink = parts.recall.sink(target) if parts.recall is not None else None
    replay = parts.replay_for(target_store, recall=sink, stop=stop, on_progress=on_progress)
    started = time.monotonic()
    try:
        ends = replay.start()
        progress = ReplayProgress(
            "rebuild", total=sum(end - replay.position[p] for p, end in ends.items())
        )
        if worker is not None:
            replay.close()
            _rebuild_in_parallel(
                worker,
                target,
                target_store,
                starts=dict(replay.position),
                ends=ends,
                progress=progress,
                workers=workers,
                stop=stop,
                on_progress=on_progress,
            )
            # The sink reads the marks the workers left when this reader starts.
            replay = parts.replay_for(target_store, recall=sink, stop=stop, on_progress=on_progress)
            replay.start()
        replay.run_to(ends, progress)
        progress.phase = "catch up"
        live_store = parts.store_for(live) if live is not None else None
        while live_store is not None and not replay.caught_up_with(live_store.progress()):
            replay.step(progress)
        if not generations.flip(live, target):
            raise Conflict(
                f"the live generation changed from {live} to {generations.live()} while "
                f"replaying into {target}; another replay won. Run `chatlog replay` again "
                f"if you still need one",
                generation=target,
            )
        generations.end_rebuild()
        progress.phase = "hand over"
        deadline = time.monotonic() + handover_s
        while time.monotonic() < deadline:
            replay.step(progress)
    finally:
        replay.close()
        if parts.recall is not None:
            parts.recall.close()
    deleted = 0
    if live is not None and not keep_old:
        deleted = _delete(parts, live)
    return RebuildReport(
        generation=target,
        replaced=live,
        resumed=resumed,
        events=progress.done,
        seconds=time.monotonic() - started,
        deleted_keys=deleted,
        dead_letters=progress.dead_letters,
        recall_documents=_documents(parts, target),
    )


@_collector_paused
def verify(
    parts: ReplayParts,
    *,
    wait_for_live_s: float = 30.0,
    stop: threading.Event | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
) -> VerifyReport:
    """Rebuild into a scratch generation and compare it with the live one."""
    generations = parts.generations
    recall = parts.recall
    live = generations.live() or DEFAULT_GENERATION
    scratch = f"verify-{uuid.uuid4().hex[:12]}"
    generations.create(scratch)
    started = time.monotonic()
    try:
        sink = recall.sink(scratch) if recall is not None else None
        replay = parts.replay_for(
            parts.store_for(scratch), recall=sink, stop=stop, on_progress=on_progress
        )
        try:
            ends = replay.start()
            progress = ReplayProgress(
                "verify", total=sum(end - replay.position[p] for p, end in ends.items())
            )
            replay.run_to(ends, progress)
        finally:
            replay.close()
        marks: list[Callable[[], Mapping[int, int]]] = [parts.store_for(live).progress]
        if recall is not None and recall.progress(live):
            # An index never built, or lost, is reported as such: nothing to wait for.
            marks.append(functools.partial(recall.progress, live))
        _wait_for_live(marks, ends, wait_for_live_s)
        comparison = generations.compare(live, scratch)
        differences = list(comparison.differences)
        report = VerifyReport(
            live=live,
            sessions=comparison.sessions,
            users=comparison.users,
            events=progress.done,
            seconds=time.monotonic() - started,
        )
        if recall is not None:
            indexed = recall.compare(live, scratch)
            report.recall_documents = indexed.documents
            differences += indexed.differences
        moved_on = _moved_on(generations, live, ends)
        for difference in differences:
            if difference.kind in _PER_SESSION and moved_on(difference.name):
                report.moved_on += 1
            else:
                report.differences.append(difference)
        return report
    finally:
        if recall is not None:
            recall.close()
        _delete(parts, scratch)


# The kinds of difference named by a session (which may have moved on since).
_PER_SESSION = ("session", "recall session")


def _rebuild_in_parallel(
    worker: PartitionWorker,
    generation: str,
    store: ViewStore,
    *,
    starts: dict[int, int],
    ends: dict[int, int],
    progress: ReplayProgress,
    workers: int,
    stop: threading.Event | None,
    on_progress: Callable[[ReplayProgress], None] | None,
) -> None:
    """Rebuild `ends` with `workers` processes, each owning some partitions."""
    partitions = sorted(p for p, end in ends.items() if end > starts[p])
    shares = [partitions[n::workers] for n in range(workers) if partitions[n::workers]]
    context = multiprocessing.get_context("spawn")  # no forked Kafka or Redis clients
    processes = [
        context.Process(
            target=worker,
            args=(generation, share, {p: ends[p] for p in share}),
            name=f"chatlog-replay-{n}",
        )
        for n, share in enumerate(shares)
    ]
    for process in processes:
        process.start()
    try:
        while any(process.is_alive() for process in processes):
            if stop is not None and stop.is_set():
                raise Interrupted("the replay was interrupted")
            progress.done = _records_done(store, starts)
            if on_progress is not None:
                on_progress(progress)
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # what it wrote stays: the next run resumes from it
            process.join(30)
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise Incomplete(f"replay workers {failed} failed; run `chatlog replay` to resume")
    progress.done = _records_done(store, starts)
    if on_progress is not None:
        on_progress(progress)  # the workers' last records, done since the last report


def _records_done(store: ViewStore, starts: dict[int, int]) -> int:
    """How many offsets the workers have projected since `starts`, by their progress marks."""
    marks = store.progress()
    return sum(marks.get(p, starts[p] - 1) + 1 - starts[p] for p in starts)


def rebuild_partitions(
    parts: ReplayParts, generation: str, partitions: list[int], ends: dict[int, int]
) -> None:
    """A replay worker process's job: rebuild `partitions` of `generation` up to `ends`."""
    gc.disable()  # a process of its own: see `_collector_paused`
    sink = parts.recall.sink(generation) if parts.recall is not None else None
    replay = parts.replay_for(parts.store_for(generation), recall=sink)
    try:
        replay.start(only=partitions)
        replay.run_to(ends, ReplayProgress("rebuild"))
    finally:
        replay.close()
        if parts.recall is not None:
            parts.recall.close()


def _target(parts: ReplayParts, live: str | None, *, restart: bool) -> tuple[str, bool]:
    """The generation to build, and whether an interrupted rebuild is resumed."""
    generations = parts.generations
    record = generations.rebuild_in_progress()
    recorded = record.get("generation")
    same_live = record.get("replaces", "") == (live or "")
    if recorded and recorded != live and same_live and not restart:
        generations.create(recorded)  # kept if it has one
        return recorded, True
    if recorded and recorded != live:
        _delete(parts, recorded)  # abandoned, or overtaken by a flip: start afresh
    target = next_generation(live or DEFAULT_GENERATION)
    if generations.exists(target):
        generations.delete(target)
    if parts.recall is not None:
        # Left from an earlier life of the name (the recall index may be on another Redis).
        parts.recall.drop(target)
    generations.start_rebuild(target, live)
    generations.create(target)  # its epoch, before anything is written into it
    return target, False


def _delete(parts: ReplayParts, generation: str) -> int:
    """Delete a generation that is not live, its recall index first (on its own Redis,
    or among the generation's keys); the number of read-model keys removed."""
    parts.generations.refuse_live(generation)
    if parts.recall is not None:
        parts.recall.drop(generation)
    return parts.generations.delete(generation)


def _documents(parts: ReplayParts, generation: str) -> int | None:
    """How many turns `generation`'s recall index holds (None: recall off)."""
    return parts.recall.documents(generation) if parts.recall is not None else None


def _say_if_recall_lost(parts: ReplayParts, live: str | None) -> None:
    """Log that the live recall index was lost and is rebuilt by this replay."""
    if parts.recall is None or live is None:
        return
    problem = parts.recall.problem(live)
    if problem is not None:
        log.warning(
            "the recall index of the live generation %s was lost (%s): this replay builds "
            "the next generation's from the log",
            live,
            problem,
        )


def _wait_for_live(
    marks: list[Callable[[], Mapping[int, int]]], ends: dict[int, int], timeout: float
) -> None:
    """Wait (bounded) until the live projection, and the live recall index when given,
    have read as far as the scratch one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(
            all(found.get(p, -1) >= end - 1 for p, end in ends.items() if end > 0)
            for found in (read() for read in marks)
        ):
            return
        time.sleep(0.2)


def _moved_on(
    generations: GenerationStore, live: str, ends: dict[int, int]
) -> Callable[[str], bool]:
    """Whether a session's live view has events newer than the verification read."""

    def check(session_id: str) -> bool:
        position = generations.session_position(live, session_id)
        return position is not None and position.offset >= ends.get(position.partition, 0)

    return check
