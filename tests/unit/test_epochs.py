"""The decisions that tell a read-model never written from one Redis lost (no I/O)."""

from __future__ import annotations

import pytest

from chatlog.projections.epochs import (
    Lost,
    assess_start,
    is_intact,
    layout_of,
    layout_problem,
    lost_epoch,
    new_epoch,
    reader_problem,
)
from chatlog.projections.keys import LAYOUT, LEGACY_LAYOUT

EPOCH = new_epoch()


def test_a_fresh_deployment_with_nothing_committed_is_created():
    assert assess_start(generation=None, epoch=None, marks={}, committed={0: -1001, 1: -1001}) == (
        "fresh"
    )


def test_no_pointer_while_the_group_has_committed_offsets_is_lost():
    # FLUSHALL: the pointer, the epoch and the marks are gone, the commits are not.
    verdict = assess_start(generation=None, epoch=None, marks={}, committed={0: -1001, 1: 42})
    assert isinstance(verdict, Lost)
    assert verdict.partition == 1
    assert "pointer" in verdict.reason
    assert "up to offset 41" in verdict.reason


def test_an_intact_generation_continues():
    verdict = assess_start(generation="g3", epoch=EPOCH, marks={0: 9, 1: 41}, committed={0: 10})
    assert verdict == "intact"
    # A mark ahead of the commit (committed every second, after Redis): intact too.
    assert assess_start(generation="g3", epoch=EPOCH, marks={0: 50}, committed={0: 10}) == (
        "intact"
    )


def test_an_older_snapshot_keeps_its_epoch_but_its_marks_are_behind():
    verdict = assess_start(generation="g1", epoch=EPOCH, marks={0: 9, 1: 3}, committed={1: 42})
    assert isinstance(verdict, Lost)
    assert verdict.partition == 1
    assert "holds up to offset 3" in verdict.reason


def test_flushdb_that_kept_the_pointer_has_no_marks_behind_commits():
    verdict = assess_start(generation="g1", epoch=None, marks={}, committed={0: 7})
    assert isinstance(verdict, Lost)
    assert "holds nothing" in verdict.reason


def test_a_generation_marked_lost_stays_lost_until_rebuilt():
    marked = lost_epoch("partition 0 went back")
    verdict = assess_start(generation="g1", epoch=marked, marks={0: 99}, committed={0: 10})
    assert isinstance(verdict, Lost)
    assert "partition 0 went back" in verdict.reason


def test_a_generation_from_before_epochs_with_every_mark_is_adopted():
    assert assess_start(generation="g1", epoch=None, marks={0: 9}, committed={0: 10}) == "adopt"
    assert assess_start(generation="g1", epoch=None, marks={}, committed={0: -1001}) == "adopt"


@pytest.mark.parametrize(
    ("epoch", "intact"),
    # A random value gets an id: every xdist worker must collect the same test names.
    [pytest.param(EPOCH, True, id="epoch"), (None, False), (lost_epoch("x"), False)],
)
def test_only_a_present_unmarked_epoch_is_intact(epoch, intact):
    assert is_intact(epoch) is intact


def test_readers_are_told_what_is_missing():
    assert reader_problem("g2", EPOCH) is None
    assert "no pointer" in (reader_problem(None, None) or "")
    assert "no projector has started" in (reader_problem(None, None) or "")
    assert "epoch is missing" in (reader_problem("g2", None) or "")
    assert "was lost (why)" in (reader_problem("g2", lost_epoch("why")) or "")


def test_epochs_are_unique():
    assert len({new_epoch() for _ in range(100)}) == 100


def test_an_epoch_records_the_key_layout_and_one_from_before_layouts_is_the_first():
    assert LAYOUT == 2
    assert layout_of(new_epoch()) == LAYOUT
    assert new_epoch().startswith("v2-")
    assert layout_of(new_epoch(LEGACY_LAYOUT)) == LEGACY_LAYOUT
    assert layout_of("0123456789abcdef0123456789abcdef") == LEGACY_LAYOUT  # before layouts
    assert layout_of("v3-abc") == 3
    assert is_intact(new_epoch())
    assert is_intact(new_epoch(LEGACY_LAYOUT))


def test_a_read_that_depends_on_the_layout_is_refused_naming_the_fix():
    assert layout_problem("g2", new_epoch()) is None
    older = layout_problem("g1", new_epoch(LEGACY_LAYOUT)) or ""
    assert "generation g1" in older
    assert "key layout 1" in older
    assert "chatlog replay" in older
    newer = layout_problem("g3", "v3-abc") or ""
    assert "newer chatlog" in newer
    assert "Upgrade" in newer
