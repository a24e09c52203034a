"""Comparison tables over result files: one row per run (or per group of repeated runs), one column per metric.

``build_table`` turns loaded result documents into a ``Table`` of raw values; ``render_markdown``,
``render_csv`` and ``render_json`` print it; ``compare`` does both from paths (files or folders), showing only
files that pass the schema's validation: the others are skipped and named in the notes (``strict``: an error).
Runs launched together by ``harness run --repeats N`` share a row: the mean over their seeds ± the standard
deviation, with ``n`` runs. ``differs`` names the recipe settings that tell the rows apart.
With a baseline row, every metric gets its change against it and a verdict: Welch's t over seeds for rows
of several runs, or, for two single runs' accuracy and macro-F1, a paired test on their predictions of the
same rows; plus ``<metric> vs baseline`` (a ratio). ``scaling_eff`` is the throughput over N x the 1-process
throughput, for rows at the same global batch whose configuration differs only in process count.
This module loads numpy only (no torch, pandas, scipy or scikit-learn), so it answers instantly; scipy
is imported for verdicts, matplotlib for plots.

    harness compare results/ --baseline 0 --metrics train_samples_per_s,f1_macro
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from harness import stats
from harness.results import ResultFileError, load_result, scan_result_files

Getter = Callable[[dict[str, Any], str], Any]  # (result document, accuracy split) -> value or None
PairedTest = Callable[[np.ndarray, np.ndarray, np.ndarray], stats.Comparison]  # (labels, preds a, preds b)


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
    paired: PairedTest | None = None  # tests two single runs on their predictions of the same rows


def _speed(key: str, direction: str, fmt: Callable[[float], str]) -> Metric:
    return Metric(lambda result, split: _dig(result, "speed", key), direction, fmt)


def _gib(key: str) -> Metric:
    def get(result: dict[str, Any], split: str) -> float | None:
        value = _dig(result, "memory", key)
        return None if value is None else value / 2**30

    return Metric(get, "↓", _significant)


def _accuracy(key: str, with_stderr: bool = False, paired: PairedTest | None = None) -> Metric:
    def getter(name: str) -> Getter:
        return lambda result, split: _dig(result, "accuracy", split, name)

    return Metric(getter(key), "↑", _fraction, getter(f"{key}_stderr") if with_stderr else None, paired)


METRICS: dict[str, Metric] = {
    "train_samples_per_s": _speed("train_samples_per_s", "↑", _rate),
    "train_samples_per_s_wall": _speed("train_samples_per_s_wall", "↑", _rate),
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
    "accuracy": _accuracy("accuracy", with_stderr=True, paired=stats.mcnemar),
    "f1_macro": _accuracy("f1_macro", with_stderr=True, paired=stats.paired_f1_difference),
    "f1_micro": _accuracy("f1_micro"),
    "f1_weighted": _accuracy("f1_weighted"),
    "top2_accuracy": _accuracy("top2_accuracy"),
}

DEFAULT_METRICS = [
    "train_samples_per_s",
    "train_samples_per_s_wall",
    "real_tokens_per_s",
    "padding_efficiency",
    "step_p50_s",
    "mfu",
    "peak_rss_gib",
    "cuda_peak_alloc_gib",
    "accuracy",
    "f1_macro",
]

IDENTITY = ["run", "recipe", "status", "setup", "differs"]
COUNT = "n"
SCALING = "scaling_eff"
THROUGHPUT = "train_samples_per_s"  # what scaling_eff compares
VERSUS = ("delta_pct", "verdict", "p_value", "diff_ci95")  # per metric against the baseline: <metric>_<field>
VERDICT_MARKS = {"significant": " *", "within noise": " ~"}

# Recipe settings that never tell runs apart: labels, where files go, the Modal GPU request (ran has the device)
IGNORED = ("name", "description", "output", "hardware.gpu")
# ...and for scaling, how the global batch is split over processes, and the seed
SCALING_IGNORED = (*IGNORED, "train.seed", "train.batch_size", "train.gradient_accumulation_steps",
                   "hardware.num_processes")  # fmt: skip
SHORT_NAMES = {"train.seed": "seed"}


@dataclass
class Table:
    """Raw values. ``columns`` are row keys in display order. Every metric also has ``<name>_std`` (over a
    row's runs, None for one run) and, where it has one, ``<name>_stderr`` (a single run's own standard
    error); with a baseline, ``<name>_delta_pct``, ``_verdict``, ``_p_value`` and ``_diff_ci95`` too."""

    columns: list[str]
    rows: list[dict[str, Any]]
    baseline: str | None = None  # the run or group id of the row the others are compared with
    notes: list[str] = field(default_factory=list)  # what the numbers cannot say by themselves


@dataclass
class Group:
    """The runs shown as one row: a single run, or the completed runs of one ``--repeats`` launch."""

    label: str | None  # the run id, or the repeats group id
    results: list[dict[str, Any]]
    paths: list[Path | None]  # the result files, beside which predictions files lie

    def values(self, name: str, split: str = "auto") -> list[float]:
        """The metric in every run that has it."""
        get = METRICS[name].get
        return [value for result in self.results if (value := get(result, resolve_split(result, split))) is not None]

    def mean(self, name: str, split: str = "auto") -> float | None:
        values = self.values(name, split)
        return stats.mean_std(values)[0] if values else None


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


def global_batch_size(result: dict[str, Any]) -> int | None:
    """Samples per optimizer step over all processes, as recorded, else from the recipe."""
    recorded = _dig(result, "ran", "global_batch_size")
    if recorded is not None:
        return recorded
    train = _dig(result, "recipe", "train") or {}
    if train.get("batch_size") is None:
        return None
    return train["batch_size"] * (train.get("gradient_accumulation_steps") or 1) * world_size(result)


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


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def settings(result: dict[str, Any], ignore: tuple[str, ...] = IGNORED) -> dict[str, str]:
    """The recipe as dotted keys (``train.seed``) with YAML-style values (``false``, ``null``), without the
    keys in ignore and those below them."""
    flat = _flatten(result.get("recipe") or {})
    return {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in flat.items()
        if not any(key == skip or key.startswith(f"{skip}.") for skip in ignore)
    }


def differences(groups: list[Group]) -> list[str]:
    """Per row, ``key=value`` for every recipe setting whose value varies across the rows ("" if none does).
    A setting that varies inside a repeats group (its seeds) has no single value there and is not compared."""
    described = [[settings(result) for result in group.results] for group in groups]
    keys = dict.fromkeys(key for runs in described for run in runs for key in run)
    found = [{key: {run.get(key) for run in runs} for key in keys} for runs in described]  # None: not set
    fixed = [{key: next(iter(values)) for key, values in row.items() if len(values) == 1} for row in found]
    varying = [key for key in keys if len({row[key] for row in fixed if key in row}) > 1]
    return [
        ", ".join(f"{SHORT_NAMES.get(key, key)}={row[key]}" for key in varying if row.get(key) is not None)
        for row in fixed
    ]


def group_runs(results: list[dict[str, Any]], paths: list[Path] | None = None, per_run: bool = False) -> list[Group]:
    """Completed runs of one ``--repeats`` launch share a Group (unless per_run); every other run is its own,
    failed ones included, so their ids (which name their logs) stay visible. First-seen order."""
    groups: dict[tuple[str, Any], Group] = {}
    for i, (result, path) in enumerate(zip(results, paths or [None] * len(results))):
        repeats = _dig(result, "repeats", "group")
        together = repeats is not None and not per_run and result.get("status") == "completed"
        key = ("repeats", repeats) if together else ("run", i)
        if key not in groups:
            groups[key] = Group(repeats if together else result.get("run_id"), [], [])
        groups[key].results.append(result)
        groups[key].paths.append(path)
    return list(groups.values())


def _divide(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def _row(group: Group, names: list[str], split: str, differs: str) -> dict[str, Any]:
    first = group.results[0]
    row = {"run": group.label, "recipe": first.get("recipe_name"), "status": first.get("status"),
           "setup": setup(first), "differs": differs, COUNT: len(group.results)}  # fmt: skip
    for name in names:
        spec = METRICS[name]
        values = group.values(name, split)
        row[name], row[f"{name}_std"] = stats.mean_std(values) if values else (None, None)
        if spec.stderr:  # a single run's own uncertainty (its evaluation rows); a group's is its std
            row[f"{name}_stderr"] = spec.stderr(first, resolve_split(first, split)) if len(group.results) == 1 else None
    return row


def baseline_index(groups: list[Group], baseline: str) -> int:
    """The row of a run id or repeats group id, of a unique prefix of one, or a 0-based row index."""
    ids = [[str(group.label), *(str(result.get("run_id")) for result in group.results)] for group in groups]
    exact = [i for i, names in enumerate(ids) if baseline in names]
    if exact:
        return exact[0]
    if baseline.isdigit() and int(baseline) < len(groups):
        return int(baseline)
    matches = [i for i, names in enumerate(ids) if any(name.startswith(baseline) for name in names)]
    if len(matches) == 1:
        return matches[0]
    problem = "matches several runs" if matches else "is not a run id, prefix or row index"
    raise ValueError(f"baseline {baseline!r} {problem}. Runs: {', '.join(str(group.label) for group in groups)}")


def _predictions(result: dict[str, Any], path: Path | None, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, predicted class ids) of split from the run's predictions file, or None without them."""
    name = result.get("predictions_file")
    file = None if name is None or path is None else Path(path).parent / name
    if file is None or not file.is_file():
        return None
    with np.load(file) as archive:
        if f"{split}.preds" not in archive:
            return None
        return archive[f"{split}.labels"], archive[f"{split}.preds"]


