"""The recall indexes a replay builds, drops and compares, on the recall index's Redis.

`RedisRecallTarget` writes one batch's `IndexWork` into one generation's index by the
embedder's own rule (`chatlog.processors.redis_recall_writer.apply_work`): the erased
sessions first (in every generation, as erasure always reaches), then the upserts,
deletions and progress marks in the index's one atomic call.

`RedisRecallGenerations` is what `chatlog.processors.replay` asks of the recall side
(`RecallGenerations`): a sink for the generation being built, dropping a generation's
index when the generation is deleted, how far one has indexed, whether one was lost, and
the comparison of `--verify`. A generation being built whose leftover index is lost, or
was made by another embedding model than the settings name (a replay resumed after the
model changed), is dropped and built again from offset 0: nobody reads it yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import redis

from chatlog.processors.recall_indexing import IndexWork, RecallIndexing
from chatlog.processors.redis_recall_writer import apply_work
from chatlog.processors.replay_recall import RecallSink
from chatlog.projections.recall import EmbeddingModel
from chatlog.projections.redis_generations import Difference
from chatlog.projections.redis_recall_compare import (
    RecallComparison,
    compare_documents,
    counted,
)
from chatlog.projections.redis_vectors import RedisVectorIndex

__all__ = ["RedisRecallGenerations", "RedisRecallTarget"]

log = logging.getLogger("chatlog.replay")


class RedisRecallTarget:
    """One generation's recall index in Redis, as a replay writes it (`RecallTarget`)."""

    def __init__(self, index: RedisVectorIndex) -> None:
        self.index = index

    def progress(self) -> Mapping[int, int]:
        """Partition -> last offset indexed."""
        return self.index.state().marks

    def write(self, work: IndexWork) -> int:
        """Apply `work` (`apply_work`); the turns written."""
        return apply_work(self.index, work).written


class RedisRecallGenerations:
    """Every generation's recall index on one Redis, for a replay (`RecallGenerations`).

    `indexing` makes the embedder's planner (loading a model: made once, at the first
    sink); `close` releases what it made.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        model: EmbeddingModel,
        indexing: Callable[[], RecallIndexing],
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.model = model
        self._make_indexing = indexing
        self._close = close
        self._indexing: RecallIndexing | None = None

    def index(self, generation: str) -> RedisVectorIndex:
        """`generation`'s index, with the settings' model."""
        return RedisVectorIndex(
            self.client, prefix=self.prefix, generation=generation, model=self.model
        )

    def sink(self, generation: str) -> RecallSink:
        """A sink that indexes into `generation` (being built: no reader uses it)."""
        index = self.index(generation)
        state = index.state()
        if state.problem is not None or state.model not in (None, self.model):
            why = state.problem or f"it was built with embedding model {state.model}"
            log.warning(
                "the recall index of generation %s is built again from the start: %s",
                generation,
                why,
            )
            index.drop()
        index.ensure()
        if self._indexing is None:
            self._indexing = self._make_indexing()
        return RecallSink(self._indexing, RedisRecallTarget(index))

    def drop(self, generation: str) -> None:
        """Delete `generation`'s index: definition, documents, metadata, progress."""
        self.index(generation).drop()

    def progress(self, generation: str) -> Mapping[int, int]:
        """How far `generation`'s index has indexed: partition -> last offset."""
        return self.index(generation).state().marks

    def problem(self, generation: str) -> str | None:
        """Why `generation`'s index is lost (None: whole, or never built)."""
        return self.index(generation).state().problem

    def documents(self, generation: str) -> int:
        """How many turns `generation`'s index holds (FT.INFO)."""
        return int(self.index(generation).info()["num_docs"])

    def compare(self, live: str, rebuilt: str) -> RecallComparison:
        """`live`'s index against `rebuilt`'s (from the log), document by document."""
        state = self.index(live).state()
        found: list[Difference] = []
        if state.problem is not None or state.model is None:
            comparison = counted(self.client, prefix=self.prefix, generation=rebuilt)
            why = f"lost: {state.problem}" if state.problem else "not built"
            comparison.differences = [Difference("recall index", live, why)]
            return comparison
        if state.model != self.model:
            found.append(
                Difference(
                    "recall index",
                    live,
                    f"built with embedding model {state.model}, the settings name "
                    f"{self.model}: vectors not compared",
                )
            )
        comparison = compare_documents(
            self.client,
            prefix=self.prefix,
            live=live,
            rebuilt=rebuilt,
            vectors=state.model == self.model,
        )
        comparison.differences[:0] = found
        return comparison

    def close(self) -> None:
        """Release the embedder (a later sink makes a new one)."""
        if self._indexing is not None:
            self._indexing = None
            self._close()
