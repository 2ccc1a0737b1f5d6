"""Results: one value per repetition, summarized as median and range, printed as Markdown.

The table reports the median of the repetitions and their range, never a single run and
never a pass/fail: on a small shared machine one run says little, and the spread says how
much to trust the median.

The first table puts chatlog beside what a user would use instead, or beside the limit
of the machine (Kafka's own tools): a `Comparison` row holds chatlog's measurement, the
peer's, measured in the same run, and the ratio between them, in words ("3.2x slower").
The second holds the details (breakdowns, start-up, targets of earlier issues).

What is counted rather than timed (the LLM calls and tokens a summary strategy costs) is
the same on every run, so it has no median: it gets a `Table` of its own, with the
strategies side by side.

While it runs, the benchmark says what it is doing with `say`, on stderr, so that stdout
carries only the table.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "CLEAR_TWIN",
    "COMPARISON_COLUMNS",
    "README_END",
    "README_START",
    "SEALING_TWINS",
    "ChartPoint",
    "Comparison",
    "Figure",
    "Metric",
    "Report",
    "Table",
    "comparison_lines",
    "say",
]

# The part of results/latest.md that `python -m bench --update-readme` copies into the
# README's performance section (between the README's own bench:start/bench:end markers).
README_START = "<!-- readme:start -->"
README_END = "<!-- readme:end -->"
# A unit for values a tool reports in whole milliseconds, truncated: 6 means 6 to 7 ms.
WHOLE_MS = "whole ms"
_SIZE_UNITS = {"B", "KB", "MB"}
# The unit of a load average (`os.getloadavg`, as `uptime` prints it).
LOAD = "load"
# The columns of the first table (and of every table laid out like it: the regression
# guard, `bench.regression`, reads the rows of each).
COMPARISON_COLUMNS = (
    "scenario",
    "metric",
    "chatlog: median (range)",
    "peer or limit",
    "peer: median (range)",
    "ratio",
)
# The sealing on/off table: each headline row's value sealed (as deployed) beside clear.
SEALING_TWINS = "Sealing on and off: the headline rows measured both ways"
CLEAR_TWIN = "the same, sealing off (no keyring, so no redaction)"
SEALING_TWINS_NOTE = (
    "`python -m bench --sealing both` (what `make bench` runs): each row's first value is "
    "the headline's, every personal field sealed and redacted as deployed; beside it the "
    "same measurement of events published without a keyring (clear; redaction needs the "
    "keyring, so it is off too, as in any deployment without sealing), on the same code, "
    "in the same repetitions unless its note says fewer. The ratio is what sealing costs "
    "there."
)


def say(message: str) -> None:
    """Progress on stderr, so stdout carries only the table."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass
class Metric:
    """One quantity measured once per repetition."""

    scenario: str
    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: str = ""

    def add(self, value: float) -> None:
        """Record one repetition's value."""
        self.values.append(value)

    @property
    def median(self) -> float:
        """The median of the repetitions (NaN for none)."""
        return statistics.median(self.values) if self.values else math.nan

    def cells(self) -> tuple[str, str]:
        """The median and the range (min - max), formatted for the unit."""
        if not self.values:
            return "n/a", "n/a"
        spread = f"{self.format(min(self.values))} - {self.format(max(self.values))}"
        return self.format(self.median), spread

    def cell(self) -> str:
        """The median with the range in brackets (the range only with several values)."""
        if not self.values:
            return "n/a"
        if len(self.values) == 1 or min(self.values) == max(self.values):
            return self.format(self.median)
        return (
            f"{self.format(self.median)} ({self.format(min(self.values))} - "
            f"{self.format(max(self.values))})"
        )

    def format(self, value: float) -> str:
        """`value` written for this metric's unit."""
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            # A bound that was never reached (a sweep that stayed under it): measured,
            # not missing.
            return "not reached"
        if self.unit == "events/s":
            return f"{value:,.0f}"
        if self.unit == "ms":
            if value < 1:
                return f"{value:.3f} ms" if value < 0.1 else f"{value:.2f} ms"
            return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"
        if self.unit == WHOLE_MS:
            return "< 1 ms" if value < 1 else f"{value:g}-{value + 1:g} ms"
        if self.unit == "µs":
            return f"{value:.0f} µs"
        if self.unit == "s":
            return f"{value:.2f} s"
        if self.unit == "sessions/s":
            return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
        if self.unit == "MB":
            return f"{value:,.0f} MB"
        if self.unit == "KB":
            return f"{value:,.1f} KB" if value < 100 else f"{value:,.0f} KB"
        if self.unit == "share":
            return f"{value:.0%}" if value >= 0.1 else f"{value:.1%}"
        if self.unit == LOAD:
            return f"{value:.2f}"
        return f"{value:g}"