def paired_predictions(row: Group, base: Group, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(labels, row's predictions, base's predictions) when both rows are single runs that evaluated the
    same data (equal fingerprints of the split) and kept their predictions; else None."""
    if len(row.results) != 1 or len(base.results) != 1:
        return None
    (a, path_a), (b, path_b) = (row.results[0], row.paths[0]), (base.results[0], base.paths[0])
    split_a, split_b = resolve_split(a, split), resolve_split(b, split)
    fingerprint = _dig(a, "training", "data", "fingerprints", split_a)
    if split_a != split_b or fingerprint is None or fingerprint != _dig(b, "training", "data", "fingerprints", split_b):
        return None
    mine, theirs = _predictions(a, path_a, split_a), _predictions(b, path_b, split_b)
    if mine is None or theirs is None or not np.array_equal(mine[0], theirs[0]):  # rows must align one to one
        return None
    return mine[0], mine[1], theirs[1]


def _versus(name: str, row: Group, base: Group, split: str, pair: tuple[np.ndarray, ...] | None) -> dict[str, Any]:
    """The change of one metric against the baseline row, and whether it is beyond noise: a paired test of
    two single runs' predictions where the metric has one, else Welch's t (None unless both rows have 2+ runs)."""
    spec = METRICS[name]
    mean, reference = row.mean(name, split), base.mean(name, split)
    if pair is not None and spec.paired:
        test = spec.paired(*pair)
    else:
        test = stats.welch(row.values(name, split), base.values(name, split))
    delta = None if mean is None or not reference else 100 * (mean - reference) / abs(reference)
    verdict = p_value = ci95 = None
    if test is not None:
        verdict, p_value, ci95 = "significant" if test.significant else "within noise", test.p_value, test.ci95
    return {f"{name}_{suffix}": value for suffix, value in zip(VERSUS, [delta, verdict, p_value, ci95])}


def _compare_with_baseline(
    table: Table, groups: list[Group], index: int, names: list[str], split: str, ratio_of: str
) -> None:
    base = groups[index]
    table.baseline = str(base.label)
    column = f"{ratio_of} vs baseline"
    reference = base.mean(ratio_of, split)
    pairs_tested = any(METRICS[name].paired for name in names)
    for i, (row, group) in enumerate(zip(table.rows, groups)):
        row[column] = _divide(group.mean(ratio_of, split), reference)
        pair = paired_predictions(group, base, split) if pairs_tested and i != index else None
        for name in names:
            if i == index:
                row.update(dict.fromkeys(f"{name}_{suffix}" for suffix in VERSUS))
            else:
                row.update(_versus(name, group, base, split, pair))
    table.columns.append(column)


def _scaling_key(result: dict[str, Any], with_batch: bool = True) -> str:
    """The configuration without the process count and the batch split (labels and seed left out too);
    equal keys, comparable runs. with_batch keeps the global batch in it."""
    ran = {key: _dig(result, "ran", key) for key in ("device", "device_name", "mixed_precision", "attn_implementation")}
    key = {"recipe": settings(result, SCALING_IGNORED), "ran": ran}
    if with_batch:
        key["global_batch_size"] = global_batch_size(result)
    return json.dumps(key, sort_keys=True, default=str)


def _alike(groups: list[Group], key: Callable[[dict[str, Any]], str]) -> list[list[int]]:
    """Indexes of the rows with a throughput, in lists of equal key (of each row's first run)."""
    found: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        if group.mean(THROUGHPUT) is not None:
            found[key(group.results[0])].append(i)
    return list(found.values())


def scaling_efficiency(groups: list[Group]) -> list[float | None]:
    """throughput_N / (N x mean 1-process throughput) among rows of otherwise identical runs at the same
    global batch; a row of several runs counts as their mean."""
    efficiency: list[float | None] = [None] * len(groups)
    for members in _alike(groups, _scaling_key):
        sizes = [world_size(groups[i].results[0]) for i in members]
        single = [groups[i].mean(THROUGHPUT) for i, n in zip(members, sizes) if n == 1]
        if not single or len(set(sizes)) < 2:
            continue
        base = sum(single) / len(single)
        for i, n in zip(members, sizes):
            efficiency[i] = _divide(groups[i].mean(THROUGHPUT), n * base)
    return efficiency


def scaling_notes(groups: list[Group]) -> list[str]:
    """A note for each set of rows that differ in process count but also in global batch, which
    scaling_eff therefore does not compare."""
    notes = []
    for members in _alike(groups, partial(_scaling_key, with_batch=False)):
        firsts = [groups[i].results[0] for i in members]
        runs = list(dict.fromkeys((world_size(result), global_batch_size(result)) for result in firsts))
        if len({size for size, _ in runs}) > 1 and len({batch for _, batch in runs}) > 1:
            recipes = ", ".join(dict.fromkeys(str(result.get("recipe_name")) for result in firsts))
            sizes = " / ".join(f"x{size}" for size, _ in runs)
            batches = " vs ".join(str(batch) for _, batch in runs)
            notes.append(f"scaling_eff: not computed across global batches for {recipes} {sizes}: "
                         f"global batch {batches} — accuracy and speed are confounded")  # fmt: skip
    return notes


def build_table(
    results: list[dict[str, Any]],
    metrics: list[str],
    split: str = "auto",
    baseline: str | None = None,
    ratio_of: str = "train_samples_per_s",
    *,
    per_run: bool = False,
    paths: list[Path] | None = None,
) -> Table:
    """The table of results: per_run shows the runs of a ``--repeats`` launch as rows of their own; paths
    (the result files, in the order of results) locate predictions files for paired tests."""
    names = list(dict.fromkeys(metrics))
    for name in [*names, ratio_of]:
        metric(name)
    groups = group_runs(results, paths, per_run)
    rows = [_row(group, names, split, differs) for group, differs in zip(groups, differences(groups))]
    table = Table([*IDENTITY, COUNT, *names], rows)
    if baseline is not None:
        _compare_with_baseline(table, groups, baseline_index(groups, baseline), names, split, ratio_of)
    efficiency = scaling_efficiency(groups)
    if any(value is not None for value in efficiency):
        for row, value in zip(rows, efficiency):
            row[SCALING] = value
        table.columns.append(SCALING)
    table.notes.extend(scaling_notes(groups))
    return table


def _header(column: str) -> str:
    return f"{column} {METRICS[column].direction}" if column in METRICS else column


def _spread(row: dict[str, Any], name: str) -> float | None:
    """What ± shows: the standard deviation over a row's runs, else a single run's standard error."""
    std = row.get(f"{name}_std")
    return std if std is not None else row.get(f"{name}_stderr")


def _cell(column: str, row: dict[str, Any]) -> str:
    value = row.get(column)
    if value is None:
        return ""
    if column in IDENTITY:
        return str(value).replace("|", "\\|")
    if column == COUNT:
        return str(value)
    spec = METRICS.get(column)
    if spec is None:
        return _ratio(value)
    spread = _spread(row, column)
    text = spec.fmt(value) + ("" if spread is None else f" ± {spec.fmt(spread)}")
    delta = row.get(f"{column}_delta_pct")
    if delta is not None:
        text += f" ({delta:+.1f}%{VERDICT_MARKS.get(row[f'{column}_verdict'], '')})"
    return text


def _legend(table: Table) -> list[str]:
    """Lines saying what ± and the verdict marks mean, for those that appear."""
    names = [column for column in table.columns if column in METRICS]
    shown = {suffix for row in table.rows for name in names for suffix in ("std", "stderr")
             if row.get(name) is not None and row.get(f"{name}_{suffix}") is not None}  # fmt: skip
    meanings = {
        "stderr": "± after a single run's accuracy/F1: standard error on its evaluation split alone (binomial for "
        "accuracy, bootstrap for F1; ignores seed variance)",
        "std": "± in a row of n > 1: standard deviation over its n runs (seeds)",
    }
    lines = ["; ".join(meanings[suffix] for suffix in meanings if suffix in shown)] if shown else []
    if table.baseline is not None:
        lines.append(
            f"(+x.x%) after a value: its change against baseline {table.baseline}; * significant at 95%, ~ within "
            "noise (rows of n > 1: Welch's t over seeds; two single runs' accuracy: McNemar, f1_macro: paired "
            "bootstrap, on their predictions of the same rows); no mark: no verdict (a single run has no seed variance)"
        )
    return lines


def render_markdown(table: Table) -> str:
    """GitHub pipe table; numeric columns right-aligned; then what ± and the marks mean, and the notes."""
    headers = [_header(column) for column in table.columns]
    cells = [[_cell(column, row) for column in table.columns] for row in table.rows]
    widths = [max([3, len(header), *(len(line[i]) for line in cells)]) for i, header in enumerate(headers)]
    numeric = [column not in IDENTITY for column in table.columns]

    def line(values: list[str]) -> str:
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if num else "-" * (w + 2) for w, num in zip(widths, numeric)) + "|"
    text = "\n".join([line(headers), rule, *map(line, cells)]) + "\n"
    below = [*_legend(table), *table.notes]
    return text + "".join(f"\n{note}" for note in below) + ("\n" if below else "")


def _fields(table: Table) -> list[str]:
    """Row keys in column order, each metric followed by its std, stderr and baseline keys."""
    fields = []
    for column in table.columns:
        fields.append(column)
        if column in METRICS:
            fields.append(f"{column}_std")
            if METRICS[column].stderr:
                fields.append(f"{column}_stderr")
            if table.baseline is not None:
                fields.extend(f"{column}_{suffix}" for suffix in VERSUS)
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
    """One horizontal bar chart per metric column as an image, error bars as ± in the table (standard
    deviation over a row's runs, else a single run's standard error); matplotlib is imported only here,
    and an existing file is never replaced."""
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
        errors = [_spread(row, name) or 0.0 for row in table.rows]
        axis.barh(range(len(labels)), values, xerr=errors if any(errors) else None, ecolor="black", capsize=3)
        axis.set_title(_header(name), fontsize=9)
    axes[0][0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0][0].invert_yaxis()  # the first run on top, as in the table (the y axis is shared)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


@dataclass
class LoadedResults:
    """The result files that passed validation with their documents, and what was left out and why."""

    results: list[dict[str, Any]]
    paths: list[Path]
    skipped: list[str] = field(default_factory=list)  # per unusable file, why: "<path>: <what is wrong>"
    ignored: list[Path] = field(default_factory=list)  # JSON files in folders that are not results

    def notes(self) -> list[str]:
        """Lines saying which files have no row and why, so that a missing run is never a mystery."""
        lines = []
        if self.skipped:
            total = len(self.skipped) + len(self.results)
            lines.append(f"skipped {len(self.skipped)} of {_count(total, 'result file')}, no row shown for them:")
            lines.extend(f"- {reason}" for reason in self.skipped)
        if self.ignored:
            names = list(dict.fromkeys(path.name for path in self.ignored))
            shown = ", ".join(names[:4]) + (", …" if len(names) > 4 else "")
            lines.append(f"ignored {_count(len(self.ignored), 'JSON file')} in folders: not harness results ({shown})")
        return lines


def load_results(paths: list[str], strict: bool = False) -> LoadedResults:
    """Every result file under paths that passes validation. A file that fails is skipped and named (with
    strict, an error naming every such file); no readable result at all is an error naming what was skipped."""
    found = scan_result_files(paths)
    loaded = LoadedResults([], [], ignored=found.ignored)
    for path in found.files:
        try:
            loaded.results.append(load_result(path))
            loaded.paths.append(path)
        except ResultFileError as error:
            loaded.skipped.append(str(error))
    reasons = "".join(f"\n  {reason}" for reason in loaded.skipped)
    if strict and loaded.skipped:
        raise ValueError(f"{_count(len(loaded.skipped), 'result file')} cannot be used (strict):{reasons}")
    if not loaded.results:
        message = f"no readable result file in {', '.join(map(str, paths))}"
        if loaded.ignored:
            message += f" ({_count(len(loaded.ignored), 'JSON file')} ignored: not harness results)"
        raise ValueError(message + (f"; skipped:{reasons}" if reasons else ""))
    return loaded


def compare_table(
    paths: list[str],
    metrics: list[str] | None = None,
    split: str = "auto",
    baseline: str | None = None,
    ratio_of: str = "train_samples_per_s",
    *,
    per_run: bool = False,
    strict: bool = False,
) -> Table:
    """The comparison table of the result files named by paths (files or folders); files that cannot be
    used are skipped and named in its notes (see load_results)."""
    loaded = load_results(paths, strict=strict)
    table = build_table(loaded.results, metrics or DEFAULT_METRICS, split, baseline, ratio_of, per_run=per_run,
                        paths=loaded.paths)  # fmt: skip
    table.notes = [*loaded.notes(), *table.notes]
    return table


def compare(paths: list[str], metrics: list[str] | None = None, fmt: str = "markdown", **options: Any) -> str:
    """Load the result files named by paths and render their comparison table."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt](compare_table(paths, metrics, **options))
