"""Telling a read-model that was never written from one that Redis lost.

What is a generation's epoch? A token (`chatlog:g1:epoch`) written once, when the
generation is created, beside its pointer. Redis losing data (FLUSHALL, FLUSHDB, a
restart with no persistence, a failover that dropped writes) takes the epoch with it,
while an empty deployment simply has no pointer yet. So:

* the pointer names a generation whose epoch is there: the generation is whole, up to
  its progress marks;
* the pointer names a generation without its epoch, or with an epoch marked lost: Redis
  lost it;
* no pointer: a fresh deployment, unless the projector's consumer group has committed
  offsets (it projected them into a read-model that is gone now): lost;
* a restored older snapshot keeps the epoch but its progress marks are behind the
  group's committed offsets (or behind what the running projector has marked): lost.

Every write into a generation (the apply, the user index, the progress marks: Lua
scripts in `chatlog.projections.redis_store`) checks the epoch atomically and refuses
without it, so nothing can rebuild a partial session into a lost generation. Every read
(`chatlog.projections.redis_reader`) reads the epoch in the same MULTI as the view and
raises `ReadModelLost` without it, so nothing partial is served.

The epoch value also records the key layout the generation was built with
(`chatlog.projections.keys.LAYOUT`): ``v2-<token>``. An epoch with no ``v<n>-`` is of a
generation built before layouts were recorded: layout 1. Readers read it in the same
MULTI as everything else, so knowing the layout costs nothing; a read the layout cannot
answer correctly is refused (`layout_problem`) rather than served partly.

This module holds the decisions, with no I/O.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from chatlog.projections.keys import LAYOUT, LEGACY_LAYOUT

__all__ = [
    "LOST",
    "Lost",
    "StartVerdict",
    "assess_start",
    "is_intact",
    "layout_of",
    "layout_problem",
    "lost_epoch",
    "new_epoch",
    "reader_problem",
]

LOST = "lost:"  # an epoch value starting with this marks the generation lost (and why)
_LAYOUT = re.compile(r"v([0-9]+)-")


def new_epoch(layout: int = LAYOUT) -> str:
    """A fresh epoch token, of a generation built with key `layout`."""
    token = uuid.uuid4().hex
    return token if layout == LEGACY_LAYOUT else f"v{layout}-{token}"


def layout_of(epoch: str) -> int:
    """The key layout of the generation whose epoch value is `epoch`."""
    match = _LAYOUT.match(epoch)
    return int(match.group(1)) if match else LEGACY_LAYOUT


def layout_problem(generation: str, epoch: str) -> str | None:
    """Why a read that depends on the key layout must not be served from `generation`
    (None: it may): it was built with a layout other than the one this code reads."""
    layout = layout_of(epoch)
    if layout == LAYOUT:
        return None
    if layout < LAYOUT:
        return (
            f"generation {generation} of the read-model was built with key layout {layout}, "
            f"in which users of different tenants share a session index; this chatlog reads "
            f"layout {LAYOUT}. Rebuild it with `chatlog replay` (contexts are served "
            f"meanwhile, session lists are not)"
        )
    return (
        f"generation {generation} of the read-model was built with key layout {layout} by a "
        f"newer chatlog; this one knows layout {LAYOUT}. Upgrade it"
    )


def lost_epoch(reason: str) -> str:
    """The epoch value that marks a generation lost, for `reason`."""
    return f"{LOST}{reason}"


def is_intact(epoch: str | None) -> bool:
    """Whether a generation with this epoch value (None: none) may be read and written."""
    return epoch is not None and not epoch.startswith(LOST)


@dataclass(frozen=True, slots=True)
class Lost:
    """The read-model the projector would continue is lost, and why."""

    reason: str
    partition: int | None = None


# "fresh": nothing yet and nothing committed: create the first generation.
# "adopt": a generation from before epochs, whose marks are all there: give it one.
# "intact": continue it. `Lost`: rebuild it, or stop.
StartVerdict = str | Lost


def assess_start(
    *,
    generation: str | None,
    epoch: str | None,
    marks: Mapping[int, int],
    committed: Mapping[int, int],
) -> StartVerdict:
    """What a projector finds when partitions are assigned to it.

    `generation` is what the pointer names (None: no pointer), `epoch` that generation's
    epoch value, `marks` its progress marks (partition -> last offset projected), and
    `committed` the group's committed offsets of the assigned partitions (partition ->
    next offset to read; negative: none).
    """
    done = {p: offset for p, offset in committed.items() if offset >= 0}
    if generation is None:
        if not done:
            return "fresh"
        p = min(done)
        return Lost(
            f"the pointer to the live generation is gone from Redis, but partition {p} was "
            f"projected up to offset {done[p] - 1}",
            p,
        )
    if epoch is not None and not is_intact(epoch):
        return Lost(f"generation {generation} was marked lost ({epoch[len(LOST) :]})")
    for p in sorted(done):
        mark = marks.get(p, -1)
        if mark + 1 < done[p]:
            have = "nothing" if mark < 0 else f"up to offset {mark}"
            return Lost(
                f"partition {p} was projected up to offset {done[p] - 1}, but generation "
                f"{generation} holds {have}",
                p,
            )
    # No epoch, but every committed offset is covered by a mark: a read-model written
    # before epochs existed (a lost one has no marks either).
    return "adopt" if epoch is None else "intact"


def reader_problem(generation: str | None, epoch: str | None) -> str | None:
    """Why a reader must not serve the generation `generation` (None: it may)."""
    if generation is None:
        return (
            "Redis holds no read-model (no pointer to a live generation): no projector has "
            "started on this Redis yet, or Redis lost its data"
        )
    if epoch is None:
        return (
            f"generation {generation} of the read-model is gone from Redis (its epoch is missing)"
        )
    if not is_intact(epoch):
        return f"generation {generation} of the read-model was lost ({epoch[len(LOST) :]})"
    return None
