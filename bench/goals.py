"""The performance goals, each read off this run's rows: met, not met, or not measured.

The goals are ratios and bounds over rows the scenarios already print (the limit rows are
Kafka's own tools and a bare confluent-kafka client on the same broker). This module finds
those rows in a finished `Report` and says, per goal, what the run measured and whether
it is within the goal; where it is not, the table points at the section of the bench's
README that profiles where the time goes. Nothing fails on it: like the regression guard,
it is a report. Pure: it reads the report only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.regression import DRIFT_TITLE
from bench.report import WHOLE_MS, Comparison, Report, Table
from bench.scenarios.reads import COLD

__all__ = ["GOALS", "GOALS_TITLE", "Goal", "Verdict", "goals_table"]

GOALS_TITLE = "Performance goals: each read off this run"
WHY = "[where the time goes](../README.md#where-the-time-goes-in-the-slowest-ratios)"
# The scenarios whose headline rows are also measured with sealing off (goal 6).
TWINNED = ("append", "context read", "publish→visible", "projection", "replay")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the run measured for a goal, in words, and whether it is met (None: the run
    did not measure it, or the limit's precision cannot tell)."""

    measured: str
    met: bool | None
    ran: bool = True


@dataclass(frozen=True, slots=True)
class Goal:
    """One goal: what is measured, the bound in words, and how to read it off a report."""

    what: str
    bound: str
    judge: Callable[[Report], Verdict]
    # Where a miss is explained (a speed goal's: the profiles); "" for goals of form.
    why: str = WHY


def _row(report: Report, scenario: str, metric: str, peer: str = "") -> Comparison | None:
    """The first comparison of `scenario` whose metric is `metric` or starts with it and a
    space or a comma, and whose peer starts with `peer`, with a measured value; None if
    the run has none."""
    for row in report.comparisons:
        if (
            row.scenario == scenario
            and (row.metric == metric or row.metric.startswith((f"{metric} ", f"{metric},")))
            and row.peer.startswith(peer)
            and row.ours.values
        ):
            return row
    return None


_NOT_RUN = Verdict("not measured in this run", None, ran=False)


def _at_least(scenario: str, metric: str, bound: float) -> Callable[[Report], Verdict]:
    def judge(report: Report) -> Verdict:
        row = _row(report, scenario, metric)
        if row is None:
            return _NOT_RUN
        return Verdict(row.ours.cell(), row.ours.median >= bound)

    return judge


def _at_most(scenario: str, metric: str, bound: float) -> Callable[[Report], Verdict]:
    def judge(report: Report) -> Verdict:
        row = _row(report, scenario, metric)
        if row is None:
            return _NOT_RUN
        return Verdict(row.ours.cell(), row.ours.median <= bound)

    return judge


def _ratio_at_most(
    scenario: str, metric: str, peer: str, bound: float
) -> Callable[[Report], Verdict]:
    """chatlog's value ÷ the peer's (both lower-is-better) at most `bound`."""

    def judge(report: Report) -> Verdict:
        row = _row(report, scenario, metric, peer)
        if row is None or row.theirs is None or not row.theirs.values:
            return _NOT_RUN
        ours, theirs = row.ours.median, row.theirs.median
        if theirs <= 0:
            return _NOT_RUN
        shown = f"{row.ours.cell()} ÷ {row.theirs.cell()}"
        if row.theirs.unit == WHOLE_MS:
            # The limit is known to the millisecond only: it lies in [theirs, theirs + 1).
            low, high = ours / (theirs + 1), ours / theirs
            shown += f" = {low:.2f}-{high:.2f}x"
            if high <= bound:
                return Verdict(shown, True)
            return Verdict(shown, False if low > bound else None)
        return Verdict(f"{shown} = {ours / theirs:.2f}x", ours / theirs <= bound)

    return judge


def _reported(scenario: str, metric: str) -> Callable[[Report], Verdict]:
    """A figure the goals ask to be reported, with no bound: met when measured."""

    def judge(report: Report) -> Verdict:
        for row in report.metrics:
            if row.scenario == scenario and row.name.startswith(metric) and row.values:
                return Verdict(row.cell(), True)
        return _NOT_RUN

    return judge


