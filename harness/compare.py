"""Comparison tables over result files: one row per run, one column per metric.

``build_table`` turns loaded result documents into a ``Table`` of raw values; ``render_markdown``,
``render_csv`` and ``render_json`` print it; ``compare`` does both from paths (files or folders).
Optional columns: ``<metric> vs baseline`` (ratio to a chosen run) and ``scaling_eff`` (throughput
over N x the 1-process throughput, for runs whose configuration differs only in process count).
This module is stdlib only (no torch, pandas or numpy), so it answers instantly.

    harness compare results/ --baseline 0 --metrics train_samples_per_s,f1_macro
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.results import find_result_files, load_result

Getter = Callable[[dict[str, Any], str], Any]  # (result document, accuracy split) -> value or None


def _dig(document: Any, *keys: str) -> Any:
    """document[k1][k2]...; None where a level is missing or null."""
    for key in keys:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _significant(value: float) -> str:
    """Three significant digits, trailing zeros kept (3.00, 0.312), no exponent for large values."""
    return f"{value:.0f}" if abs(value) >= 999.5 else f"{value:#.3g}".rstrip(".")


def _rate(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 100 else _significant(value)


def _fraction(value: float) -> str:
    return f"{value:.3f}"


def _ratio(value: float) -> str:
    return f"{value:.2f}"


@dataclass(frozen=True)
class Metric:
    get: Getter
    direction: str  # "↑" higher is better, "↓" lower is better
    fmt: Callable[[float], str]
    stderr: Getter | None = None


def _speed(key: str, direction: str, fmt: Callable[[float], str]) -> Metric:
    return Metric(lambda result, split: _dig(result, "speed", key), direction, fmt)


def _gib(key: str) -> Metric:
    def get(result: dict[str, Any], split: str) -> float | None:
        value = _dig(result, "memory", key)
        return None if value is None else value / 2**30

    return Metric(get, "↓", _significant)


def _accuracy(key: str, with_stderr: bool = False) -> Metric:
    def getter(name: str) -> Getter:
        return lambda result, split: _dig(result, "accuracy", split, name)

    return Metric(getter(key), "↑", _fraction, getter(f"{key}_stderr") if with_stderr else None)


METRICS: dict[str, Metric] = {
    "train_samples_per_s": _speed("train_samples_per_s", "↑", _rate),
    "train_samples_per_s_per_device": _speed("train_samples_per_s_per_device", "↑", _rate),
    "real_tokens_per_s": _speed("train_real_tokens_per_s", "↑", _rate),
    "padded_tokens_per_s": _speed("train_padded_tokens_per_s", "↑", _rate),
    "padding_efficiency": _speed("padding_efficiency", "↑", _fraction),
    "step_mean_s": _speed("step_time_mean_s", "↓", _significant),
    "step_p50_s": _speed("step_time_p50_s", "↓", _significant),
    "step_p90_s": _speed("step_time_p90_s", "↓", _significant),
    "eval_samples_per_s": _speed("eval_samples_per_s", "↑", _rate),
    "time_to_first_step_s": _speed("time_to_first_step_s", "↓", _significant),
    "train_wall_s": _speed("train_wall_s", "↓", _significant),
    "total_wall_s": _speed("total_wall_s", "↓", _significant),
    "mfu": _speed("mfu", "↑", _fraction),
    "peak_rss_gib": _gib("peak_host_rss_bytes"),
    "cuda_peak_alloc_gib": _gib("cuda_peak_allocated_bytes"),
    "cuda_peak_reserved_gib": _gib("cuda_peak_reserved_bytes"),
    "accuracy": _accuracy("accuracy", with_stderr=True),
    "f1_macro": _accuracy("f1_macro", with_stderr=True),
    "f1_micro": _accuracy("f1_micro"),
    "f1_weighted": _accuracy("f1_weighted"),
    "top2_accuracy": _accuracy("top2_accuracy"),
}

DEFAULT_METRICS = [
    "train_samples_per_s",
    "real_tokens_per_s",
    "padding_efficiency",
    "step_p50_s",
    "mfu",
    "peak_rss_gib",
    "cuda_peak_alloc_gib",
    "accuracy",
    "f1_macro",
]

IDENTITY = ["run", "recipe", "status", "setup"]
SCALING = "scaling_eff"


@dataclass
class Table:
    """Raw values. ``columns`` are row keys in display order; a metric with a stderr also has a
    ``<name>_stderr`` key in every row (rendered as ``value ± stderr``, its own CSV column)."""

    columns: list[str]
    rows: list[dict[str, Any]]


def metric(name: str) -> Metric:
    if name in METRICS:
        return METRICS[name]
    close = difflib.get_close_matches(name, METRICS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown metric {name!r}{hint}. Valid metrics: {', '.join(METRICS)}")


def resolve_split(result: dict[str, Any], split: str) -> str:
    if split != "auto":
        return split
    return "test" if "test" in (result.get("accuracy") or {}) else "validation"


def world_size(result: dict[str, Any]) -> int:
    return _dig(result, "ran", "world_size") or _dig(result, "recipe", "hardware", "num_processes") or 1


def setup(result: dict[str, Any]) -> str:
    """Short description of what ran, for example "cuda bf16 sdpa x4"."""
    ran = result.get("ran") or {}
    dtype = "fp32" if ran.get("mixed_precision") == "no" else ran.get("mixed_precision")
    parts = [
        ran.get("device") or _dig(result, "recipe", "hardware", "device"),
        dtype or _dig(result, "recipe", "precision", "dtype"),
        ran.get("attn_implementation") or _dig(result, "recipe", "model", "attn_implementation"),
        f"x{world_size(result)}",
    ]
    if (ran.get("num_machines") or 1) > 1:
        parts.append(f"({ran['num_machines']} machines)")
    return " ".join(str(part) for part in parts if part)


def _divide(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def _row(result: dict[str, Any], names: list[str], split: str) -> dict[str, Any]:
    split = resolve_split(result, split)
    row = {"run": result.get("run_id"), "recipe": result.get("recipe_name"),
           "status": result.get("status"), "setup": setup(result)}
    for name in names:
        spec = METRICS[name]
        row[name] = spec.get(result, split)
        if spec.stderr:
            row[f"{name}_stderr"] = spec.stderr(result, split)
    return row


def baseline_index(results: list[dict[str, Any]], baseline: str) -> int:
    """A run id, a unique prefix of one, or a 0-based row index."""
    ids = [str(result.get("run_id")) for result in results]
    if baseline in ids:
        return ids.index(baseline)
    if baseline.isdigit() and int(baseline) < len(ids):
        return int(baseline)
    matches = [i for i, run_id in enumerate(ids) if run_id.startswith(baseline)]
    if len(matches) == 1:
        return matches[0]
    problem = "matches several runs" if matches else "is not a run id, prefix or row index"
    raise ValueError(f"baseline {baseline!r} {problem}. Runs: {', '.join(ids)}")


def _scaling_key(result: dict[str, Any]) -> str:
    """The configuration with the process count (and labels) left out; equal keys, comparable runs."""
    recipe = {k: v for k, v in (result.get("recipe") or {}).items() if k not in ("name", "description")}
    recipe["hardware"] = {
        k: v for k, v in (recipe.get("hardware") or {}).items() if k not in ("num_processes", "gpu")
    }
    ran = {k: _dig(result, "ran", k) for k in ("device", "device_name", "mixed_precision", "attn_implementation")}
    return json.dumps({"recipe": recipe, "ran": ran}, sort_keys=True, default=str)


def scaling_efficiency(results: list[dict[str, Any]]) -> list[float | None]:
    """throughput_N / (N x mean 1-process throughput) within groups of otherwise identical runs."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, result in enumerate(results):
        if _dig(result, "speed", "train_samples_per_s") is not None:
            groups[_scaling_key(result)].append(i)
    efficiency: list[float | None] = [None] * len(results)
    for members in groups.values():
        sizes = [world_size(results[i]) for i in members]
        single = [results[i]["speed"]["train_samples_per_s"] for i, n in zip(members, sizes) if n == 1]
        if not single or len(set(sizes)) < 2:
            continue
        base = sum(single) / len(single)
        for i, n in zip(members, sizes):
            efficiency[i] = _divide(results[i]["speed"]["train_samples_per_s"], n * base)
    return efficiency


