"""The embedder's side of the recall index: the live generation's index, checked, and a
batch's `IndexWork` applied to it.

Which index? The live generation's: the read-model's pointer says which generation is
live (on CHATLOG_REDIS_URL, `pointer`), and that generation's recall index lives on the
recall Redis (CHATLOG_RECALL_REDIS_URL, `client`). With no pointer yet (no projector has
run) the first generation is meant, as readers assume.

Is it whole? When the embedder starts, the index is judged as the read-model is
(`IndexState.assess`): none built and nothing committed by the embedder's group is a
fresh start (it is created); an index without its metadata, metadata without an index
(FT.DROPINDEX, a flush, a restart without persistence), an epoch marked lost, or marks
behind the group's committed offsets is lost: it is marked lost, so readers refuse it,
and the embedder stops with `DataLoss` naming `chatlog replay`, which rebuilds it.
Running, the embedder checks again about once a second (`check`), and every write checks
the epoch atomically. An index built by another embedding model is refused
(`EmbeddingModelMismatch`).

Whose sessions? `owners` reads the owners of a batch's sessions from the read-model's
views of the generation written (on CHATLOG_REDIS_URL, `views`), so that the embedder
leaves out an event the projector refuses as foreign (`RecallIndexing.plan`). A session
the read-model does not hold (the projector is behind, or it expired) has no known
owner there; the index's own rule still holds for it (`apply_work`).

A batch's work (`apply_work`, the one rule the embedder and a replay both write with):
the erased sessions first (their owner's vectors in every generation), then the batch's
upserts, deletions and progress marks in one atomic call, which refuses what another
user's event asks of a document it does not own. Both steps are idempotent, so a batch
applied again after a crash changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

import redis

from chatlog.processors.recall_indexing import IndexWork
from chatlog.projections.epochs import Lost
from chatlog.projections.keys import KeySpace
from chatlog.projections.recall import Algorithm, EmbeddingModel
from chatlog.projections.redis_reader import DEFAULT_GENERATION
from chatlog.projections.redis_store import redis_errors, text
from chatlog.projections.redis_vectors import (
    DEFAULT_ALGORITHM,
    IndexState,
    RedisVectorIndex,
    erase_session,
)
from chatlog.schemas.errors import DataLoss, RecallIndexLost
from chatlog.schemas.sealing import KeyScope

__all__ = ["Applied", "LivePointer", "RedisRecallWriter", "apply_work", "index_lost"]

log = logging.getLogger("chatlog.embedder")


class LivePointer(Protocol):
    """The read-model's pointer to its live generation (`GenerationStore`)."""

    def live(self) -> str | None:
        """The live generation; None when there is no pointer (yet)."""
        ...


@dataclass(frozen=True, slots=True)
class Applied:
    """What one batch's work did to the index."""

    written: int = 0
    refused: int = 0  # turns of a user whose erasure mark was set
    deleted: int = 0  # by redactions
    erased: int = 0  # by session erasures, in every generation
    # Upserts and deletions refused: the document belongs to another tenant or user.
    foreign: int = 0


def apply_work(index: RedisVectorIndex, work: IndexWork) -> Applied:
    """Apply one batch's `work` to `index`: the sessions it erased first (each only its
    owner's vectors, in every generation: erasure reaches a rebuild in progress too),
    then its upserts, deletions and marks in the index's one atomic call (skipped when
    there are none, so an empty batch needs no index)."""
    erased = 0
    for ref in work.erased_sessions:
        erased += erase_session(
            index.client,
            prefix=index.keys.prefix,
            tenant=ref.tenant,
            user_id=ref.user_id,
            session_id=ref.session_id,
        )
    if not (work.upserts or work.deletions or work.marks):
        return Applied(erased=erased)
    result = index.apply(work.upserts, work.deletions, work.marks)
    return Applied(result.written, result.skipped, result.deleted, erased, result.foreign)


