"""The projector process: consume `chatlog.events`, project into Redis, commit.

It is a plain confluent-kafka consumer group member (not faust: the projection path
needs exact offset control). Its loop, per batch:

1. consume up to `batch_size` records;
2. `ProjectionCore.handle` folds them into the view store (one atomic, idempotent write
   per session);
3. dead letters are produced to the DLQ topic and acknowledged;
4. only then are the batch's offsets stored for the next commit.

A crash anywhere before step 4 replays the batch, which changes nothing (writes are
idempotent and dead letters may repeat, never vanish).

Faults of Redis (refused, dropped or stalled connections: `StoreUnavailable`) and of the
dead-letter topic (`DeliveryFailed`) do not end the process. The step that failed is
retried as it is, with backoff from 0.1 s doubling to 5 s, until it succeeds: the
batch's offsets are stored only after that, so no batch is ever skipped. Meanwhile every
assigned partition is paused, so nothing more is fetched, and the consumer keeps polling,
so it keeps its place in the group (heartbeats, `max.poll.interval.ms`, rebalances). A
partition revoked during the wait is dropped from the batch in hand (its new owner
projects it); one assigned is paused too, and if Redis could not say where it must
start, it is held until Redis answers. The cached views are forgotten after each failure
(a write may have half-landed), so they are reloaded from what Redis holds. `stop`
interrupts the wait within about CHATLOG_REDIS_TIMEOUT_S: the unfinished batch's
offsets are not stored, so it is projected again after the restart. On a rebalance the cached views
of moved partitions are dropped and stored offsets are committed before partitions go.
SIGTERM or SIGINT (through `stop`) finishes the current batch and commits.

Failover: the projector is a static group member (`instance_id`, KIP-345). Restarted
under the same id, it gets its partitions back as soon as it rejoins, with no rebalance
and no wait for its old session, which would otherwise hold them until it expired. A
static member does not leave the group when it closes either: after a SIGTERM its
partitions wait for the restart, or `session_timeout_s` at most before the other
members take them (a scale-down costs that pause once). Partitions move between
members by the cooperative-sticky protocol: a rebalance revokes only what moves, and
the callbacks see only that delta. Fenced (another member joined under its instance
id), it stops with `ConfigError`, naming CHATLOG_INSTANCE_ID; fenced just after the group
expired its own session (the group coordinator's broker died, and the failover outlasted
the session), its own rejoin did it, and it stops with `BrokerUnavailable` instead: a
restart rejoins at once.

Generations: about once a second the projector reads the pointer to the live
generation. When a replay has flipped it, the projector moves to the new generation and
seeks each of its partitions back to where that generation's progress mark says, so
nothing the replay had not projected is skipped (what it had is skipped as duplicates).

Lost data (Redis answers, but holds less than it was given: FLUSHALL, a restart with
no persistence, an older snapshot restored, a failover that dropped writes) is told
apart from a fresh deployment by the generation's epoch (`chatlog.projections.epochs`).
It is found when partitions are assigned (`assess_start`: no pointer although the group
has committed offsets, an epoch marked lost, marks behind the committed offsets), every
second while running (the pointer or the epoch gone), and by every write, which refuses
atomically to touch a generation without its epoch or whose marks went back. With
``on_data_loss="stop"`` the projector marks the generation lost (so readers refuse it)
and stops with `DataLoss`, which names the fix; a restart refuses the same way until a
replay has run. With ``"rebuild"`` it pauses its partitions and rebuilds the whole
read-model from offset 0 into a new generation, as `chatlog replay` does, while it keeps
its place in the group; then flips the pointer and continues from the new generation's
marks. Readers get `ReadModelLost` until the flip, then the whole truth.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from chatlog.processors.kafka_consumer import record_of
from chatlog.processors.kafka_dead_letters import KafkaDeadLetters
from chatlog.processors.projection import BatchResult, ProjectionCore, Record
from chatlog.projections.epochs import Lost, assess_start, is_intact
from chatlog.projections.store import ViewStore
from chatlog.schemas.errors import (
    BrokerUnavailable,
    ConfigError,
    Conflict,
    DataLoss,
    DeliveryFailed,
    Interrupted,
    StoreUnavailable,
)

__all__ = [
    "DataLoss",
    "GenerationPointer",
    "KafkaProjector",
    "ProjectorStats",
    "tune_garbage_collector",
]

OnDataLoss = Literal["stop", "rebuild"]
T = TypeVar("T")

# Retries of a failing Redis or dead-letter write: soon after a blip, and no more than
# one attempt every few seconds during a long outage.
_FIRST_RETRY_S = 0.1
_MAX_RETRY_S = 5.0
# How often the wait between retries polls the consumer (serving the group) and looks
# at `stop`.
_WAIT_POLL_S = 0.1
# How long after its own session expired a fenced projector blames that expiry, not a
# second process with its instance id: a rejoin takes a second or two.
_REJOIN_WINDOW_S = 30.0


class GenerationPointer(Protocol):
    """The pointer to the live generation of the read-model."""

    def live(self) -> str | None:
        """The live generation; None if the pointer is gone."""
        ...

    def epoch(self, generation: str) -> str | None:
        """`generation`'s epoch value; None if it has none (lost, or never created)."""
        ...

    def initialise(self, generation: str) -> str:
        """Make `generation` live, with a new epoch, if none is; the live one."""
        ...

    def create(self, generation: str) -> None:
        """Give `generation` an epoch if it has none."""
        ...

    def mark_lost(self, generation: str, reason: str) -> None:
        """Mark `generation` lost, if its epoch is there."""
        ...


