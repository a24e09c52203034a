"""Charts of comparison tables (matplotlib, imported only when a chart is drawn): a bar chart per metric with the
table's error bars, and throughput against peak memory with the Pareto front joined and out-of-memory runs shown as
infeasible rather than hidden.

    harness compare results/ --plot bars.png --pareto pareto.png
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.compare import (
    METRICS,
    THROUGHPUT,
    Group,
    Table,
    _spread,
    column_header,
    dig,
    group_runs,
    load_results,
    varying_settings,
)  # fmt: skip


def _pyplot(path: Path) -> Any:
    """matplotlib's pyplot, drawing into files only, once path is known not to exist: a plot never replaces a
    file. matplotlib is imported only here."""
    if path.exists():
        raise FileExistsError(f"{path} exists; choose another name for the plot")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def bar_label(row: dict[str, Any]) -> str:
    """What tells a row apart, short: the settings that differ (last part of each key), else recipe and setup;
    the run id's last digits name it."""
    differs = ", ".join(part.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + part.split("=", 1)[1]
                        for part in str(row.get("differs") or "").split(", ") if "=" in part)  # fmt: skip
    return f"{textwrap.fill(differs or str(row['recipe']), 32)}\n{row['setup']} ({str(row['run'])[-6:]})"


def plot_table(table: Table, path: Path) -> Path:
    """One horizontal bar chart per metric column as an image, error bars as ± in the table (standard
    deviation over a row's runs, else a single run's standard error); never replaces a file."""
    plt = _pyplot(path)
    names = [column for column in table.columns if column in METRICS]
    labels = [bar_label(row) for row in table.rows]
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 2, 0.6 * len(labels) + 1.2),
                                sharey=True, squeeze=False)  # fmt: skip
    for axis, name in zip(axes[0], names):
        values = [row.get(name) if row.get(name) is not None else float("nan") for row in table.rows]
        errors = [_spread(row, name) or 0.0 for row in table.rows]
        axis.barh(range(len(labels)), values, xerr=errors if any(errors) else None, ecolor="black", capsize=3)
        axis.set_title(column_header(name), fontsize=9)
    axes[0][0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0][0].invert_yaxis()  # the first run on top, as in the table (the y axis is shared)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


@dataclass
class ParetoPoint:
    """A row of completed runs: its mean throughput and mean peak memory."""

    label: str  # the settings that tell it from the other rows, one a line (else its run id)
    memory_gib: float  # CUDA peak allocated, else the host's peak RSS (CPU runs)
    samples_per_s: float
    cuda: bool  # whether memory_gib is CUDA's
    optimal: bool = False  # on the Pareto front: no other point is as fast with less memory, or faster with as much


@dataclass
class OutOfMemory:
    """A run that failed with error.type OutOfMemory: infeasible, so drawn apart rather than left out."""

    label: str
    batch_size: int | None  # per device, of the phase that did not fit


@dataclass
class ParetoChart:
    """What plot_pareto draws."""

    points: list[ParetoPoint]
    out_of_memory: list[OutOfMemory]


def mark_pareto_front(points: list[ParetoPoint]) -> None:
    """Sets optimal on the points that no other point dominates (less or equal memory and higher or equal
    throughput, one of them strictly)."""
    for point in points:
        point.optimal = not any(
            other.memory_gib <= point.memory_gib and other.samples_per_s >= point.samples_per_s
            and (other.memory_gib < point.memory_gib or other.samples_per_s > point.samples_per_s)
            for other in points
        )  # fmt: skip


def pareto_chart(groups: list[Group]) -> ParetoChart:
    """Throughput against peak memory per row, the front marked; out-of-memory runs listed with their batch size.
    Labels are the varying settings by their last name (dtype=bf16), one per line."""
    chart = ParetoChart([], [])
    for group, varying in zip(groups, varying_settings(groups)):
        first = group.results[0]
        label = "\n".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in varying.items()) or str(group.label)
        if dig(first, "error", "type") == "OutOfMemory":
            batch = dig(first, "error", "batch_size") or dig(first, "recipe", "train", "batch_size")
            chart.out_of_memory.append(OutOfMemory(label, batch))
            continue
        memory, speed = group.mean("peak_memory_gib"), group.mean(THROUGHPUT)
        if memory is not None and speed is not None:
            cuda = dig(first, "memory", "cuda_peak_allocated_bytes") is not None
            chart.points.append(ParetoPoint(label, memory, speed, cuda))
    mark_pareto_front(chart.points)
    return chart


def draw_pareto(axis: Any, chart: ParetoChart) -> None:
    """The points (filled: CUDA peak; hollow: host RSS), each labelled, the front ringed and joined in memory order,
    and each out-of-memory run as a red x at the right edge of the memory axis, with its batch size."""
    for cuda, kind in ((True, "CUDA peak allocated"), (False, "host peak RSS (no CUDA)")):
        shown = [point for point in chart.points if point.cuda == cuda]
        if shown:
            axis.scatter([point.memory_gib for point in shown], [point.samples_per_s for point in shown], s=30,
                         facecolors="C0" if cuda else "none", edgecolors="C0", label=kind, zorder=3)  # fmt: skip
    front = sorted((point for point in chart.points if point.optimal), key=lambda point: point.memory_gib)
    axis.plot([point.memory_gib for point in front], [point.samples_per_s for point in front], color="C1", marker="o",
              markersize=11, markerfacecolor="none", label="Pareto front", zorder=2)  # fmt: skip
    for point in chart.points:
        axis.annotate(point.label, (point.memory_gib, point.samples_per_s), xytext=(4, 4), textcoords="offset points",
                      fontsize=7)  # fmt: skip
    edge = 1.15 * max((point.memory_gib for point in chart.points), default=1.0)
    top = max((point.samples_per_s for point in chart.points), default=1.0)
    heights = [top * 0.08 * (i + 1) for i in range(len(chart.out_of_memory))]  # low: where few points lie
    if chart.out_of_memory:
        axis.scatter([edge] * len(heights), heights, marker="x", color="red", s=60, label="out of memory", zorder=3)
    for failed, height in zip(chart.out_of_memory, heights):
        axis.annotate(f"OOM, batch {failed.batch_size}: {failed.label}", (edge, height), xytext=(-8, 0),
                      textcoords="offset points", ha="right", va="center", fontsize=7, color="red")  # fmt: skip
    axis.set_xlim(0, edge * 1.05)
    axis.set_ylim(0, top * 1.15)
    axis.set_xlabel("peak memory (GiB): CUDA peak allocated, else host peak RSS")
    axis.set_ylabel(f"{THROUGHPUT} {METRICS[THROUGHPUT].direction}")
    axis.legend(fontsize=7, loc="best")


def plot_pareto(chart: ParetoChart, path: Path) -> Path:
    """The chart as an image (see draw_pareto); never replaces a file."""
    plt = _pyplot(path)
    figure, axis = plt.subplots(figsize=(8, 5.5))
    draw_pareto(axis, chart)
    figure.savefig(path, dpi=120, bbox_inches="tight")  # labels may reach past the axes
    plt.close(figure)
    return path


def compare_pareto(paths: list[str], path: Path, *, per_run: bool = False, strict: bool = False) -> Path:
    """Draws the throughput-versus-memory chart of the result files named by paths into path (a new file)."""
    loaded = load_results(paths, strict=strict)
    return plot_pareto(pareto_chart(group_runs(loaded.results, loaded.paths, per_run)), path)
