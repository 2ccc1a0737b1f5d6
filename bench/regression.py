"""The regression guard: each ratio of this run beside the same row of the last committed run.

A full `make bench` rewrites `results/latest.md`; what moved since the version of it in
the last commit is easy to miss in a table of fifty rows. This module reads the rows of
both (every table laid out as the first one: scenario, metric, chatlog, peer, peer's
value, ratio), matches them by scenario, metric and peer, and says which ratio moved by
more than `THRESHOLD` (20%) either way, which rows are new, and which went missing from
a scenario that ran. It is a report, printed under the tables; nothing fails on it: one
run on a shared machine is noise enough to move a p99 by 20%.

The ratio is compared, not chatlog's own value: both sides were measured in the same
run, so a busy machine moves the ratio less than either value. A ratio is read from its
words (`bench.report.Comparison.ratio`): "3.2x slower" is chatlog at 1/3.2 of the peer,
"1.4x faster" at 1.4; an interval ("3.3-3.9x slower", a peer in whole milliseconds) at
its geometric middle, a bound ("> 6.3x slower") at the bound; "about the same" at 1.
Pure: no I/O here (`__main__` reads the committed file with git).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from bench.report import COMPARISON_COLUMNS, Table

__all__ = [
    "DRIFT_TITLE",
    "THRESHOLD",
    "Drift",
    "Moved",
    "Row",
    "advantage",
    "compare",
    "drift_table",
    "rows_of",
]

THRESHOLD = 0.2
DRIFT_TITLE = "Against the last committed results"
# The words `Comparison.ratio` uses when chatlog is ahead; their opposites when behind.
# "fewer" is ahead for a rate of mistakes; for a share where more is better (a recall),
# the caller names the row in `more_is_better`.
_AHEAD = {"faster": True, "smaller": True, "fewer": True}
_BEHIND = {"slower": False, "larger": False, "more": False}
_WORDS = _AHEAD | _BEHIND
_RATIO = re.compile(
    r"^(?P<bound>> )?(?P<low>\d+(?:\.\d+)?)(?:-(?P<high>\d+(?:\.\d+)?))?x (?P<word>[a-z]+)$"
)
_EVEN = ("about the same", "about equal")
_NO_PEER = "—"
_ROUNDING = 1e-9  # 5.4 / 4.5 is 1.2000000000000002: exactly 20% is not more than 20%


@dataclass(frozen=True, slots=True)
class Row:
    """One comparison row as printed: what it measures, beside whom, and the ratio."""

    scenario: str
    metric: str
    peer: str
    ratio: str

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes a row the same row in another run."""
        return (self.scenario, self.metric, self.peer)


@dataclass(frozen=True, slots=True)
class Moved:
    """A row whose ratio moved by more than the threshold."""

    then: Row
    now: Row
    change: float  # chatlog's advantage now ÷ then: above 1, chatlog gained on the peer


@dataclass
class Drift:
    """What changed between two runs' comparison rows."""

    moved: list[Moved] = field(default_factory=list)
    added: list[Row] = field(default_factory=list)
    removed: list[Row] = field(default_factory=list)
    compared: int = 0  # rows with a ratio on both sides


def rows_of(markdown: str) -> list[Row]:
    """The rows of every table of `markdown` whose header is the comparison table's."""
    rows: list[Row] = []
    inside = False
    for line in markdown.splitlines():
        cells = _cells(line)
        if cells is None:
            inside = False
        elif cells == list(COMPARISON_COLUMNS):
            inside = True
        elif inside and len(cells) == len(COMPARISON_COLUMNS) and not _is_rule(cells):
            scenario, metric, _ours, peer, _theirs, ratio = cells
            rows.append(Row(scenario, metric, peer, ratio))
    return rows


