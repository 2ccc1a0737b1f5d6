"""The regression guard: reading the results' tables, matching rows, the 20% rule."""

from __future__ import annotations

import pytest

from bench.regression import Row, advantage, compare, drift_table, rows_of
from bench.report import CLEAR_TWIN, Metric, Report

LANGCHAIN = "LangChain RedisChatMessageHistory.messages"


def results(*rows: tuple[str, str, str, str], twins: tuple[tuple[str, str, str], ...] = ()) -> str:
    """A results file as `Report.markdown` writes it, with rows (scenario, metric, peer,
    ratio) made from values that give that ratio, and sealing twins (scenario, metric,
    ratio)."""
    report = Report(title="chatlog benchmark", header=["mode: full"])
    for scenario, metric, peer, ratio in rows:
        ours, theirs, better = _values(ratio)
        report.compare(scenario, metric, ours, peer, theirs, better=better)
    for scenario, metric, ratio in twins:
        ours, theirs, better = _values(ratio)
        report.twin(scenario, metric, ours, theirs, better=better)
    report.metric("context read", "a detail row", "ms").add(1.0)
    return report.markdown()


def _values(ratio: str) -> tuple[Metric, Metric, str]:
    factor, word = ratio.split("x ")
    slower = word == "slower"
    ours = Metric("s", "ours", "ms", [float(factor) if slower else 1.0])
    theirs = Metric("s", "theirs", "ms", [1.0 if slower else float(factor)])
    return ours, theirs, "lower"


def test_the_rows_of_the_first_table_and_of_the_sealing_table_are_read_as_printed():
    text = results(
        ("context read", "p99, 100-message session", LANGCHAIN, "1.2x slower"),
        ("context read", "p99, 1,000-message session", LANGCHAIN, "5.5x faster"),
        twins=(("context read", "p99, 100-message session", "1.4x slower"),),
    )
    rows = rows_of(text)
    assert [r.ratio for r in rows] == ["1.2x slower", "5.5x faster", "1.4x slower"]
    assert rows[0] == Row("context read", "p99, 100-message session", LANGCHAIN, "1.2x slower")
    assert rows[2].peer == CLEAR_TWIN
    # The details table (another header) is not a comparison: none of its rows are read.
    assert all(r.metric != "a detail row" for r in rows)


def test_the_committed_results_file_parses_into_its_comparison_rows():
    # The layout the guard reads is the one latest.md has (one row per comparison).
    text = "\n".join(
        [
            "# chatlog benchmark",
            "",
            "| scenario | metric | chatlog: median (range) | peer or limit "
            "| peer: median (range) | ratio |",
            "|---|---|--:|---|--:|---|",
            "| publish→visible | p99 at 500 events/s | 19.7 ms (16.8 ms - 29.6 ms) "
            "| Kafka EndToEndLatency (limit) | 5-6 ms | 3.3-3.9x slower |",
            "| memory | peak resident memory | 275 MB | — | — | — |",
            "",
            "Where chatlog trails most: ...",
        ]
    )
    assert rows_of(text) == [
        Row(
            "publish→visible",
            "p99 at 500 events/s",
            "Kafka EndToEndLatency (limit)",
            "3.3-3.9x slower",
        ),
        Row("memory", "peak resident memory", "—", "—"),
    ]


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        ("3.2x slower", 1 / 3.2),
        ("1.4x faster", 1.4),
        ("6.7x smaller", 6.7),
        ("1.5x larger", 1 / 1.5),
        ("4.0x fewer", 4.0),
        ("about the same", 1.0),
        ("about equal (within the tool's 1 ms resolution)", 1.0),
        ("> 6.3x slower", 1 / 6.3),
        ("3.3-3.9x slower", 1 / (3.3 * 3.9) ** 0.5),
        ("1.2-1.5x faster", (1.2 * 1.5) ** 0.5),
    ],
)
def test_a_ratio_is_read_from_its_words(ratio, expected):
    assert advantage(ratio) == pytest.approx(expected)


@pytest.mark.parametrize("ratio", ["n/a", "—", "none measurable (within the noise)", "blocked"])
def test_a_row_without_a_ratio_has_no_advantage(ratio):
    assert advantage(ratio) is None


def test_more_is_ahead_only_where_the_row_says_more_is_better():
    assert advantage("1.3x more") == pytest.approx(1 / 1.3)  # mistakes: more is worse
    assert advantage("1.3x more", more_is_better=True) == pytest.approx(1.3)  # a recall


