"""The recall index's side of a replay: each batch indexed once, resumed from the marks."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from chatlog.processors.recall_indexing import IndexWork, RecallIndexing
from chatlog.processors.replay_recall import RecallSink
from chatlog.schemas.errors import EmbedderUnavailable
from tests.unit.test_recall_indexing import Recorder, records, say


class MemoryTarget:
    """A recall index in memory: the work it was given, and its marks."""

    def __init__(self, marks: Mapping[int, int] | None = None) -> None:
        self.marks = dict(marks or {})
        self.written: list[IndexWork] = []

    def progress(self) -> Mapping[int, int]:
        return dict(self.marks)

    def write(self, work: IndexWork) -> int:
        self.written.append(work)
        for partition, offset in work.marks.items():
            self.marks[partition] = max(self.marks.get(partition, -1), offset)
        return len(work.upserts)


def test_records_at_or_below_the_marks_are_not_embedded_again():
    embedder = Recorder()
    target = MemoryTarget({0: 1})
    sink = RecallSink(RecallIndexing(embedder), target)
    assert sink.start() == {0: 1}
    batch = records(
        say("a", "user", "one"), say("a", "assistant", "two"), say("a", "user", "three")
    ) + records(say("b", "user", "four"), partition=1)
    assert sink.handle(batch) == 2
    assert embedder.calls == [["three", "four"]]
    assert target.marks == {0: 2, 1: 0}
    # The same batch again (a replay read it twice): nothing is embedded or written.
    assert sink.handle(batch) == 0
    assert len(embedder.calls) == 1
    assert len(target.written) == 1
    assert sink.indexed == 2


def test_a_batch_whose_embedding_fails_moves_no_mark():
    target = MemoryTarget()
    sink = RecallSink(RecallIndexing(Recorder(down=True)), target)
    sink.start()
    with pytest.raises(EmbedderUnavailable):
        sink.handle(records(say("a", "user", "one")))
    assert target.marks == {}
    assert sink.marks == {}
