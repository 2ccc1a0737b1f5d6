"""Results: one value per repetition, summarized as median and range, printed as Markdown.

The table reports the median of the repetitions and their range, never a single run and
never a pass/fail: on a small shared machine one run says little, and the spread says how
much to trust the median. Targets are printed beside the numbers for the reader to judge.

What is counted rather than timed (the LLM calls and tokens a summary strategy costs) is
the same on every run, so it has no median: it gets a `Table` of its own, with the
strategies side by side.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Metric", "Report", "Table", "percentile"]


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Metric:
    """One row: a quantity measured once per repetition."""

    scenario: str
    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: str = ""

    def add(self, value: float) -> None:
        """Record one repetition's value."""
        self.values.append(value)

    def cells(self) -> tuple[str, str]:
        """The median and the range (min - max), formatted for the unit."""
        if not self.values:
            return "n/a", "n/a"
        median = statistics.median(self.values)
        spread = f"{self._format(min(self.values))} - {self._format(max(self.values))}"
        return self._format(median), spread

    def _format(self, value: float) -> str:
        if math.isnan(value):
            return "n/a"
        if self.unit == "events/s":
            return f"{value:,.0f}"
        if self.unit == "ms":
            return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"
        if self.unit == "µs":
            return f"{value:.0f} µs"
        if self.unit == "s":
            return f"{value:.2f} s"
        if self.unit == "sessions/s":
            return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
        if self.unit == "MB":
            return f"{value:,.0f} MB"
        if self.unit == "share":
            return f"{value:.0%}" if value >= 0.1 else f"{value:.1%}"
        return f"{value:g}"


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

    def markdown(self) -> list[str]:
        """The table's lines, from its title to its notes."""
        aligns = ["---"] * self.labels + ["--:"] * (len(self.columns) - self.labels)
        lines = ["", f"## {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join(aligns) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return lines


@dataclass
class Report:
    """The table, its header lines and the notes under it.

    `value_sizes` collects the encoded sizes of a sample of what the scenarios published,
    for the header; `tables` are printed after the notes.
    """

    title: str
    header: list[str] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    value_sizes: list[int] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)

    def metric(self, scenario: str, name: str, unit: str, target: str = "") -> Metric:
        """A new row, appended in order."""
        row = Metric(scenario, name, unit, target=target)
        self.metrics.append(row)
        return row

    def markdown(self) -> str:
        """The whole report as Markdown."""
        lines = [f"# {self.title}", ""]
        lines += [f"- {item}" for item in self.header]
        if self.metrics:
            lines += [
                "",
                "| scenario | metric | median | min - max | target or bound |",
                "|---|---|--:|--:|---|",
            ]
        for row in self.metrics:
            median, spread = row.cells()
            lines.append(
                f"| {row.scenario} | {row.name} | {median} | {spread} | {row.target or '—'} |"
            )
        if self.notes:
            lines += ["", "Notes:", ""]
            lines += [f"- {note}" for note in self.notes]
        for table in self.tables:
            lines += table.markdown()
        return "\n".join(lines) + "\n"