def build_table(
    results: list[dict[str, Any]],
    metrics: list[str],
    split: str = "auto",
    baseline: str | None = None,
    ratio_of: str = "train_samples_per_s",
) -> Table:
    names = list(dict.fromkeys(metrics))
    for name in [*names, ratio_of]:
        metric(name)
    columns = [*IDENTITY, *names]
    rows = [_row(result, names, split) for result in results]
    if baseline is not None:
        column = f"{ratio_of} vs baseline"
        values = [METRICS[ratio_of].get(result, resolve_split(result, split)) for result in results]
        reference = values[baseline_index(results, baseline)]
        for row, value in zip(rows, values):
            row[column] = _divide(value, reference)
        columns.append(column)
    efficiency = scaling_efficiency(results)
    if any(value is not None for value in efficiency):
        for row, value in zip(rows, efficiency):
            row[SCALING] = value
        columns.append(SCALING)
    return Table(columns, rows)


def _header(column: str) -> str:
    return f"{column} {METRICS[column].direction}" if column in METRICS else column


def _cell(column: str, row: dict[str, Any]) -> str:
    value = row.get(column)
    if value is None:
        return ""
    if column in IDENTITY:
        return str(value).replace("|", "\\|")
    spec = METRICS.get(column)
    if spec is None:
        return _ratio(value)
    stderr = row.get(f"{column}_stderr")
    return spec.fmt(value) + ("" if stderr is None else f" ± {spec.fmt(stderr)}")


