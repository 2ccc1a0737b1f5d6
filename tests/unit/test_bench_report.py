"""The benchmark's ratios in words, for the cases a noisy machine produces."""

from __future__ import annotations

import math

from bench.report import Comparison, Metric


def comparison(ours: list[float], theirs: list[float], better: str = "lower") -> Comparison:
    return Comparison(
        "pii",
        "redaction added per append, µs",
        Metric("pii", "ours", "µs", ours),
        "a scrubber",
        Metric("pii", "theirs", "µs", theirs),
        better=better,  # type: ignore[arg-type]
    )


def test_an_added_cost_at_or_below_zero_is_said_to_be_within_the_noise_not_missing():
    assert comparison([-3.0, -1.0, 2.0], [40.0]).ratio() == "none measurable (within the noise)"


def test_a_measured_cost_keeps_its_ratio_and_a_missing_one_says_so():
    assert comparison([10.0], [40.0]).ratio() == "4.0x faster"
    assert comparison([], [40.0]).ratio() == "n/a"


def test_a_bound_never_reached_is_said_so_not_missing():
    # The latency sweep stayed under its p99 bound at every rate it offered.
    saturation = Metric("publish→visible", "saturation (sweep)", "events/s", [math.inf])
    saturation.add(math.inf)
    assert saturation.cell() == "not reached"
    saturation.add(3_100.0)
    assert saturation.cell() == "not reached (3,100 - not reached)"
    assert Metric("x", "y", "events/s", [2_500.0, math.inf, 3_000.0]).cell() == (
        "3,000 (2,500 - not reached)"
    )


def test_a_bound_one_side_never_reached_says_which_side_is_ahead_without_a_factor():
    # As a saturation rate sealed beside clear (higher is better) whose clear sweep stayed
    # under the bound at every rate it offered.
    assert comparison([5_000.0], [math.inf], "higher").ratio() == "slower (one side not reached)"
    assert comparison([math.inf], [5_000.0], "higher").ratio() == "faster (one side not reached)"
    assert comparison([math.inf], [math.inf], "higher").ratio() == "neither reached it"
    assert math.isnan(comparison([5_000.0], [math.inf], "higher").advantage())
    assert comparison([4_000.0], [5_000.0], "higher").ratio() == "1.2x slower"