def index_lost(generation: str, problem: str) -> DataLoss:
    """The error that stops the embedder when the recall index of `generation` was lost."""
    return DataLoss(
        f"the recall index of generation {generation} was lost: {problem}. It is marked "
        f"lost, so recall refuses it; rebuild it from the log with `chatlog replay` (the "
        f"read-model and its recall index together); until then the embedder refuses to "
        f"start",
        generation=generation,
    )


class RedisRecallWriter:
    """Writes batches to the recall index of the live generation."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        model: EmbeddingModel,
        pointer: LivePointer,
        algorithm: Algorithm = DEFAULT_ALGORITHM,
        views: redis.Redis | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.model = model
        self.pointer = pointer
        self.algorithm = algorithm
        self.views = views  # the read-model (None: no session's owner is known here)
        self.index: RedisVectorIndex | None = None

    @property
    def generation(self) -> str | None:
        """The generation written to; None before `open`."""
        return None if self.index is None else self.index.keys.generation

    def live(self) -> str:
        """The live generation, as the read-model's pointer says."""
        return self.pointer.live() or DEFAULT_GENERATION

    def open(self, committed: Mapping[int, int]) -> IndexState:
        """Start on the live generation's index, whose consumer group committed
        `committed` (partition -> next offset): created if fresh, checked if not."""
        index = self._index(self.live())
        state = index.state()
        verdict = state.assess(committed)
        if isinstance(verdict, Lost):
            raise self._lost(index, verdict.reason)
        self.index = index
        return index.ensure()  # creates a fresh one; refuses another model's

    def use(self, generation: str) -> IndexState:
        """Move to `generation` (a replay made it live): its index, created if the replay
        did not build one (the embedder then fills it from offset 0)."""
        index = self._index(generation)
        state = index.state()
        if state.problem is not None:
            raise self._lost(index, state.problem)
        self.index = index
        return index.ensure()

    def check(self) -> None:
        """`DataLoss` if the index was lost since it was opened."""
        index = self._opened()
        state = index.state()
        problem = state.problem
        if problem is None and "epoch" not in state.meta:  # index and metadata both gone
            problem = "its index and its metadata are gone from Redis (a flush, a restart)"
        if problem is not None:
            raise self._lost(index, problem)

    def marks(self) -> dict[int, int]:
        """Each partition's last offset indexed in this generation."""
        return dict(self._opened().state().marks)

    def apply(self, work: IndexWork) -> Applied:
        """Apply one batch's work: its erased sessions, then the rest at once."""
        index = self._opened()
        try:
            return apply_work(index, work)
        except RecallIndexLost as exc:
            raise self._lost(index, exc.message) from exc

    def owners(self, session_ids: Collection[str]) -> dict[str, KeyScope]:
        """The owners of those of `session_ids` the read-model holds, in the generation
        written: one pipelined round trip."""
        generation = self.generation
        if self.views is None or generation is None or not session_ids:
            return {}
        keys = KeySpace(self.prefix, generation)
        sessions = list(session_ids)
        with redis_errors():
            pipe = self.views.pipeline(transaction=False)
            for session_id in sessions:
                pipe.hmget(keys.meta(session_id), "tenant", "user_id")
            replies = pipe.execute()
        return {
            session_id: KeyScope(text(tenant), text(user_id))
            for session_id, (tenant, user_id) in zip(sessions, replies, strict=True)
            if tenant is not None and user_id is not None
        }

    def _opened(self) -> RedisVectorIndex:
        if self.index is None:
            raise RuntimeError("the recall writer is not open: call open() first")
        return self.index

    def _index(self, generation: str) -> RedisVectorIndex:
        return RedisVectorIndex(
            self.client,
            prefix=self.prefix,
            generation=generation,
            model=self.model,
            algorithm=self.algorithm,
        )

    def _lost(self, index: RedisVectorIndex, problem: str) -> DataLoss:
        """Mark `index` lost (readers refuse it) and say how to rebuild it."""
        index.mark_lost(problem[:300])
        log.error("the recall index of generation %s was lost: %s", index.keys.generation, problem)
        return index_lost(index.keys.generation, problem)
