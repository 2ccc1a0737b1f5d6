"""The performance goals read off a report: met, not met, not measured, undecided."""

from __future__ import annotations

from bench.goals import GOALS, GOALS_TITLE, goals_table
from bench.regression import DRIFT_TITLE
from bench.report import WHOLE_MS, Metric, Report, Table

E2E = "Kafka EndToEndLatency (limit; one record at a time)"
BARE = "bare confluent-kafka produce + flush, one record at a time (limit)"


def verdicts(report: Report) -> dict[str, str]:
    table = goals_table(report)
    return {row[0]: row[3] for row in table.rows}


def measured(report: Report) -> dict[str, str]:
    return {row[0]: row[2] for row in goals_table(report).rows}


def a_report() -> Report:
    report = Report("chatlog benchmark")
    report.compare(
        "append",
        "p50 of one call, one at a time (ChatLog.append waits for the position)",
        Metric("append", "ours", "ms", [0.22, 0.21, 0.23]),
        BARE,
        Metric("append", "bare", "ms", [0.18, 0.19, 0.18]),
        better="lower",
    )
    report.compare(
        "append",
        "events/s, batched (send per message, positions awaited at the end)",
        Metric("append", "batched", "events/s", [8_000.0, 9_000.0]),
        "LangChain",
        Metric("append", "lc", "events/s", [5_000.0]),
    )
    report.compare(
        "publish→visible",
        "p99 at 2,000 events/s",
        Metric("publish→visible", "p99", "ms", [14.0]),
        E2E,
        Metric("publish→visible", "e2e", WHOLE_MS, [5.0]),
        better="lower",
    )
    report.compare(
        "context read",
        "p99, 100-message session",
        Metric("context read", "p99", "ms", [0.4]),
        "LangChain RedisChatMessageHistory.messages",
        Metric("context read", "lc", "ms", [1.4]),
        better="lower",
    )
    return report


def test_each_goal_is_judged_from_the_row_it_names():
    said = verdicts(a_report())
    assert said[GOALS[0].what] == "yes"  # 0.22 ms ÷ 0.18 ms: 1.22x
    assert said[GOALS[1].what].startswith("no: [where the time goes]")
    assert (
        measured(a_report())[GOALS[0].what]
        == "0.22 ms (0.21 ms - 0.23 ms) ÷ 0.18 ms (0.18 ms - 0.19 ms) = 1.22x"
    )
    assert said["context read p99 ÷ LangChain's, 100-message session"] == "yes"


def test_a_limit_known_to_the_millisecond_leaves_a_ratio_near_the_bound_undecided():
    # 14 ms against a limit in [5, 6) ms: between 2.3x and 2.8x, within 3x either way.
    assert verdicts(a_report())[GOALS[2].what] == "yes"
    assert measured(a_report())[GOALS[2].what] == "14.0 ms ÷ 5-6 ms = 2.33-2.80x"
    report = a_report()
    report.comparisons[2].ours.values[:] = [16.0]  # 2.7x to 3.2x: cannot tell
    assert verdicts(report)[GOALS[2].what] == "cannot tell"
    report.comparisons[2].ours.values[:] = [19.0]  # at least 3.2x
    assert verdicts(report)[GOALS[2].what].startswith("no")


def test_a_goal_whose_row_did_not_run_says_so_rather_than_met_or_not():
    said = measured(a_report())
    assert said["projection, one process, events/s"] == "not measured in this run"
    assert verdicts(a_report())["projection, one process, events/s"] == "—"


def test_sealing_twins_count_per_scenario_run():
    report = a_report()
    clear = Metric("append", "clear", "ms", [0.2])
    report.twin("append", "p50", report.comparisons[0].ours, clear, better="lower")
    said = measured(report)["headline rows measured with sealing on and off"]
    assert said == "1 of the 3 scenarios run (not: context read, publish→visible)"


def test_the_regression_guard_counts_when_its_table_is_there():
    report = a_report()
    goal = "ratios compared with the last committed results"
    assert verdicts(report)[goal] == "no"
    report.tables.append(Table(f"{DRIFT_TITLE}: x", ["a"]))
    assert verdicts(report)[goal] == "yes"


def test_the_goals_print_inside_the_part_the_docs_copy():
    report = a_report()
    report.goals = goals_table(report)
    text = report.markdown()
    start, end = text.index("<!-- readme:start -->"), text.index("<!-- readme:end -->")
    assert start < text.index(f"### {GOALS_TITLE}") < end
    assert f"of {len(GOALS)} met" in text