@dataclass
class Figure:
    """A measured figure with the machine's load average at each repetition beside it.

    For tables whose figures come from a shared machine at different moments (the
    capacity scenario's): each value is read beside what else was running then.
    """

    name: str
    unit: str
    metric: Metric = field(init=False)
    loads: Metric = field(init=False)

    def __post_init__(self) -> None:
        self.metric = Metric("", self.name, self.unit)
        self.loads = Metric("", "load average", LOAD)

    def add(self, value: float, load: float) -> None:
        """One repetition's value, and the load average (1 min) when it was taken."""
        self.metric.add(value)
        self.loads.add(load)

    @property
    def values(self) -> list[float]:
        """The repetitions' values."""
        return self.metric.values

    @property
    def median(self) -> float:
        """The median of the repetitions (NaN for none)."""
        return self.metric.median

    def row(self) -> list[str]:
        """The figure, its median (range), the load average's median (range)."""
        return [self.name, self.metric.cell(), self.loads.cell()]


@dataclass
class Comparison:
    """One row of the first table: chatlog's measurement beside a peer's, and the ratio.

    `better` says which way is good for this quantity (a rate: higher; a latency or a
    size: lower). Without a peer (`theirs` None), the row shows chatlog's value alone.
    """

    scenario: str
    metric: str
    ours: Metric
    peer: str = "—"
    theirs: Metric | None = None
    better: Literal["higher", "lower"] = "higher"
    # The peer is chatlog itself another way (sealing off): no competitor, never "trails".
    itself: bool = False

    def advantage(self) -> float:
        """How many times better chatlog is (below 1: the peer is better); NaN if unknown.

        A peer in whole milliseconds counts as the middle of its millisecond.
        """
        if self.theirs is None or not self.ours.values or not self.theirs.values:
            return math.nan
        ours, theirs = self.ours.median, self.theirs.median
        if math.isinf(ours) or math.isinf(theirs):  # a bound one side never reached
            return math.nan
        if self.theirs.unit == WHOLE_MS:
            theirs += 0.5
        if ours <= 0 or theirs <= 0:
            return math.nan
        return ours / theirs if self.better == "higher" else theirs / ours

    def words(self) -> tuple[str, str]:
        """What the ratio says when chatlog is ahead, and when it is behind."""
        if self.ours.unit == "share":  # a rate of mistakes: fewer is better; a recall: more
            return ("fewer", "more") if self.better == "lower" else ("more", "fewer")
        return ("smaller", "larger") if self.ours.unit in _SIZE_UNITS else ("faster", "slower")

    def ratio(self) -> str:
        """The ratio in words: `3.2x slower`, `1.4x faster`, `7.1x smaller`."""
        if self.theirs is None:
            return "—"
        good, bad = self.words()
        if self.theirs.unit == WHOLE_MS and self.theirs.values and self.ours.values:
            return _interval_ratio(self.ours.median, self.theirs.median, good, bad)
        if (
            self.better == "lower"
            and self.ours.values
            and self.ours.median <= 0 < (self.theirs.median if self.theirs.values else 0)
        ):
            # An added cost measured as a difference of two noisy means can come out at
            # or below zero: no ratio to give, but not a missing measurement either.
            return "none measurable (within the noise)"
        factor = self.advantage()
        if math.isnan(factor) and self.ours.values and self.theirs.values:
            infinite = [math.isinf(m.median) for m in (self.ours, self.theirs)]
            if infinite == [True, True]:
                return "neither reached it"
            if any(infinite):
                # A bound one side never reached within a sweep: no factor, but a side.
                ahead = infinite[0] == (self.better == "higher")
                return f"{good if ahead else bad} (one side not reached)"
        if math.isnan(factor):
            return "n/a"
        if 1 / 1.05 <= factor <= 1.05:
            return "about the same"
        return f"{factor:.1f}x {good}" if factor >= 1 else f"{1 / factor:.1f}x {bad}"


def comparison_lines(rows: list[Comparison]) -> list[str]:
    """`rows` as the lines of a table laid out as the first one (header first)."""
    lines = ["| " + " | ".join(COMPARISON_COLUMNS) + " |", "|---|---|--:|---|--:|---|"]
    for row in rows:
        theirs = row.theirs.cell() if row.theirs is not None else "—"
        lines.append(
            f"| {row.scenario} | {row.metric} | {row.ours.cell()} | {row.peer} "
            f"| {theirs} | {row.ratio()} |"
        )
    return lines


def _interval_ratio(ours: float, whole: float, good: str, bad: str) -> str:
    """The ratio of a latency to one known only as [whole, whole + 1) ms."""
    low = ours / (whole + 1)  # chatlog ÷ the peer's largest possible value
    high = ours / whole if whole > 0 else math.inf
    if low >= 1:
        return f"> {low:.1f}x {bad}" if math.isinf(high) else f"{low:.1f}-{high:.1f}x {bad}"
    if high <= 1:
        return f"{1 / high:.1f}-{1 / low:.1f}x {good}"
    return "about equal (within the tool's 1 ms resolution)"


@dataclass(frozen=True, slots=True)
class ChartPoint:
    """One bar of the latency chart: in `panel`, at `group` on the x axis, for `series`."""

    panel: str
    group: str
    series: str
    metric: Metric


