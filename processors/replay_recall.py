"""The recall index's side of a replay: every batch the replay reads, also indexed.

Why is the recall index rebuilt by the replay? It is one per generation of the
read-model (`chatlog.projections.redis_vectors`), and a replay builds a new generation
from offset 0 and flips readers to it in one step. For recall to work the moment after
the flip, the new generation's index must hold what the new read-model holds: so each
batch the replay folds into the read-model is also planned by the embedder's own logic
(`RecallIndexing`) and written into the new generation's index, with its progress marks,
through the rebuild, the catch-up and the hand-over alike.

Its progress marks are its own (``...:recall:progress``): a replay interrupted between
the read-model's write and the index's resumes from the lower of the two, and each side
skips what it already has (the read-model by its views' positions, the index by its
marks here, so no turn is embedded twice).

Pure: the embedding and the index are handed in (`RecallTarget`; the Redis one is
`chatlog.processors.redis_recall`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from chatlog.processors.projection import Record
from chatlog.processors.recall_indexing import IndexWork, RecallIndexing

__all__ = ["RecallSink", "RecallTarget"]


class RecallTarget(Protocol):
    """One generation's recall index, as a replay writes it."""

    def progress(self) -> Mapping[int, int]:
        """Partition -> last offset indexed."""
        ...

    def write(self, work: IndexWork) -> int:
        """Erase `work.erased_sessions`, then write its upserts, deletions and marks in
        one atomic step; the number of turns written."""
        ...


class RecallSink:
    """Indexes the batches a replay reads into one generation's recall index."""

    def __init__(self, indexing: RecallIndexing, target: RecallTarget) -> None:
        self.indexing = indexing
        self.target = target
        self.marks: dict[int, int] = {}  # partition -> last offset indexed
        self.indexed = 0  # turns written by this sink

    def start(self) -> dict[int, int]:
        """Read the index's progress marks (a resumed or parallel replay moved them)."""
        self.marks = dict(self.target.progress())
        return dict(self.marks)

    def handle(self, records: Sequence[Record]) -> int:
        """Index the records not indexed yet (in log order per partition); the number of
        turns written. Raises what embedding raises: nothing of the batch is then marked,
        and a replay run again resumes from the marks."""
        fresh = [r for r in records if r.offset > self.marks.get(r.partition, -1)]
        if not fresh:
            return 0
        work = self.indexing.plan(fresh)
        written = self.target.write(work)
        for partition, offset in work.marks.items():
            self.marks[partition] = max(self.marks.get(partition, -1), offset)
        self.indexed += written
        return written
