"""The table, the raw figures (JSON) and the chart of ratios (PNG)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.scenarios import Metric, Scenario, Timing

REGISTRIES = ("ours", "reference")
COUNTS = ("pages", "pushes", "events")  # units of whole numbers


@dataclass
class Row:
    scenario: str
    metric: Metric
    ours: list[float]
    reference: list[float]

    @property
    def ratio(self) -> float | None:
        if not self.metric.compared or not self.ours or not self.reference:
            return None
        ref, ours = statistics.median(self.reference), statistics.median(self.ours)
        # None too when a median is negative (an event that came before its PUT's answer), the
        # reference's is 0, or either is NaN (no figure): no meaningful ratio.
        return ours / ref if ref > 0 and ours >= 0 else None

    @property
    def ours_better(self) -> bool | None:
        ratio = self.ratio
        if ratio is None:
            return None
        return ratio > 1 if self.metric.higher_is_better else ratio < 1


def number(value: float, unit: str = "") -> str:
    if value != value:  # NaN
        return "nan"
    if unit in COUNTS:
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def spread(values: list[float], unit: str = "") -> str:
    if not values:
        return "failed"
    median = number(statistics.median(values), unit)
    if len(values) == 1:
        return median
    return f"{median} ({number(min(values), unit)}-{number(max(values), unit)})"


def rows(
    scenarios: list[Scenario], values: dict[str, dict[str, list[dict[str, float]]]]
) -> list[Row]:
    table = []
    for scenario in scenarios:
        per_registry = values.get(scenario.name, {})
        for metric in scenario.metrics:
            samples = {
                name: [run[metric.key] for run in per_registry.get(name, []) if metric.key in run]
                for name in REGISTRIES
            }
            table.append(Row(scenario.title, metric, samples["ours"], samples["reference"]))
    return table


def _render(header: list[str], lines: list[list[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in lines)])


def table(table_rows: list[Row]) -> str:
    lines = []
    previous = None
    for row in table_rows:
        direction = "↑" if row.metric.higher_is_better else "↓"
        ratio = row.ratio
        verdict = ""
        if ratio is not None:
            verdict = "  better" if row.ours_better else "  worse"
        lines.append(
            [
                row.scenario if row.scenario != previous else "",
                f"{row.metric.label} ({row.metric.unit})"
                + (f" {direction}" if row.metric.compared else ""),
                spread(row.ours, row.metric.unit),
                "-" if row.metric.ours_only else spread(row.reference, row.metric.unit),
                (f"{ratio:.2f}" + verdict) if ratio is not None else "-",
            ]
        )
        previous = row.scenario
    header = [
        "scenario",
        "metric",
        "ours median (min-max)",
        "reference median (min-max)",
        "ours/reference",
    ]
    return _render(header, lines, right={2, 3})


def cpu_table(scenarios: list[Scenario], cpu: dict[str, dict[str, dict[str, Timing]]]) -> str:
    lines = []
    for scenario in scenarios:
        for name in REGISTRIES:
            for label, timing in cpu.get(scenario.name, {}).get(name, {}).items():
                share = timing.cpu / timing.wall if timing.wall else 0.0
                lines.append(
                    [
                        scenario.title,
                        name,
                        label,
                        f"{timing.cpu:.2f}",
                        f"{timing.wall:.2f}",
                        f"{share * 100:.0f}%",
                    ]
                )
    header = ["scenario", "registry", "timed part", "client CPU s", "wall s", "CPU/wall"]
    return _render(header, lines, right={3, 4, 5})


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_chart(path: Path, table_rows: list[Row], title: str) -> str | None:
    """A horizontal bar per compared metric: ours/reference on a log scale, 1 marked; green
    where ours is better (taking the metric's direction into account), red where worse. The
    path written, or None when matplotlib is not installed or nothing was compared."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    plotted = [row for row in table_rows if row.ratio is not None]
    if not plotted:
        return None
    labels = [
        f"{row.scenario}\n{row.metric.label} ({row.metric.unit}, "
        f"{'higher' if row.metric.higher_is_better else 'lower'} is better)"
        for row in plotted
    ]
    ratios = [row.ratio or 0.0 for row in plotted]
    colors = ["#2e8b57" if row.ours_better else "#c0392b" for row in plotted]
    figure, axes = plt.subplots(figsize=(11, 0.55 * len(plotted) + 1.6))
    positions = list(range(len(plotted)))[::-1]
    # Each bar runs from 1 (parity) to the ratio, right for above, left for below.
    axes.barh(positions, [ratio - 1 for ratio in ratios], left=1.0, color=colors)
    axes.set_xscale("log")
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_yticks(positions)
    axes.set_yticklabels(labels, fontsize=7)
    for position, ratio in zip(positions, ratios, strict=True):
        above = ratio >= 1
        axes.annotate(
            f"{ratio:.2f}",
            (ratio, position),
            xytext=(3 if above else -3, 0),
            textcoords="offset points",
            ha="left" if above else "right",
            va="center",
            fontsize=7,
        )
    low = min(min(ratios), 1.0) / 2
    high = max(max(ratios), 1.0) * 2
    axes.set_xlim(low, high)
    ticks = [2.0**k for k in range(-10, 11) if low <= 2.0**k <= high]
    axes.set_xticks(ticks)
    axes.set_xticklabels([f"{tick:g}" for tick in ticks])
    axes.minorticks_off()
    axes.set_xlabel("ours / reference (median), log scale; green: ours better, red: worse")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return str(path)
