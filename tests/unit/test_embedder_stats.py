"""The embedder's counts: every record and turn of a batch lands in one count."""

from __future__ import annotations

from chatlog.processors.embedder_stats import SKIP_REASONS, EmbedderStats
from chatlog.processors.recall_indexing import IndexWork


def test_a_batch_is_counted_by_what_became_of_each_record():
    stats = EmbedderStats()
    work = IndexWork(events=7, undecodable=1, undecryptable=2, erased=3, not_embedded=4)
    work.upserts = [object()] * 3  # type: ignore[list-item]  # only counted
    stats.add(work, written=2, refused=1, deleted=1, erased=5, foreign=3, seconds=0.02)
    assert (stats.batches, stats.records, stats.embedded, stats.written) == (1, 13, 3, 2)
    assert (stats.deleted, stats.erased) == (1, 5)
    assert dict(stats.skipped) == {
        "undecodable": 1,
        "undecryptable": 2,
        "owner_erased": 3,
        "not_a_turn": 4,
        "user_erased": 1,
        "other_owner": 3,
    }
    assert set(stats.skipped) == set(SKIP_REASONS)
    assert stats.batch_seconds.count == 1
    assert "written=2" in repr(stats)


def test_alive_while_the_loop_turns_within_its_bound():
    stats = EmbedderStats()
    stats.beat()
    assert stats.alive(stats.beat_at + 1, bound_s=5)
    assert not stats.alive(stats.beat_at + 6, bound_s=5)