@dataclass
class Table:
    """A table of its own, under the main one: its title, columns, rows of cells, notes.

    The first `labels` columns say what a row is (left-aligned); the rest hold numbers
    (right-aligned).
    """

    title: str
    columns: list[str]
    labels: int = 1
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self, *, heading: str = "##") -> list[str]:
        """The table's lines, from its title (a `heading`) to its notes."""
        aligns = ["---"] * self.labels + ["--:"] * (len(self.columns) - self.labels)
        lines = ["", f"{heading} {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join(aligns) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return lines


@dataclass
class Report:
    """The tables, their header lines and the notes under them.

    `value_sizes` collects the encoded sizes of a sample of what the scenarios published,
    for the header; `points` are the latency chart's bars; `tables` are printed last.
    """

    title: str
    order: tuple[str, ...] = ()  # scenarios in the order of the first table
    header: list[str] = field(default_factory=list)
    summary: str = ""
    metrics: list[Metric] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    points: list[ChartPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    value_sizes: list[int] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    # Headline rows measured again with sealing off (`twin`), in a table of their own.
    sealing_twins: list[Comparison] = field(default_factory=list)
    # The performance goals read off the rows (`bench.goals`), under the first table.
    goals: Table | None = None

    def metric(self, scenario: str, name: str, unit: str, target: str = "") -> Metric:
        """A new row of the details table, appended in order."""
        row = Metric(scenario, name, unit, target=target)
        self.metrics.append(row)
        return row

    def measure(self, scenario: str, name: str, unit: str) -> Metric:
        """A measurement that appears only where it is compared (not in the details)."""
        return Metric(scenario, name, unit)

    def compare(
        self,
        scenario: str,
        metric: str,
        ours: Metric,
        peer: str = "—",
        theirs: Metric | None = None,
        *,
        better: Literal["higher", "lower"] = "higher",
        itself: bool = False,
    ) -> Comparison:
        """A new row of the first table, appended in order.

        `itself`: the peer is chatlog another way (its cost of a feature, not a rival).
        """
        row = Comparison(scenario, metric, ours, peer, theirs, better, itself)
        self.comparisons.append(row)
        return row

    def twin(
        self,
        scenario: str,
        metric: str,
        sealed: Metric,
        clear: Metric,
        *,
        better: Literal["higher", "lower"] = "higher",
    ) -> Comparison:
        """A headline row's value with sealing on (the default, as the headline measured
        it) beside the same with sealing off (`bench.plan.Plan.sealing`): a row of the
        sealing on/off table, its ratio what sealing costs there."""
        row = Comparison(scenario, metric, sealed, CLEAR_TWIN, clear, better, itself=True)
        self.sealing_twins.append(row)
        return row

    def chart(self, panel: str, group: str, series: str, metric: Metric) -> None:
        """Put `metric`'s median in the latency chart."""
        self.points.append(ChartPoint(panel, group, series, metric))

    def trailing(self) -> Comparison | None:
        """The row where chatlog trails a peer the most (None if it trails nowhere).

        Rows that put chatlog beside itself (`itself`) are left out: they price a feature.
        """
        rows = [
            row for row in self.comparisons if not row.itself and not math.isnan(row.advantage())
        ]
        worst = min(rows, key=Comparison.advantage, default=None)
        return worst if worst is not None and worst.advantage() < 1 else None

    def _ordered(self) -> list[Comparison]:
        """The comparisons by `order` of their scenario, in their order within it."""

        def rank(row: Comparison) -> int:
            return self.order.index(row.scenario) if row.scenario in self.order else len(self.order)

        return sorted(self.comparisons, key=rank)

    def markdown(self, *, chart: str | None = None) -> str:
        """The whole report as Markdown; `chart` is the chart's path relative to it."""
        lines = [f"# {self.title}", ""]
        lines += [f"- {item}" for item in self.header]
        if self.comparisons:
            lines += ["", README_START, ""]
            if self.summary:
                lines += [self.summary, ""]
            lines += comparison_lines(self._ordered())
            worst = self.trailing()
            if worst is not None:
                lines += [
                    "",
                    f"Where chatlog trails most: {worst.scenario}, {worst.metric}, beside "
                    f"{worst.peer}: {worst.ratio()}.",
                ]
            if self.goals is not None:
                lines += self.goals.markdown(heading="###")
            if chart:
                lines += ["", f"![latency percentiles, chatlog beside its peers]({chart})"]
            lines += ["", README_END]
        if self.sealing_twins:
            lines += ["", f"## {SEALING_TWINS}", "", SEALING_TWINS_NOTE, ""]
            lines += comparison_lines(self.sealing_twins)
        if self.metrics:
            lines += [
                "",
                "## Details",
                "",
                "| scenario | metric | median | min - max | target or bound |",
                "|---|---|--:|--:|---|",
            ]
        for metric in self.metrics:
            median, spread = metric.cells()
            lines.append(
                f"| {metric.scenario} | {metric.name} | {median} | {spread} "
                f"| {metric.target or '—'} |"
            )
        if self.notes:
            lines += ["", "Notes:", ""]
            lines += [f"- {note}" for note in self.notes]
        for table in self.tables:
            lines += table.markdown()
        return "\n".join(lines) + "\n"