def _twinned(report: Report) -> Verdict:
    ran = {row.scenario for row in report.comparisons} & set(TWINNED)
    if not ran:
        return _NOT_RUN
    twinned = {row.scenario for row in report.sealing_twins if row.theirs and row.theirs.values}
    missing = sorted(ran - twinned)
    shown = f"{len(ran) - len(missing)} of the {len(ran)} scenarios run"
    return Verdict(shown + (f" (not: {', '.join(missing)})" if missing else ""), not missing)


def _guarded(report: Report) -> Verdict:
    compared = any(table.title.startswith(DRIFT_TITLE) for table in report.tables)
    return Verdict("printed below" if compared else "no committed results to compare", compared)


def _read_goals(size: str) -> tuple[Goal, Goal]:
    """The context read goal at `size` messages: as read turn after turn, and by a reader
    that keeps no opened messages (a session's first read in a process)."""
    metric = f"p99, {size}-message session"
    return (
        Goal(
            f"context read p99 ÷ LangChain's, {size}-message session",
            "≤ 0.5x",
            _ratio_at_most("context read", metric, "LangChain", 0.5),
        ),
        Goal(
            f"the same, {size} messages, by a reader that keeps no opened messages",
            "≤ 0.5x",
            _ratio_at_most("context read", f"{metric}, {COLD}", "LangChain", 0.5),
        ),
    )


GOALS: tuple[Goal, ...] = (
    Goal(
        "`ChatLog.append` p50, one at a time ÷ a bare confluent-kafka produce + flush",
        "≤ 1.3x",
        _ratio_at_most("append", "p50 of one call", "bare confluent-kafka", 1.3),
    ),
    Goal(
        "appends, batched, events/s", "≥ 18,000", _at_least("append", "events/s, batched", 18_000)
    ),
    Goal(
        "publish→visible p99 at 2,000 events/s ÷ Kafka EndToEndLatency's p99",
        "≤ 3x",
        _ratio_at_most("publish→visible", "p99 at 2,000 events/s", "Kafka EndToEndLatency", 3.0),
    ),
    Goal(
        "publish→visible p99 at 4,000 events/s",
        "≤ 25 ms",
        _at_most("publish→visible", "p99 at 4,000 events/s", 25.0),
    ),
    Goal(
        "saturation rate: the offered rate where the p99 passes 100 ms",
        "reported",
        _reported("publish→visible", "saturation"),
    ),
    Goal(
        "projection, one process, events/s",
        "≥ 40,000",
        _at_least("projection", "events/s, one projector process", 40_000),
    ),
    Goal("replay, events/s", "≥ 100,000", _at_least("replay", "events/s", 100_000)),
    Goal(
        "replay, peak resident memory of its largest process",
        "≤ 300 MB",
        _at_most("memory", "replay process peak resident memory", 300.0),
    ),
    *(goal for size in ("100", "1,000") for goal in _read_goals(size)),
    Goal("headline rows measured with sealing on and off", "every scenario", _twinned, why=""),
    Goal("ratios compared with the last committed results", "every full run", _guarded, why=""),
)


def _word(goal: Goal, verdict: Verdict) -> str:
    if not verdict.ran:
        return "—"
    if verdict.met is None:
        return "cannot tell"
    if verdict.met:
        return "yes"
    return f"no: {goal.why}" if goal.why else "no"


def goals_table(report: Report) -> Table:
    """The goals, each with what this run measured and whether it is met."""
    rows = []
    for goal in GOALS:
        verdict = goal.judge(report)
        rows.append([goal.what, goal.bound, verdict.measured, _word(goal, verdict)])
    met = sum(goal.judge(report).met is True for goal in GOALS)
    return Table(
        GOALS_TITLE,
        ["goal", "bound", "this run (median (range))", "met?"],
        labels=2,
        rows=rows,
        notes=[
            f"{met} of {len(GOALS)} met. Each value is the median of the row of the table "
            "above that the goal names (range in brackets); a limit measured to the whole "
            "millisecond (EndToEndLatency) gives a ratio as an interval, and one that "
            "straddles the bound is undecided.",
        ],
    )