def row(metric: str, ratio: str, scenario: str = "context read") -> Row:
    return Row(scenario, metric, LANGCHAIN, ratio)


def test_a_ratio_that_moved_more_than_20_percent_either_way_is_reported_and_less_is_not():
    then = [
        row("p50, 20", "1.3x slower"),
        row("p99, 100", "1.2x slower"),
        row("p99, 1,000", "5.5x faster"),
        row("p50, 1,000", "4.5x faster"),
    ]
    now = [
        row("p50, 20", "1.5x slower"),  # 1/1.5 ÷ 1/1.3 = 0.87: 13% lost, within
        row("p99, 100", "2.1x faster"),  # 2.1 * 1.2 = 2.52: gained
        row("p99, 1,000", "4.0x faster"),  # 4.0 / 5.5 = 0.73: lost 27%
        row("p50, 1,000", "5.4x faster"),  # 5.4 / 4.5 = 1.2 exactly: not more than 20%
    ]
    drift = compare(then, now)
    assert drift.compared == 4
    assert [(m.now.metric, round(m.change, 2)) for m in drift.moved] == [
        ("p99, 1,000", 0.73),  # what lost the most first
        ("p99, 100", 2.52),
    ]
    assert drift.added == []
    assert drift.removed == []


def test_crossing_from_slower_to_faster_counts_the_whole_way():
    drift = compare([row("p99, 100", "1.1x slower")], [row("p99, 100", "1.1x faster")])
    assert [round(m.change, 2) for m in drift.moved] == [1.21]


def test_rows_added_and_removed_are_listed_and_a_scenario_that_did_not_run_is_not_removed():
    then = [
        row("p99, 100", "1.2x slower"),
        row("p99, 20", "1.5x slower"),
        Row("replay", "events/s", "Kafka ConsumerPerformance (limit)", "38.6x slower"),
    ]
    now = [row("p99, 100", "1.2x slower"), row("p99, 5,000", "9.0x faster")]
    drift = compare(then, now)
    assert drift.added == [row("p99, 5,000", "9.0x faster")]
    assert drift.removed == [row("p99, 20", "1.5x slower")]  # replay did not run: left out
    assert drift.moved == []


def test_rows_without_a_peer_are_no_ratio_to_guard_neither_added_nor_removed():
    alone = Row("memory", "peak resident memory", "—", "—")
    drift = compare([alone, row("p99, 100", "1.2x slower")], [row("p99, 100", "1.2x slower")])
    assert drift.removed == []
    assert compare([], [alone]).added == []


def test_rows_without_a_ratio_on_either_side_are_matched_but_not_compared():
    drift = compare([row("p99, 100", "n/a")], [row("p99, 100", "3.0x faster")])
    assert drift.compared == 0
    assert drift.moved == []
    assert drift.added == []


def test_repeated_keys_match_in_order():
    then = [row("same", "1.0x faster"), row("same", "2.0x faster")]
    now = [row("same", "1.0x faster"), row("same", "3.0x faster")]
    assert [round(m.change, 2) for m in compare(then, now).moved] == [1.5]


def test_the_report_section_lists_what_moved_and_what_was_added_and_removed():
    then = [row("p99, 100", "1.2x slower"), row("gone", "1.5x slower")]
    now = [row("p99, 100", "2.0x slower"), row("new", "1.0x faster")]
    table = drift_table(compare(then, now), baseline="bench/results/latest.md at HEAD")
    lines = "\n".join(table.markdown())
    assert (
        "| context read | p99, 100 | "
        + LANGCHAIN
        + " | 1.2x slower | 2.0x slower | lost 40% (0.60x) |"
        in lines
    )
    assert "1 ratios compared, 1 moved by more than 20%" in lines
    assert "New rows: context read, new" in lines
    assert "Rows gone from scenarios that ran: context read, gone" in lines


def test_a_run_compared_with_itself_moves_nothing():
    text = results(
        ("append", "events/s, batched", "Kafka ProducerPerformance (limit)", "38.7x slower"),
        ("context read", "p99, 100-message session", LANGCHAIN, "1.2x slower"),
    )
    drift = compare(rows_of(text), rows_of(text))
    assert drift.compared == 2
    assert drift.moved == drift.added == drift.removed == []