# Rebuilds the whole read-model from the log into a new generation and makes it live
# (`chatlog.processors.replay.rebuild`); returns that generation. Stops when the event is set.
Rebuild = Callable[[threading.Event], str]


log = logging.getLogger("chatlog.projector")
_KAFKA_LOG = logging.getLogger("chatlog.kafka")


@dataclass(slots=True)
class ProjectorStats:
    """Running totals since start."""

    batches: int = 0
    events: int = 0
    applied: int = 0
    unchanged: int = 0
    duplicates: int = 0
    conflicts: int = 0
    dead_letters: int = 0
    # Redis or the dead-letter topic failing: how many times it started to, and how many
    # attempts failed in all.
    outages: int = 0
    retries: int = 0

    def add(self, result: BatchResult) -> None:
        """Count one batch."""
        self.batches += 1
        self.events += result.events
        self.applied += result.applied
        self.unchanged += result.unchanged
        self.duplicates += result.duplicates
        self.conflicts += result.conflicts
        self.dead_letters += len(result.dead_letters)


class KafkaProjector:
    """Runs a `ProjectionCore` as a member of a Kafka consumer group."""

    def __init__(
        self,
        core: ProjectionCore,
        *,
        bootstrap_servers: str,
        topic: str,
        dlq_topic: str,
        group_id: str = "chatlog-projector",
        instance_id: str | None = None,
        session_timeout_s: float = 10.0,
        config: Mapping[str, Any] | None = None,
        batch_size: int = 5000,
        poll_timeout: float = 0.05,
        generations: GenerationPointer | None = None,
        generation: str | None = None,
        store_for: Callable[[str], ViewStore] | None = None,
        on_data_loss: OnDataLoss = "stop",
        rebuild: Rebuild | None = None,
        generation_check_s: float = 1.0,
    ) -> None:
        if generations is not None and store_for is None:
            raise ValueError("watching generations needs store_for")
        if on_data_loss == "rebuild" and generations is not None and rebuild is None:
            raise ValueError('on_data_loss="rebuild" needs rebuild')
        self.core = core
        self.generations = generations
        # None: no generation was live when it started (a fresh deployment, or lost),
        # or Redis did not answer then; `_check_start` finds it on the first assignment.
        self.generation = generation
        self.on_data_loss = on_data_loss
        self._rebuild = rebuild
        # Lost data found while starting partitions, to rebuild from the loop.
        self._loss: DataLoss | None = None
        self._store_for = store_for
        self._generation_check_s = generation_check_s
        self._checked_at = time.monotonic()
        self._seeks: dict[int, int] = {}
        self.topic = topic
        self.group_id = group_id
        self.instance_id = instance_id
        self.session_timeout_s = session_timeout_s
        self.dlq_topic = dlq_topic
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.stats = ProjectorStats()
        self.assigned: set[int] = set()
        # Assigned while Redis could not say where to start them: held paused till it can.
        self._unstarted: set[int] = set()
        # Records fetched while paused, kept for the batch in hand (see `_wait`).
        self._held: list[Record] = []
        self._reseek = False
        self._failing_since: float | None = None
        # When the group last expired this member's session (`_on_lost`).
        self._session_lost_at: float | None = None
        self._stop = threading.Event()
        extra = dict(config or {})
        membership = {} if instance_id is None else {"group.instance.id": instance_id}
        self._consumer = Consumer(
            {
                **extra,
                **membership,
                "bootstrap.servers": bootstrap_servers,
                "group.id": group_id,
                "session.timeout.ms": round(session_timeout_s * 1000),
                "auto.offset.reset": "earliest",
                # Offsets are stored by hand after Redis acknowledged, committed in the
                # background; a crash replays at most the uncommitted tail.
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                "auto.commit.interval.ms": 1000,
                "partition.assignment.strategy": "cooperative-sticky",
                "logger": _KAFKA_LOG,
            }
        )
        self._dlq = KafkaDeadLetters(bootstrap_servers, dlq_topic, config=extra)

    def run(self, *, stop: threading.Event | None = None, report_every_s: float = 10.0) -> None:
        """Project until `stop` is set; then commit and close (see `close`)."""
        stop = stop or threading.Event()
        self._stop = stop
        self._consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        last_report = time.monotonic()
        try:
            while not stop.is_set():
                self.step()
                if time.monotonic() - last_report >= report_every_s:
                    log.info("projector: %s", self.stats)
                    last_report = time.monotonic()
        finally:
            self.close()

    def step(self) -> BatchResult:
        """Consume and project one batch, riding out Redis and dead-letter faults."""
        try:
            try:
                return self._step()
            except DataLoss as exc:
                self._data_lost(exc)
                return BatchResult()
        except Interrupted:
            # Stopped while retrying: the batch's offsets stay unstored, so whoever owns
            # its partitions next projects it again, which changes nothing done already.
            log.info("stopping while retrying; the unfinished batch is left for a replay")
            return BatchResult()

    def _step(self) -> BatchResult:
        if self._loss is not None:
            raise self._loss
        # One step, so that Redis counts as back only once both work: the generation
        # check alone may not touch Redis at all (no generation known yet).
        self._retrying("reading the live generation and progress marks", self._prepare)
        # Wait for the first record only, then take whatever else is already fetched:
        # consume(n, timeout) would hold a lone event until the timeout ran out.
        first = self._consumer.poll(self.poll_timeout)
        messages = [] if first is None else [first]
        if first is not None:
            messages += self._consumer.consume(self.batch_size - 1, timeout=0)
        records = self._take_held()
        records += [r for r in (self._record_of(m) for m in messages) if r is not None]
        if not records:
            return BatchResult()

        def project() -> BatchResult:
            records.extend(self._take_held())
            # Partitions revoked while Redis was failing belong to another projector.
            records[:] = [r for r in records if r.partition in self.assigned]
            return self.core.handle(records)

        result = self._retrying("projecting a batch into Redis", project)
        self._retrying(
            "writing dead letters", lambda: self._dlq.write(result.dead_letters, stop=self._stop)
        )
        self._store_offsets(result.last_offsets)
        self.stats.add(result)
        return result

    def _prepare(self) -> None:
        self._watch_generation()
        self._start_held()

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """`attempt()`, retried with backoff while Redis or the dead-letter topic fails;
        consumption stays paused from the first failure until an attempt succeeds."""
        delay = _FIRST_RETRY_S
        while True:
            try:
                value = attempt()
            except (StoreUnavailable, DeliveryFailed) as exc:
                # A failed pipeline may have landed in part: reload views from Redis
                # rather than trust a cache that may not match what it holds.
                self.core.forget()
                self._failed(what, exc)
                self._wait(delay)
                delay = min(delay * 2, _MAX_RETRY_S)
                continue
            self._recovered()
            return value

    def _failed(self, what: str, exc: Exception) -> None:
        self.stats.retries += 1
        if self._failing_since is not None:
            log.debug("%s failed again: %s", what, exc)
            return
        self._failing_since = time.monotonic()
        self.stats.outages += 1
        log.warning(
            "%s failed (%s); consumption paused, retrying every %g-%g s until it works",
            what,
            exc,
            _FIRST_RETRY_S,
            _MAX_RETRY_S,
        )
        self._consumer.pause(self._consumer.assignment())

    def _recovered(self) -> None:
        if self._failing_since is None:
            return
        log.warning(
            "working again after %.1f s (%d failed attempts since start); consumption resumed",
            time.monotonic() - self._failing_since,
            self.stats.retries,
        )
        self._failing_since = None
        self._consumer.resume(
            [tp for tp in self._consumer.assignment() if tp.partition not in self._unstarted]
        )

    def _wait(self, seconds: float) -> None:
        """Sleep `seconds` while serving the group; `Interrupted` once `stop` is set."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Polling keeps the membership (heartbeats, max.poll.interval.ms) and runs
            # the rebalance callbacks; the partitions are paused, so nothing is fetched.
            message = self._consumer.poll(min(remaining, _WAIT_POLL_S))
            record = None if message is None else self._record_of(message)
            if record is not None:
                # Fetched just before the pause: the consumer's position is past it
                # now, so dropping it would skip it.
                self._held.append(record)
        raise Interrupted(f"stopped while retrying a step of the projection of {self.topic}")

    def _take_held(self) -> list[Record]:
        held, self._held = self._held, []
        return held

    def _start_held(self) -> None:
        """Start the partitions assigned while Redis could not say where (see `_on_assign`)."""
        held = [TopicPartition(self.topic, p) for p in sorted(self._unstarted & self.assigned)]
        self._unstarted.clear()
        if not held:
            return
        try:
            starts = self._starts(self._consumer, held)
        except StoreUnavailable:
            self._unstarted.update(tp.partition for tp in held)
            raise
        # Assigning again is how a start is set before fetching begins (as on assign).
        self._consumer.incremental_unassign(held)
        self._assign(self._consumer, starts)
        log.info("held partitions %s started", [tp.partition for tp in starts])

    def _assign(self, consumer: Consumer, starts: list[TopicPartition]) -> None:
        """Add `starts` to the assignment: fetched from their offsets, or paused while
        Redis is failing (`_recovered` resumes them).

        librdkafka keeps a partition's pause across an unassign and an assign, so one
        paused before (held here while Redis was out, or revoked during an outage and
        assigned again since) would never be fetched again. Resumed before the assign,
        so that the offset the assign sets is the last word on where to fetch from."""
        consumer.resume(starts)
        consumer.incremental_assign(starts)
        if self._failing_since is not None:
            consumer.pause(starts)

    def close(self, *, timeout: float = 15.0) -> bool:
        """Commit what was stored and close the consumer, within `timeout` seconds.

        With an `instance_id` the projector stays a member of the group until its session
        times out, so that a restart gets the same partitions back at once.

        Returns False if the consumer did not close in time. That is safe to walk away
        from: every write is idempotent, so the uncommitted tail is replayed by the next
        owner of the partitions and changes nothing.
        """
        closing = threading.Thread(
            target=self._consumer.close, name="chatlog-projector-close", daemon=True
        )
        closing.start()
        closing.join(timeout)
        self._dlq.close(10)
        if closing.is_alive():
            log.warning(
                "the consumer did not close within %g s; leaving without the final commit "
                "(the next owner replays the uncommitted tail, which changes nothing)",
                timeout,
            )
            return False
        return True

    def _record_of(self, message: Message) -> Record | None:
        """`record_of`, with the errors a setting causes reported as that setting's."""
        error = message.error()
        # librdkafka reports a fenced static member as a generic fatal error (code _FATAL,
        # not FENCED_INSTANCE_ID): its text is all that tells them apart.
        if (
            error is not None
            and error.code() == KafkaError._FATAL
            and "group.instance.id" in error.str()
        ):
            lost_at = self._session_lost_at
            if lost_at is not None and time.monotonic() - lost_at <= _REJOIN_WINDOW_S:
                # Seen when the group coordinator's broker died: the failover outlasted
                # the session, librdkafka rejoined under the same instance id, and a
                # request still carrying the old member id was fenced by that rejoin
                # (librdkafka issue #3437). The consumer is unusable, but a restart
                # rejoins at once: temporary, not a setting to fix.
                raise BrokerUnavailable(
                    f"the group coordinator expired this projector's session in group "
                    f"{self.group_id} (a broker failover longer than the "
                    f"{self.session_timeout_s:g} s session timeout), and the Kafka client, "
                    f"fenced by its own rejoin, cannot continue: restart the projector "
                    f"(it replays the uncommitted tail, which changes nothing)",
                    group=self.group_id,
                    instance_id=self.instance_id,
                )
            raise ConfigError(
                f"another process joined consumer group {self.group_id} with this "
                f"projector's group.instance.id {self.instance_id!r} and took its partitions: "
                f"give each projector of the group its own CHATLOG_INSTANCE_ID (the default, "
                f"the host name, is the same for every projector on one host)",
                setting="CHATLOG_INSTANCE_ID",
            )
        if error is not None and error.code() == KafkaError.INVALID_SESSION_TIMEOUT:
            raise ConfigError(
                f"the broker refused to let the projector join group {self.group_id} with a "
                f"session timeout of {self.session_timeout_s:g} s: set "
                f"CHATLOG_SESSION_TIMEOUT_S within the broker's group.min.session.timeout.ms "
                f"and group.max.session.timeout.ms",
                setting="CHATLOG_SESSION_TIMEOUT_S",
            )
        return record_of(message, self.topic)

    def _store_offsets(self, last_offsets: Mapping[int, int]) -> None:
        # Only local: the background commit sends them, and retries a failed commit at
        # its next interval, so a broker fault here needs no retry of ours.
        owned = [
            TopicPartition(self.topic, p, o + 1)
            for p, o in last_offsets.items()
            if p in self.assigned
        ]
        if not owned:
            return
        try:
            self._consumer.store_offsets(offsets=owned)
        except KafkaException as exc:
            # A partition revoked meanwhile: its new owner replays, which is harmless.
            log.info("offsets not stored (%s); the next owner replays them", exc)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {tp.partition for tp in partitions}
        log.info("assigned partitions %s", sorted(tp.partition for tp in partitions))
        if not partitions:
            return
        starts = partitions
        if self.generations is not None:
            # Start where the committed offsets say, unless the store lacks what they
            # promise; assigning here, before fetching starts, is how the start is set.
            try:
                starts = self._starts(consumer, partitions)
            except StoreUnavailable as exc:
                # Without the marks the start is unknown: hold them, paused, until
                # Redis answers (`_start_held`, from the loop).
                self._unstarted |= {tp.partition for tp in partitions}
                self._failed("reading the progress marks", exc)
                log.info(
                    "partitions %s held, paused, until Redis says where they start",
                    sorted(tp.partition for tp in partitions),
                )
            except DataLoss as exc:
                # Not here: a rebuild takes long, and stopping is best done from the loop.
                # Held until the read-model is whole again (`_start_held`).
                self._unstarted |= {tp.partition for tp in partitions}
                self._loss = exc
        self._assign(consumer, starts)

    def _starts(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        committed = consumer.committed(partitions, timeout=30)
        if self.generations is not None:
            self._check_start({tp.partition: tp.offset for tp in committed})
        marks = self.core.store.progress()
        # Never committed: a new group, or a generation built by replay: after the mark.
        return [
            TopicPartition(
                self.topic,
                tp.partition,
                tp.offset if tp.offset >= 0 else _after(marks.get(tp.partition, -1)),
            )
            for tp in committed
        ]

    def _check_start(self, committed: Mapping[int, int]) -> None:
        """Find the live generation and make sure it holds what `committed` promises:
        create the first one in a fresh deployment; `DataLoss` if it lost data."""
        assert self.generations is not None
        assert self._store_for is not None
        live = self.generations.live()
        epoch = None if live is None else self.generations.epoch(live)
        if live is not None and live != self.generation:
            self._use(live)
        verdict = assess_start(
            generation=live,
            epoch=epoch,
            marks=self.core.store.progress() if live is not None else {},
            committed=committed,
        )
        if isinstance(verdict, Lost):
            raise DataLoss(
                f"Redis has lost part of the read-model: {verdict.reason}",
                partition=verdict.partition,
                generation=live,
            )
        if verdict == "fresh":
            live = self.generations.initialise(self.generation or "g1")
            log.info("no read-model in Redis yet: generation %s created", live)
            if live != self.generation:
                self._use(live)
        elif verdict == "adopt":
            assert live is not None
            log.warning("generation %s has no epoch (written before epochs): given one", live)
            self.generations.create(live)

    def _data_lost(self, exc: DataLoss) -> None:
        """Stop (`on_data_loss="stop"`), or rebuild the read-model and continue."""
        self._loss = None
        problem = exc.message
        generations, generation = self.generations, self.generation
        if generations is not None and generation is not None:
            live = self._retrying("reading the live generation", generations.live)
            if live is not None and live != generation and is_intact(generations.epoch(live)):
                # Not lost: a replay flipped and deleted the old generation before this
                # projector saw the flip (it was slow). Switch as `_watch_generation` does.
                log.info("generation %s is live now (was %s): switching", live, generation)
                self._use(live)
                self._resume_from_marks()
                return
            # Readers refuse it from now on (a restored snapshot still has its epoch).
            lost = generation
            self._retrying(
                "marking the lost generation", lambda: generations.mark_lost(lost, problem[:300])
            )
        if self.on_data_loss == "stop" or self._rebuild is None:
            raise DataLoss(
                f"{problem}. Readers get ReadModelLost until it is rebuilt. Rebuild it from "
                f"the log with `chatlog replay`, or set CHATLOG_ON_DATA_LOSS=rebuild to let "
                f"the projector rebuild it; until then the projector refuses to start",
                **exc.context,
            ) from exc
        log.error(
            "%s; rebuilding the whole read-model from the log into a new generation "
            "(CHATLOG_ON_DATA_LOSS=rebuild); readers get ReadModelLost until it is live",
            problem,
        )
        started = time.monotonic()
        generation = self._retrying("rebuilding the lost read-model", self._rebuild_lost)
        # Partitions assigned meanwhile found the old generation lost too: they are held,
        # and `_start_held` checks them again against the new one.
        self._loss = None
        self._use(generation)
        self._resume_from_marks()
        log.error(
            "the read-model is whole again: generation %s rebuilt from the log in %.1f s "
            "and live; projecting continues from its progress marks",
            generation,
            time.monotonic() - started,
        )

    def _rebuild_lost(self) -> str:
        """Run the rebuild in a thread while polling (paused) to keep the partitions."""
        assert self._rebuild is not None
        self.core.forget()
        self._held.clear()  # read again from the new generation's marks
        self._consumer.pause(self._consumer.assignment())
        stop = threading.Event()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["generation"] = self._rebuild(stop)  # type: ignore[misc]
            except Conflict:  # another projector's rebuild flipped first: use it
                outcome["generation"] = None
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=run, name="chatlog-projector-rebuild", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                if self._stop.is_set():
                    stop.set()
                    thread.join(30)
                    raise Interrupted("stopped while rebuilding the lost read-model")
                self._consumer.poll(_WAIT_POLL_S)  # the group; fetched records are read again
                thread.join(0)
        finally:
            self._consumer.resume(
                [tp for tp in self._consumer.assignment() if tp.partition not in self._unstarted]
            )
        if "error" in outcome:
            raise outcome["error"]
        generation = outcome["generation"]
        if generation is None:
            generation = self.generations.live() if self.generations is not None else None
            if generation is None:
                raise DataLoss("the rebuild lost a race and no generation is live")
        return str(generation)

    def _watch_generation(self) -> None:
        if self.generations is None or self._store_for is None:
            return
        if self._reseek:  # a switch whose marks Redis failed to give
            self._resume_from_marks()
        self._seek_pending()
        now = time.monotonic()
        if now - self._checked_at < self._generation_check_s or self.generation is None:
            return
        live = self.generations.live()
        if live is None:
            raise DataLoss(
                f"Redis has lost the read-model: the pointer to the live generation is gone "
                f"(it was {self.generation})",
                generation=self.generation,
            )
        if live != self.generation:
            log.info("generation %s is live now (was %s): switching", live, self.generation)
            self._use(live)
            # Continue where the new generation is, not where this projector was: the
            # events in between went to the old generation only.
            self._resume_from_marks()
        elif not is_intact(self.generations.epoch(live)):
            # Found here even with no traffic; the writes refuse it on their own.
            raise DataLoss(
                f"Redis has lost the read-model: generation {live} has lost its epoch",
                generation=live,
            )
        # Only once all of it is done: after a Redis failure, the retry checks again.
        self._checked_at = now

    def _use(self, generation: str) -> None:
        """Project into `generation` from now on; cached views of the old one are dropped."""
        assert self._store_for is not None  # watching generations needs it (see __init__)
        self.generation = generation
        self.core.store = self._store_for(generation)
        self.core.forget()

    def _resume_from_marks(self) -> None:
        """Drop the cached views and read each assigned partition from after its mark."""
        self.core.forget()
        self._held.clear()  # fetched from the old position: the seek reads them again
        self._reseek = True
        marks = self.core.store.progress()
        self._seeks = {p: _after(marks.get(p, -1)) for p in self.assigned}
        self._reseek = False
        self._seek_pending()

    def _seek_pending(self) -> None:
        for partition, offset in list(self._seeks.items()):
            try:
                self._consumer.seek(TopicPartition(self.topic, partition, offset))
            except KafkaException as exc:
                # Not fetching yet (just assigned): try again before the next batch.
                log.debug("seek %d to %d deferred: %s", partition, offset, exc)
                continue
            del self._seeks[partition]

    # Cooperative-sticky: `partitions` is only what is added or taken away, never the
    # whole assignment. The client applies the delta itself (incremental_assign and
    # incremental_unassign) unless a callback did.

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drop(partitions)
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:  # nothing new to commit is fine
                log.warning("commit on revoke: %s", exc)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked (this member's session expired): another member may be
        # projecting them already, and the group refuses commits from this one.
        log.warning(
            "lost partitions %s (session expired)", sorted(tp.partition for tp in partitions)
        )
        self._session_lost_at = time.monotonic()
        self._drop(partitions)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        self.assigned -= {tp.partition for tp in partitions}
        self._unstarted -= {tp.partition for tp in partitions}
        for tp in partitions:
            self._seeks.pop(tp.partition, None)
        # The new owner may write these sessions: our cached views of them go stale.
        self.core.forget()


def _after(mark: int) -> int:
    """Where to read a partition from once it is projected up to `mark` (-1: nothing)."""
    return mark + 1 if mark >= 0 else OFFSET_BEGINNING


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector from pausing the projection for long.

    For a process whose main job is projecting (`chatlog run projector`); it changes
    process-wide state, so a library embedding the projector decides for itself.

    The projector holds many long-lived, acyclic objects (cached views and their
    messages) and allocates quickly, so with the default thresholds every few thousand
    events a full collection walks the whole cache: pauses of 100-200 ms, seen as
    publish-to-visible tail latency. Start-up objects are frozen out of collection, and
    young collections run less often; reference counting still frees nearly everything.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
