"""The latency chart: percentiles of chatlog and its peers, one panel per scenario, as PNG.

Each panel has groups on the x axis (a rate, a session size) and one bar per series
(a percentile of a store), on a logarithmic scale so that a 0.1 ms read and a 20 ms
p99.9 fit on one chart. Bars are the medians of the repetitions. A value a tool reports
in whole milliseconds (Kafka's EndToEndLatency) is drawn as what it is, an interval: a
hatched bar from that millisecond to the next.

matplotlib is imported here only (with the Agg backend: no display needed), so the rest
of the benchmark runs without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.report import WHOLE_MS, ChartPoint

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["latency_chart"]

_FLOOR_MS = 0.01  # the lowest the axis goes (a log scale has no 0)


def latency_chart(points: Sequence[ChartPoint], path: Path, *, title: str) -> bool:
    """Draw `points` into `path`; False (and nothing written) when there is nothing to draw."""
    panels: dict[str, list[ChartPoint]] = {}
    for point in points:
        if point.metric.values and not math.isnan(point.metric.median):
            panels.setdefault(point.panel, []).append(point)
    if not panels:
        return False
    import matplotlib  # noqa: PLC0415 - optional, and heavy to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(
        1, len(panels), figsize=(7.5 * len(panels), 5.2), squeeze=False, constrained_layout=True
    )
    for axis, (panel, drawn) in zip(axes[0], panels.items(), strict=True):
        _panel(axis, panel, drawn)
    figure.suptitle(title, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _panel(axis: Axes, panel: str, points: Sequence[ChartPoint]) -> None:
    groups = list(dict.fromkeys(point.group for point in points))
    series = list(dict.fromkeys(point.series for point in points))
    width = 0.8 / len(series)
    colors = _colors(series)
    # The axis starts below the smallest value (a whole-ms value counts as its upper end),
    # and an "under 1 ms" bar starts there.
    lowest = [p.metric.median + 1 if p.metric.unit == WHOLE_MS else p.metric.median for p in points]
    floor = max(_FLOOR_MS, min(lowest, default=1.0) / 3)
    for k, name in enumerate(series):
        for point in (p for p in points if p.series == name):
            x = groups.index(point.group) - 0.4 + width * (k + 0.5)
            value = point.metric.median
            if point.metric.unit == WHOLE_MS:
                bottom = max(value, floor)
                axis.bar(
                    x,
                    value + 1 - bottom,
                    width,
                    bottom=bottom,
                    color=colors[name],
                    hatch="//",
                    edgecolor="black",
                    linewidth=0.5,
                )
                label = "< 1" if value < 1 else f"{value:g}-{value + 1:g}"
                top = value + 1
            else:
                axis.bar(x, value, width, color=colors[name])
                label = f"{value:.2g}" if value < 10 else f"{value:.0f}"
                top = value
            axis.annotate(
                label,
                (x, top),
                textcoords="offset points",
                xytext=(0, 2),
                ha="center",
                fontsize=6,
                rotation=90,
            )
    for name in series:
        axis.bar(math.nan, math.nan, color=colors[name], label=name)
    if any(p.metric.unit == WHOLE_MS for p in points):
        axis.bar(
            math.nan,
            math.nan,
            color="white",
            hatch="//",
            edgecolor="black",
            linewidth=0.5,
            label="hatched: printed in whole ms; the bar spans that ms",
        )
    axis.set_yscale("log")
    # Headroom above the highest bar for its label and the legend.
    axis.set_ylim(bottom=floor, top=max(lowest) * 6)
    axis.set_xticks(range(len(groups)), groups)
    axis.set_ylabel("milliseconds (log scale)")
    axis.set_title(panel)
    axis.grid(axis="y", which="both", alpha=0.3)
    axis.legend(fontsize=7, ncols=2 if len(series) > 3 else 1, loc="upper left")


def _colors(series: Sequence[str]) -> dict[str, str]:
    """The same colour family for a store's percentiles, darker for the higher ones."""
    families = {
        "chatlog": ("#9ecae1", "#3182bd", "#08519c"),
        "LangChain": ("#fdae6b", "#e6550d", "#a63603"),
        "plain list": ("#a1d99b", "#31a354", "#006d2c"),
        "": ("#bcbddc", "#756bb1", "#54278f"),
    }
    colors = {}
    seen: dict[str, int] = {}
    for name in series:
        family = next((f for f in families if f and name.startswith(f)), "")
        n = seen.get(family, 0)
        seen[family] = n + 1
        shades = families[family]
        colors[name] = shades[min(n, len(shades) - 1)]
    return colors