def advantage(ratio: str, *, more_is_better: bool = False) -> float | None:
    """How many times better chatlog is than the peer, from the ratio's words (below 1:
    the peer is better); None where the row has no ratio ("n/a", "—", within the noise)."""
    text = ratio.strip()
    if text.startswith(_EVEN):
        return 1.0
    found = _RATIO.match(text)
    if found is None or found["word"] not in _WORDS:
        return None
    low = float(found["low"])
    size = math.sqrt(low * float(found["high"])) if found["high"] else low
    if size <= 0:
        return None
    ahead = _WORDS[found["word"]]
    if found["word"] in ("more", "fewer") and more_is_better:
        ahead = not ahead
    return size if ahead else 1 / size


def compare(
    then: Sequence[Row],
    now: Sequence[Row],
    *,
    more_is_better: Collection[tuple[str, str, str]] = (),
    threshold: float = THRESHOLD,
) -> Drift:
    """What moved from `then` to `now` by more than `threshold` (a share: 0.2 is 20%).

    Rows are matched by `Row.key` (the n-th of repeated keys with the n-th). A row of
    `then` missing from `now` counts as removed only if its scenario ran (has a row in
    `now`): a run of some scenarios says nothing of the others. Rows without a peer (a
    value alone: "—") have no ratio to guard and are left out.
    """
    before = _indexed([row for row in then if row.ratio != _NO_PEER])
    after = _indexed([row for row in now if row.ratio != _NO_PEER])
    ran = {row.scenario for row in now}
    drift = Drift()
    for key, row in after.items():
        old = before.get(key)
        if old is None:
            drift.added.append(row)
            continue
        inverted = row.key in more_is_better
        was = advantage(old.ratio, more_is_better=inverted)
        is_ = advantage(row.ratio, more_is_better=inverted)
        if was is None or is_ is None:
            continue
        drift.compared += 1
        change = is_ / was
        if abs(change - 1) > threshold + _ROUNDING:
            drift.moved.append(Moved(old, row, change))
    drift.removed = [row for key, row in before.items() if key not in after and row.scenario in ran]
    drift.moved.sort(key=lambda m: m.change)  # what lost the most first
    return drift


def drift_table(drift: Drift, *, baseline: str, threshold: float = THRESHOLD) -> Table:
    """The guard's section of the results: the rows that moved, then what was added and
    removed, in notes."""
    table = Table(
        f"{DRIFT_TITLE}: ratios that moved by more than {threshold:.0%}",
        ["scenario", "metric", "peer or limit", "then", "now", "chatlog's advantage"],
        labels=3,
    )
    for moved in drift.moved:
        word = "gained" if moved.change > 1 else "lost"
        table.rows.append(
            [
                moved.now.scenario,
                moved.now.metric,
                moved.now.peer,
                moved.then.ratio,
                moved.now.ratio,
                f"{word} {abs(moved.change - 1):.0%} ({moved.change:.2f}x)",
            ]
        )
    table.notes.append(
        f"Beside {baseline}: {drift.compared} ratios compared, {len(drift.moved)} moved by "
        f"more than {threshold:.0%} (chatlog's advantage over the peer now ÷ then; a "
        f"report, never a failure: one run on a shared machine moves a p99 that much)"
    )
    if drift.added:
        table.notes.append("New rows: " + _listed(drift.added))
    if drift.removed:
        table.notes.append("Rows gone from scenarios that ran: " + _listed(drift.removed))
    return table


def _listed(rows: Iterable[Row]) -> str:
    return "; ".join(f"{r.scenario}, {r.metric} (beside {r.peer})" for r in rows)


def _indexed(rows: Sequence[Row]) -> dict[tuple[str, str, str, int], Row]:
    seen: dict[tuple[str, str, str], int] = {}
    indexed = {}
    for row in rows:
        n = seen[row.key] = seen.get(row.key, -1) + 1
        indexed[(*row.key, n)] = row
    return indexed


def _cells(line: str) -> list[str] | None:
    """A table line's cells, or None for a line outside any table."""
    text = line.strip()
    if not (text.startswith("|") and text.endswith("|")) or len(text) < 2:
        return None
    return [cell.strip() for cell in text[1:-1].split("|")]


def _is_rule(cells: Sequence[str]) -> bool:
    return all(set(cell) <= set("-:") and cell for cell in cells)
