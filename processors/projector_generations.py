"""The projector's generation of the read-model: kept the live one, and rebuilt when
Redis lost data.

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

Key layouts: a generation built with an older key layout (`chatlog.projections.keys`) is
continued in that layout (its store reads it from the epoch), and the projector says at
start that `chatlog replay` migrates it; until then readers refuse its session lists.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Literal, Protocol

from chatlog.processors.projection import ProjectionCore
from chatlog.processors.projector_outages import Outages
from chatlog.projections.epochs import Lost, assess_start, is_intact, layout_problem
from chatlog.projections.keys import LAYOUT, LEGACY_LAYOUT
from chatlog.projections.store import ViewStore
from chatlog.schemas.errors import Conflict, DataLoss

__all__ = ["GenerationPointer", "GenerationWatch", "OnDataLoss", "Rebuild"]

OnDataLoss = Literal["stop", "rebuild"]

log = logging.getLogger("chatlog.projector")


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

    def create(self, generation: str, *, layout: int = LAYOUT) -> None:
        """Give `generation` an epoch, of key `layout`, if it has none."""
        ...

    def mark_lost(self, generation: str, reason: str) -> None:
        """Mark `generation` lost, if its epoch is there."""
        ...


# Rebuilds the whole read-model from the log into a new generation and makes it live
# (`chatlog.processors.replay.rebuild`); returns that generation. Stops when the event is set.
Rebuild = Callable[[threading.Event], str]


class GenerationWatch:
    """Keeps a projector's `core` on the live generation, and acts on lost data.

    `store_for` gives the store of a generation to switch `core` to. After a switch,
    `reposition` reads each assigned partition again from after the new generation's
    progress mark. Every step that needs Redis goes through `outages`.
    """

    def __init__(
        self,
        core: ProjectionCore,
        pointer: GenerationPointer | None,
        *,
        generation: str | None,
        store_for: Callable[[str], ViewStore] | None,
        on_data_loss: OnDataLoss,
        rebuild: Rebuild | None,
        check_s: float,
        outages: Outages,
        reposition: Callable[[], None],
    ) -> None:
        self._core = core
        self.pointer = pointer
        # None: no generation was live when it started (a fresh deployment, or lost),
        # or Redis did not answer then; `check_start` finds it on the first assignment.
        self.generation = generation
        self._store_for = store_for
        self.on_data_loss = on_data_loss
        self._rebuild = rebuild
        self._check_s = check_s
        self._checked_at = time.monotonic()
        self._outages = outages
        self._reposition = reposition
        # Lost data found while starting partitions, for the loop to act on (`data_lost`).
        self.loss: DataLoss | None = None

    @property
    def watching(self) -> bool:
        """Whether there is a pointer to watch (and stores to switch to)."""
        return self.pointer is not None and self._store_for is not None

    def check_start(self, committed: Mapping[int, int]) -> None:
        """Find the live generation and make sure it holds what `committed` promises:
        create the first one in a fresh deployment; `DataLoss` if it lost data."""
        assert self.pointer is not None
        assert self._store_for is not None
        live = self.pointer.live()
        epoch = None if live is None else self.pointer.epoch(live)
        if live is not None and live != self.generation:
            self._use(live)
        verdict = assess_start(
            generation=live,
            epoch=epoch,
            marks=self._core.store.progress() if live is not None else {},
            committed=committed,
        )
        if isinstance(verdict, Lost):
            raise DataLoss(
                f"Redis has lost part of the read-model: {verdict.reason}",
                partition=verdict.partition,
                generation=live,
            )
        if verdict == "fresh":
            live = self.pointer.initialise(self.generation or "g1")
            log.info("no read-model in Redis yet: generation %s created", live)
            if live != self.generation:
                self._use(live)
        elif verdict == "adopt":
            assert live is not None
            log.warning("generation %s has no epoch (written before epochs): given one", live)
            # Written before epochs, so before layouts: the first layout.
            self.pointer.create(live, layout=LEGACY_LAYOUT)
            epoch = self.pointer.epoch(live)
        problem = None if live is None or epoch is None else layout_problem(live, epoch)
        if problem is not None:
            log.warning("%s", problem)

    def watch(self) -> None:
        """About once every `check_s`: follow a flip of the pointer; `DataLoss` if the
        pointer or the live generation's epoch is gone."""
        assert self.pointer is not None
        now = time.monotonic()
        if now - self._checked_at < self._check_s or self.generation is None:
            return
        live = self.pointer.live()
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
            self._reposition()
        elif not is_intact(self.pointer.epoch(live)):
            # Found here even with no traffic; the writes refuse it on their own.
            raise DataLoss(
                f"Redis has lost the read-model: generation {live} has lost its epoch",
                generation=live,
            )
        # Only once all of it is done: after a Redis failure, the retry checks again.
        self._checked_at = now

    def data_lost(self, exc: DataLoss) -> None:
        """Stop (`on_data_loss="stop"`), or rebuild the read-model and continue."""
        self.loss = None
        problem = exc.message
        pointer, generation = self.pointer, self.generation
        if pointer is not None and generation is not None:
            live = self._outages.retrying("reading the live generation", pointer.live)
            if live is not None and live != generation and is_intact(pointer.epoch(live)):
                # Not lost: a replay flipped and deleted the old generation before this
                # projector saw the flip (it was slow). Switch as `watch` does.
                log.info("generation %s is live now (was %s): switching", live, generation)
                self._use(live)
                self._reposition()
                return
            # Readers refuse it from now on (a restored snapshot still has its epoch).
            lost = generation
            self._outages.retrying(
                "marking the lost generation", lambda: pointer.mark_lost(lost, problem[:300])
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
        generation = self._outages.retrying("rebuilding the lost read-model", self._rebuild_lost)
        # Partitions assigned meanwhile found the old generation lost too: they are held,
        # and the projector's `_start_held` checks them again against the new one.
        self.loss = None
        self._use(generation)
        self._reposition()
        log.error(
            "the read-model is whole again: generation %s rebuilt from the log in %.1f s "
            "and live; projecting continues from its progress marks",
            generation,
            time.monotonic() - started,
        )

    def _rebuild_lost(self) -> str:
        """Run the rebuild while the projector polls (paused) to keep its partitions."""
        assert self._rebuild is not None
        self._core.forget()
        generation: str | None
        try:
            generation = self._outages.paused_while(
                self._rebuild,
                what="rebuilding the lost read-model",
                thread_name="chatlog-projector-rebuild",
            )
        except Conflict:  # another projector's rebuild flipped first: use it
            generation = None
        if generation is None:
            generation = self.pointer.live() if self.pointer is not None else None
            if generation is None:
                raise DataLoss("the rebuild lost a race and no generation is live")
        return generation

    def _use(self, generation: str) -> None:
        """Project into `generation` from now on; cached views of the old one are dropped."""
        assert self._store_for is not None  # watching generations needs it (the projector's)
        self.generation = generation
        self._core.store = self._store_for(generation)
        self._core.forget()