def render_markdown(table: Table) -> str:
    """GitHub pipe table; numeric columns right-aligned."""
    headers = [_header(column) for column in table.columns]
    cells = [[_cell(column, row) for column in table.columns] for row in table.rows]
    widths = [max([3, len(header), *(len(line[i]) for line in cells)]) for i, header in enumerate(headers)]
    numeric = [column not in IDENTITY for column in table.columns]

    def line(values: list[str]) -> str:
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if num else "-" * (w + 2) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(headers), rule, *map(line, cells)]) + "\n"


def _fields(table: Table) -> list[str]:
    """Row keys in column order, each metric followed by its stderr key where it has one."""
    fields = []
    for column in table.columns:
        fields.append(column)
        if column in METRICS and METRICS[column].stderr:
            fields.append(f"{column}_stderr")
    return fields


def render_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_fields(table), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table.rows)
    return buffer.getvalue()


def render_json(table: Table) -> str:
    return json.dumps(table.rows, indent=2, ensure_ascii=False) + "\n"


RENDERERS: dict[str, Callable[[Table], str]] = {
    "markdown": render_markdown,
    "csv": render_csv,
    "json": render_json,
}


def plot_table(table: Table, path: Path) -> Path:
    """One horizontal bar chart per metric column (± standard error where known) as an image; matplotlib
    is imported only here, and an existing file is never replaced."""
    if path.exists():
        raise FileExistsError(f"{path} exists; choose another name for the plot")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = [column for column in table.columns if column in METRICS]
    labels = [f"{row['recipe']}\n{row['setup']} ({str(row['run'])[-6:]})" for row in table.rows]
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 2, 0.6 * len(labels) + 1.2),
                                sharey=True, squeeze=False)  # fmt: skip
    for axis, name in zip(axes[0], names):
        values = [row.get(name) if row.get(name) is not None else float("nan") for row in table.rows]
        errors = [row.get(f"{name}_stderr") or 0.0 for row in table.rows]
        axis.barh(range(len(labels)), values, xerr=errors if any(errors) else None, ecolor="black", capsize=3)
        axis.set_title(_header(name), fontsize=9)
    axes[0][0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0][0].invert_yaxis()  # the first run on top, as in the table (the y axis is shared)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def compare_table(
    paths: list[str],
    metrics: list[str] | None = None,
    split: str = "auto",
    baseline: str | None = None,
    ratio_of: str = "train_samples_per_s",
) -> Table:
    """The comparison table of the result files named by paths (files or folders)."""
    results = [load_result(path) for path in find_result_files(paths)]
    return build_table(results, metrics or DEFAULT_METRICS, split, baseline, ratio_of)


def compare(paths: list[str], metrics: list[str] | None = None, fmt: str = "markdown", **options: Any) -> str:
    """Load the result files named by paths and render their comparison table."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt](compare_table(paths, metrics, **options))

