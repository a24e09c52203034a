"""Comparison tables over result files: one row per run (or per group of repeated runs), one column per metric.

``build_table`` turns loaded result documents into a ``Table`` of raw values; ``render_markdown``,
``render_csv`` and ``render_json`` print it; ``compare`` does both from paths (files or folders), showing only
files that pass the schema's validation: the others are skipped and named in the notes (``strict``: an error).
Runs launched together by ``harness run --repeats N`` share a row: the mean over their seeds ± the standard
deviation, with ``n`` runs. ``differs`` names the recipe settings that tell the rows apart.
With a baseline row, every metric gets its change against it and a verdict: Welch's t over seeds for rows
of several runs, or, for two single runs' accuracy and macro-F1, a paired test on their predictions of the
same rows; plus ``<metric> vs baseline`` (a ratio). A row that differs from the baseline only in speed settings
gets a quality guard: how often the two runs predict the same class, Cohen's kappa, and whether the speed-up
changed accuracy or F1 beyond noise. ``scaling_eff`` is the throughput over N x the 1-process throughput, for
rows at the same global batch whose configuration differs only in process count. Costs are derived here from
GPU prices (``harness.prices``), never stored in result files.
``build_pivot`` lays one metric out by settings instead (a row per value of some keys, a column per value of
others). The charts (bars with the table's error bars, throughput against peak memory) are in harness.charts.
This module loads numpy only (no torch, pandas, scipy or scikit-learn), so it answers instantly; scipy
is imported for verdicts.

    harness compare results/ --baseline 0 --metrics train_samples_per_s,f1_macro
    harness compare results/ --rows model.name --cols precision.dtype --baseline fp32
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from harness import stats
from harness.prices import Prices, load_prices
from harness.results import ResultFileError, load_result, scan_result_files

Getter = Callable[[dict[str, Any], str], Any]  # (result document, accuracy split) -> value or None
PairedTest = Callable[[np.ndarray, np.ndarray, np.ndarray], stats.Comparison]  # (labels, preds a, preds b)


def dig(document: Any, *keys: str) -> Any:
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
    median: bool = False  # a row of several runs shows the median and range (time to target), not mean ± std


def _speed(key: str, direction: str, fmt: Callable[[float], str]) -> Metric:
    return Metric(lambda result, split: dig(result, "speed", key), direction, fmt)


def _gib(*keys: str) -> Metric:
    """Memory in GiB: the first of keys (byte counts) that the run recorded."""

    def get(result: dict[str, Any], split: str) -> float | None:
        value = next((value for key in keys if (value := dig(result, "memory", key)) is not None), None)
        return None if value is None else value / 2**30

    return Metric(get, "↓", _significant)


def _derived(key: str, median: bool = False) -> Metric:
    """A value compare derives (with_costs), not one the result file holds."""
    return Metric(lambda result, split: dig(result, "derived", key), "↓", _significant, median=median)


def _to_target(key: str) -> Metric:
    """What reaching train.target took (null when the run never reached it): a median over repeats."""
    return Metric(lambda result, split: dig(result, "training", "target", key), "↓", _significant, median=True)


def _accuracy(key: str, with_stderr: bool = False, paired: PairedTest | None = None) -> Metric:
    def getter(name: str) -> Getter:
        return lambda result, split: dig(result, "accuracy", split, name)

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
    "peak_memory_gib": _gib("cuda_peak_allocated_bytes", "peak_host_rss_bytes"),  # CUDA's, else the host's (CPU)
    "cost_usd": _derived("cost_usd"),
    "usd_per_million_samples": _derived("usd_per_million_samples"),
    "joules_per_sample": _speed("joules_per_sample", "↓", _significant),
    "time_to_target_s": _to_target("train_wall_s"),
    "samples_to_target": _to_target("samples"),
    "energy_to_target_j": _to_target("energy_j"),
    "cost_to_target_usd": _derived("cost_to_target_usd", median=True),
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
COST_METRICS = ["cost_usd", "usd_per_million_samples"]
PAIRED = [name for name, spec in METRICS.items() if spec.paired]  # accuracy and macro-F1: what the guard judges
GUARD_COLUMNS = ["agreement", "kappa", "guard"]
TEXT = (*IDENTITY, "guard")  # columns of words, left-aligned
FORMATS = {"agreement": _fraction, "kappa": _fraction}  # number columns that are no metric (others: _ratio)

# Recipe settings that never tell runs apart: labels, where files go, the Modal GPU request (ran has the device)
IGNORED = ("name", "description", "output", "hardware.gpu")
SEEDLESS = (*IGNORED, "train.seed")  # ...and the seed, for what repeats share
# How the global batch is split into micro-batches and processes, which scaling does not compare
BATCH_SPLIT = ("train.batch_size", "train.gradient_accumulation_steps", "hardware.num_processes")
SCALING_IGNORED = (*SEEDLESS, *BATCH_SPLIT)
# Settings that change how fast a run trains (or what it logs), not which model training should reach: a row that
# differs from the baseline in these alone (the seed aside; BATCH_SPLIT at an equal global batch) gets the guard
SPEED_SETTINGS = (
    "precision.dtype", "precision.tf32", "model.attn_implementation", "model.attn_fallback", "train.compile",
    "train.gradient_checkpointing", "train.fused", "train.eval_batch_size", "train.log_every_steps", "train.report_to",
    "data.packing", "data.length_buckets", "data.pad_to_multiple_of", "data.num_workers", "data.pin_memory",
    "data.padding", "data.group_by_length", "hardware.device", "hardware.num_machines", "hardware.deepspeed",
    "hardware.fsdp", "hardware.offload", "hardware.collective_timeout_s", "hardware.timeout_hours",
    "collector.warmup_steps",
)  # fmt: skip
SHORT_NAMES = {"train.seed": "seed"}


@dataclass
class Table:
    """Raw values. ``columns`` are row keys in display order. Every metric also has ``<name>_std`` (over a
    row's runs, None for one run) and, where it has one, ``<name>_stderr`` (a single run's own standard
    error); with a baseline, ``<name>_delta_pct``, ``_verdict``, ``_p_value`` and ``_diff_ci95`` too, and on the
    rows that differ from it in speed settings only, the quality guard's ``agreement``, ``kappa`` and ``guard``."""

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


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """A hint naming the closest valid name, a dotted key ending in name first: " (did you mean 'x'?)", else ""."""
    valid = list(valid)
    close = [key for key in valid if key.endswith(f".{name}")] or difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def metric(name: str) -> Metric:
    if name in METRICS:
        return METRICS[name]
    raise ValueError(f"unknown metric {name!r}{did_you_mean(name, METRICS)}. Valid metrics: {', '.join(METRICS)}")


def resolve_split(result: dict[str, Any], split: str) -> str:
    if split != "auto":
        return split
    return "test" if "test" in (result.get("accuracy") or {}) else "validation"


def world_size(result: dict[str, Any]) -> int:
    return dig(result, "ran", "world_size") or dig(result, "recipe", "hardware", "num_processes") or 1


def global_batch_size(result: dict[str, Any]) -> int | None:
    """Samples per optimizer step over all processes, as recorded, else from the recipe."""
    recorded = dig(result, "ran", "global_batch_size")
    if recorded is not None:
        return recorded
    train = dig(result, "recipe", "train") or {}
    if train.get("batch_size") is None:
        return None
    return train["batch_size"] * (train.get("gradient_accumulation_steps") or 1) * world_size(result)


def with_costs(result: dict[str, Any], prices: Prices) -> dict[str, Any]:
    """A shallow copy of result with ``derived`` costs: result files hold no prices, which change. cost_usd is the
    whole run (price x GPUs x total_wall_s), usd_per_million_samples the measured training rate's; None without a
    price for the device (CPUs have none) or without the time."""
    price, gpus = prices.price(dig(result, "ran", "device_name")), world_size(result)
    wall, rate = dig(result, "speed", "total_wall_s"), dig(result, "speed", "train_samples_per_s")
    to_target = dig(result, "training", "target", "train_wall_s")
    derived = {
        "cost_usd": None if price is None or wall is None else price * gpus * wall / 3600,
        "usd_per_million_samples": None if price is None or not rate else price * gpus / 3600 / rate * 1e6,
        "cost_to_target_usd": None if price is None or to_target is None else price * gpus * to_target / 3600,
    }
    return {**result, "derived": derived}


def cost_notes(results: list[dict[str, Any]], prices: Prices) -> list[str]:
    """Where the prices behind the cost columns came from, and which completed runs have no cost and why."""
    completed = [result for result in results if result.get("status") == "completed"]
    devices = [dig(result, "ran", "device_name") for result in completed]
    by_origin: dict[str, list[str]] = defaultdict(list)
    for device in dict.fromkeys(device for device in devices if prices.price(device) is not None):
        by_origin[prices.origin(device)].append(device)
    lines = [f"cost: USD per GPU-hour for {', '.join(names)} from {origin}" for origin, names in by_origin.items()]
    if by_origin:
        lines.append("cost: prices change; check them (--prices FILE.json or --price 'DEVICE=USD_PER_HOUR' override)")
    cpu_runs = sum(1 for device in devices if not device)
    if cpu_runs:
        lines.append(f"cost: null for {counted(cpu_runs, 'run')} without a GPU (CPU): no GPU price applies")
    for device, count in Counter(device for device in devices if device and prices.price(device) is None).items():
        lines.append(f"cost: null for {counted(count, 'run')} on {device!r}, which has no price: "
                     f"add --price '{device}=USD_PER_HOUR'")  # fmt: skip
    return lines


def setup(result: dict[str, Any]) -> str:
    """Short description of what ran, for example "cuda bf16 sdpa x4"."""
    ran = result.get("ran") or {}
    dtype = "fp32" if ran.get("mixed_precision") == "no" else ran.get("mixed_precision")
    parts = [
        ran.get("device") or dig(result, "recipe", "hardware", "device"),
        dtype or dig(result, "recipe", "precision", "dtype"),
        ran.get("attn_implementation") or dig(result, "recipe", "model", "attn_implementation"),
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


def _yaml_style(flat: dict[str, Any]) -> dict[str, str]:
    """Values as YAML writes them (``false``, ``null``, ``[1, 2]``); strings as they are."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in flat.items()}


def settings(result: dict[str, Any], ignore: tuple[str, ...] = IGNORED) -> dict[str, str]:
    """The recipe as dotted keys (``train.seed``) with YAML-style values (``false``, ``null``), without the
    keys in ignore and those below them."""
    flat = _flatten(result.get("recipe") or {})
    kept = (key for key in flat if not any(key == skip or key.startswith(f"{skip}.") for skip in ignore))
    return _yaml_style({key: flat[key] for key in kept})


def pivot_settings(result: dict[str, Any]) -> dict[str, str]:
    """What a pivot can lay runs out by: every recipe setting (labels too) and every ``ran.`` field."""
    return {**settings(result, ignore=()), **_yaml_style(_flatten(result.get("ran") or {}, "ran."))}


def varying_settings(groups: list[Group]) -> list[dict[str, str]]:
    """Per row, the recipe settings whose value varies across the rows, in recipe order. A setting that varies
    inside a repeats group (its seeds) has no single value there and is not compared."""
    described = [[settings(result) for result in group.results] for group in groups]
    keys = dict.fromkeys(key for runs in described for run in runs for key in run)
    found = [{key: {run.get(key) for run in runs} for key in keys} for runs in described]  # None: not set
    fixed = [{key: next(iter(values)) for key, values in row.items() if len(values) == 1} for row in found]
    varying = [key for key in keys if len({row[key] for row in fixed if key in row}) > 1]
    return [{key: row[key] for key in varying if row.get(key) is not None} for row in fixed]


def differences(groups: list[Group]) -> list[str]:
    """Per row, ``key=value`` for every recipe setting whose value varies across the rows ("" if none does)."""
    return [", ".join(f"{SHORT_NAMES.get(key, key)}={value}" for key, value in row.items())
            for row in varying_settings(groups)]  # fmt: skip


def group_runs(results: list[dict[str, Any]], paths: list[Path] | None = None, per_run: bool = False) -> list[Group]:
    """Completed runs of one ``--repeats`` launch share a Group (unless per_run); every other run is its own,
    failed ones included, so their ids (which name their logs) stay visible. First-seen order."""
    groups: dict[tuple[str, Any], Group] = {}
    for i, (result, path) in enumerate(zip(results, paths or [None] * len(results))):
        repeats = dig(result, "repeats", "group")
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
        if spec.median and values:  # runs that never reached the target have no value: say how many did
            row[name], row[f"{name}_std"] = float(np.median(values)), None
            row[f"{name}_range"] = [min(values), max(values)] if len(values) > 1 else None
            row[f"{name}_reached"] = f"{len(values)}/{len(group.results)}"
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
    fingerprint = dig(a, "training", "data", "fingerprints", split_a)
    if split_a != split_b or fingerprint is None or fingerprint != dig(b, "training", "data", "fingerprints", split_b):
        return None
    mine, theirs = _predictions(a, path_a, split_a), _predictions(b, path_b, split_b)
    if mine is None or theirs is None or not np.array_equal(mine[0], theirs[0]):  # rows must align one to one
        return None
    return mine[0], mine[1], theirs[1]


Pair = tuple[np.ndarray, np.ndarray, np.ndarray]  # labels, a row's predictions, the baseline's, of the same rows


def _test(name: str, row: Group, base: Group, split: str, pair: Pair | None) -> stats.Comparison | None:
    """Whether one metric differs between two rows beyond noise: a paired test of two single runs' predictions
    where the metric has one, else Welch's t over seeds (None unless both rows have 2+ runs)."""
    spec = METRICS[name]
    if pair is not None and spec.paired:
        return spec.paired(*pair)
    return stats.welch(row.values(name, split), base.values(name, split))


def _versus(name: str, row: Group, base: Group, split: str, test: stats.Comparison | None) -> dict[str, Any]:
    """The change of one metric against the baseline row, and the verdict of its test: by VERSUS suffix."""
    mean, reference = row.mean(name, split), base.mean(name, split)
    delta = None if mean is None or not reference else 100 * (mean - reference) / abs(reference)
    verdict = p_value = ci95 = None
    if test is not None:
        verdict, p_value, ci95 = "significant" if test.significant else "within noise", test.p_value, test.ci95
    return dict(zip(VERSUS, [delta, verdict, p_value, ci95]))


def speed_only(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two runs' recipes differ in SPEED_SETTINGS alone (the seed aside), the batch split included only at
    an equal global batch: runs that should reach the same model, up to noise."""
    mine, theirs = settings(a, SEEDLESS), settings(b, SEEDLESS)
    changed = {key for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key)}
    if not changed <= {*SPEED_SETTINGS, *BATCH_SPLIT}:
        return False
    return changed.isdisjoint(BATCH_SPLIT) or global_batch_size(a) == global_batch_size(b)


def _guarded(row: Group, base: Group) -> bool:
    """The guard judges completed rows that differ from the baseline in speed settings only."""
    completed = all(group.results[0].get("status") == "completed" for group in (row, base))
    return completed and speed_only(row.results[0], base.results[0])


def _points(fraction: float) -> str:
    """A difference of fractions in percentage points, with a real minus sign: "−2.1"."""
    return f"{100 * fraction:+.1f}".replace("-", "−")


def _change(name: str, test: stats.Comparison) -> str:
    """What changed and the evidence: accuracy −2.1 pts, p=0.003; the interval where a test has no p-value."""
    if test.p_value is None:
        evidence = f"95% CI {_points(test.ci95[0])} to {_points(test.ci95[1])}"
    else:
        evidence = "p<0.001" if test.p_value < 0.001 else f"p={test.p_value:.3f}"
    return f"{name} {_points(test.difference)} pts, {evidence}"


def quality_guard(pair: Pair | None, tests: dict[str, stats.Comparison | None]) -> dict[str, Any]:
    """agreement (the share of rows both runs predict alike), Cohen's kappa of their predictions, and the guard's
    note: "changed" when a test of PAIRED finds accuracy or F1 moved beyond noise; no note without any test
    (no predictions of the same rows, no repeats)."""
    agreement = kappa = note = None
    if pair is not None:
        _, mine, theirs = pair
        agreement, kappa = float(np.mean(mine == theirs)), stats.cohen_kappa(mine, theirs)
    changed = [_change(name, test) for name, test in tests.items() if test is not None and test.significant]
    if changed:
        note = "changed: " + "; ".join(changed)
    elif any(test is not None for test in tests.values()):
        note = "same model within noise"
    return dict(zip(GUARD_COLUMNS, [agreement, kappa, note]))


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
        if i == index:
            row.update(dict.fromkeys(f"{name}_{suffix}" for name in names for suffix in VERSUS))
            continue
        guarded = _guarded(group, base)
        pair = paired_predictions(group, base, split) if pairs_tested or guarded else None
        tests = {name: _test(name, group, base, split, pair) for name in [*names, *(PAIRED if guarded else [])]}
        for name in names:
            versus = _versus(name, group, base, split, tests[name])
            row.update({f"{name}_{suffix}": value for suffix, value in versus.items()})
        if guarded:
            row.update(quality_guard(pair, {name: tests[name] for name in PAIRED}))
    table.columns.append(column)
    if any(row.get("guard") for row in table.rows):
        table.columns.extend(GUARD_COLUMNS)


def _scaling_key(result: dict[str, Any], with_batch: bool = True) -> str:
    """The configuration without the process count and the batch split (labels and seed left out too);
    equal keys, comparable runs. with_batch keeps the global batch in it."""
    ran = {key: dig(result, "ran", key) for key in ("device", "device_name", "mixed_precision", "attn_implementation")}
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
    prices: Prices | None = None,
) -> Table:
    """The table of results: per_run shows the runs of a ``--repeats`` launch as rows of their own; paths
    (the result files, in the order of results) locate predictions files for paired tests; prices (default: the
    shipped table) price the cost columns."""
    names = list(dict.fromkeys(metrics))
    for name in [*names, ratio_of]:
        metric(name)
    prices = prices or load_prices()
    results = [with_costs(result, prices) for result in results]
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
    if not set(COST_METRICS).isdisjoint([*names, ratio_of]):
        table.notes.extend(cost_notes(results, prices))
    return table


def column_header(column: str) -> str:
    return f"{column} {METRICS[column].direction}" if column in METRICS else column


def _spread(row: dict[str, Any], name: str) -> float | None:
    """What ± shows: the standard deviation over a row's runs, else a single run's standard error."""
    std = row.get(f"{name}_std")
    return std if std is not None else row.get(f"{name}_stderr")


def _escape(text: Any) -> str:
    """Text for a markdown cell: a pipe would end it."""
    return str(text).replace("|", "\\|")


def cell_text(column: str, row: dict[str, Any]) -> str:
    value = row.get(column)
    if value is None:
        return ""
    if column in TEXT:
        return _escape(value)
    if column == COUNT:
        return str(value)
    spec = METRICS.get(column)
    if spec is None:
        return FORMATS.get(column, _ratio)(value)
    spread, span = _spread(row, column), row.get(f"{column}_range")
    text = spec.fmt(value) + ("" if spread is None else f" ± {spec.fmt(spread)}")
    if span:
        text += f" [{spec.fmt(span[0])}, {spec.fmt(span[1])}]"
    if spec.median and row.get(COUNT, 1) > 1:
        text += f" ({row[f'{column}_reached']} reached)"
    delta = row.get(f"{column}_delta_pct")
    if delta is not None:
        text += f" ({_delta(delta, row[f'{column}_verdict'])})"
    return text


def _delta(percent: float, verdict: str | None) -> str:
    """A change against the baseline with its verdict's mark: +4.5% ~."""
    return f"{percent:+.1f}%{VERDICT_MARKS.get(verdict, '')}"


def legend_lines(table: Table) -> list[str]:
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
    if any(row.get(f"{name}_range") for row in table.rows for name in names):
        lines.append("[a, b] after a *_to_target value: the median over a row's runs that reached train.target, "
                     "and their range; (k/n reached): how many of the row's n runs reached it")  # fmt: skip
    if table.baseline is not None:
        lines.append(
            f"(+x.x%) after a value: its change against baseline {table.baseline}; * significant at 95%, ~ within "
            "noise (rows of n > 1: Welch's t over seeds; two single runs' accuracy: McNemar, f1_macro: paired "
            "bootstrap, on their predictions of the same rows); no mark: no verdict (a single run has no seed variance)"
        )
    if "guard" in table.columns:
        lines.append(
            "guard (rows that differ from the baseline in speed settings only): agreement = share of test examples "
            "predicted alike, kappa = Cohen's kappa of the two predictions; changed = accuracy or f1_macro differs "
            "beyond noise (tests as above)"
        )
    return lines


def _pipe_table(headers: list[str], cells: list[list[str]], numeric: list[bool], below: list[str]) -> str:
    """A GitHub pipe table, numeric columns right-aligned, then the lines below it after a blank line."""
    widths = [max([3, len(header), *(len(line[i]) for line in cells)]) for i, header in enumerate(headers)]

    def line(values: list[str]) -> str:
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if num else "-" * (w + 2) for w, num in zip(widths, numeric)) + "|"
    text = "\n".join([line(headers), rule, *map(line, cells)]) + "\n"
    return text + "".join(f"\n{note}" for note in below) + ("\n" if below else "")


def render_markdown(table: Table) -> str:
    """GitHub pipe table; numeric columns right-aligned; then what ± and the marks mean, and the notes."""
    cells = [[cell_text(column, row) for column in table.columns] for row in table.rows]
    numeric = [column not in TEXT for column in table.columns]
    return _pipe_table([column_header(column) for column in table.columns], cells, numeric, [*legend_lines(table), *table.notes])


def _fields(table: Table) -> list[str]:
    """Row keys in column order, each metric followed by its std, stderr and baseline keys."""
    fields = []
    for column in table.columns:
        fields.append(column)
        if column in METRICS:
            fields.append(f"{column}_std")
            if METRICS[column].stderr:
                fields.append(f"{column}_stderr")
            if METRICS[column].median:
                fields.extend([f"{column}_range", f"{column}_reached"])
            if table.baseline is not None:
                fields.extend(f"{column}_{suffix}" for suffix in VERSUS)
    return fields


def _csv_text(fields: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def render_csv(table: Table) -> str:
    return _csv_text(_fields(table), table.rows)


def render_json(table: Table | Pivot) -> str:
    return json.dumps(table.rows, indent=2, ensure_ascii=False) + "\n"


RENDERERS: dict[str, Callable[[Table], str]] = {
    "markdown": render_markdown,
    "csv": render_csv,
    "json": render_json,
}


@dataclass
class Pivot:
    """One metric laid out by settings: a row per value of the ``rows_by`` keys, a column per value of the
    ``cols_by`` keys (labelled by the values joined with "/"). ``rows`` hold raw values: the row's key values,
    then per column label the mean of the cell's runs, ``<label>_std`` over them and ``<label>_n``; with a
    baseline, ``<label>_delta_pct``, ``_verdict``, ``_p_value`` and ``_diff_ci95`` too."""

    value: str  # the metric
    rows_by: list[str]
    cols_by: list[str]
    columns: list[str]  # the column labels, in order
    rows: list[dict[str, Any]]
    baseline: str | None = None  # a column label (each cell against its row's cell there) or a row label
    baseline_axis: str | None = None  # "column" or "row": which of them baseline names
    notes: list[str] = field(default_factory=list)


def _natural(labels: tuple[str, ...]) -> list[tuple[int, float, str]]:
    """Sort key of a row or column: numbers by value (8 before 16) before words, which go alphabetically."""
    key = []
    for label in labels:
        try:
            key.append((0, float(label), ""))
        except ValueError:
            key.append((1, 0.0, label))
    return key


def _check_keys(option: str, keys: list[str], described: list[dict[str, str]]) -> None:
    """An unknown key is an error naming the closest known one and the keys whose values vary across the runs."""
    known = list(dict.fromkeys(key for run in described for key in run))
    for key in keys:
        if key not in known:
            varying = [name for name in known if len({run.get(name) for run in described}) > 1]
            raise ValueError(f"{option}: unknown key {key!r}{did_you_mean(key, known)}; keys that vary across "
                             f"these runs: {', '.join(varying) or 'none'}")  # fmt: skip


def _pivot_cells(
    runs: list[tuple[dict[str, Any], Path | None]], rows_by: list[str], cols_by: list[str], value: str, split: str
) -> dict[tuple[tuple[str, ...], tuple[str, ...]], Group]:
    """(row values, column values) -> the runs that have the metric there."""
    cells: dict[tuple[tuple[str, ...], tuple[str, ...]], Group] = {}
    for result, path in runs:
        if METRICS[value].get(result, resolve_split(result, split)) is None:
            continue
        described = pivot_settings(result)
        row, column = (tuple(described.get(key, "null") for key in keys) for keys in (rows_by, cols_by))
        cell = cells.setdefault((row, column), Group("/".join([*row, *column]), [], []))
        cell.results.append(result)
        cell.paths.append(path)
    return cells


def _pivot_baseline(baseline: str, rows: dict[str, Any], columns: dict[str, Any]) -> tuple[str, Any]:
    """("column" or "row", its key) of the label baseline names; an error lists the labels."""
    found = [(axis, labels[baseline]) for axis, labels in (("column", columns), ("row", rows)) if baseline in labels]
    if len(found) == 1:
        return found[0]
    if found:
        raise ValueError(f"baseline {baseline!r} names a column and a row of the pivot; rename one with --rows/--cols")
    raise ValueError(f"baseline {baseline!r} is neither a column ({', '.join(columns)}) nor a row "
                     f"({', '.join(rows)}) of the pivot{did_you_mean(baseline, [*columns, *rows])}")  # fmt: skip


def _pivot_versus(
    pivot: Pivot, cells: dict[tuple, Group], baseline: str, row_keys: list[tuple], labels: dict[tuple, str], split: str
) -> None:
    """Each cell's change against the baseline cell of its row (baseline names a column) or of its column (a
    row), with the verdict of the table's tests."""
    pivot.baseline = baseline
    pivot.baseline_axis, reference = _pivot_baseline(baseline, {"/".join(row): row for row in row_keys},
                                                      {label: column for column, label in labels.items()})  # fmt: skip
    for row_key, row in zip(row_keys, pivot.rows):
        for column, label in labels.items():
            cell = cells.get((row_key, column))
            base = cells.get((row_key, reference) if pivot.baseline_axis == "column" else (reference, column))
            versus = dict.fromkeys(VERSUS)
            if cell is not None and base is not None and cell is not base:
                pair = paired_predictions(cell, base, split) if METRICS[pivot.value].paired else None
                versus = _versus(pivot.value, cell, base, split, _test(pivot.value, cell, base, split, pair))
            row.update({f"{label}_{suffix}": item for suffix, item in versus.items()})


def mixed_settings(cells: Iterable[Group], keys: list[str]) -> list[str]:
    """Settings (the seed aside) and devices that vary among the runs of one cell, other than keys: such a cell's
    mean spans several setups."""
    mixed: dict[str, None] = {}
    for cell in cells:
        described = [{**settings(result, SEEDLESS), "ran.device_name": str(dig(result, "ran", "device_name"))}
                     for result in cell.results]  # fmt: skip
        for name in dict.fromkeys(name for run in described for name in run):
            if name not in keys and len({run.get(name) for run in described}) > 1:
                mixed[name] = None
    return list(mixed)


def build_pivot(
    results: list[dict[str, Any]],
    rows_by: list[str],
    cols_by: list[str],
    value: str = THROUGHPUT,
    split: str = "auto",
    baseline: str | None = None,
    *,
    paths: list[Path] | None = None,
    prices: Prices | None = None,
) -> Pivot:
    """One metric by settings: every completed run that has it goes to the cell of its values of rows_by x cols_by
    (keys of pivot_settings: recipe keys and ``ran.`` fields); a cell holds their mean ± std and n. baseline names
    a column (each cell against its row's cell there) or a row (against its column's); verdicts as in the table."""
    metric(value)
    if not rows_by and not cols_by:
        raise ValueError("a pivot needs --rows or --cols: dotted setting keys such as model.name or precision.dtype")
    described = [pivot_settings(result) for result in results]
    for option, keys in (("--rows", rows_by), ("--cols", cols_by)):
        _check_keys(option, keys, described)
    prices = prices or load_prices()
    runs = [(with_costs(result, prices), path) for result, path in zip(results, paths or [None] * len(results))
            if result.get("status") == "completed"]  # fmt: skip
    cells = _pivot_cells(runs, rows_by, cols_by, value, split)
    row_keys = sorted({row for row, _ in cells}, key=_natural)
    labels = {column: "/".join(column) or value for column in sorted({column for _, column in cells}, key=_natural)}
    pivot = Pivot(value, rows_by, cols_by, list(labels.values()), [dict(zip(rows_by, row)) for row in row_keys])
    for row_key, row in zip(row_keys, pivot.rows):
        for column, label in labels.items():
            values = cells[row_key, column].values(value, split) if (row_key, column) in cells else []
            mean, std = stats.mean_std(values) if values else (None, None)
            row.update({label: mean, f"{label}_std": std, f"{label}_n": len(values)})
    if baseline is not None:
        _pivot_versus(pivot, cells, baseline, row_keys, labels, split)
    if not cells:
        pivot.notes.append(f"no completed run has {value}")
    mixed = mixed_settings(cells.values(), [*rows_by, *cols_by])
    if mixed:
        pivot.notes.append(f"cells mix runs that differ in {', '.join(mixed)}: their mean ± std spans those setups "
                           "(add the keys to --rows or --cols to tell them apart)")  # fmt: skip
    if value in COST_METRICS:
        pivot.notes.extend(cost_notes([result for result, _ in runs], prices))
    return pivot


def _pivot_cell(pivot: Pivot, row: dict[str, Any], label: str) -> str:
    """Mean ± std over the cell's runs, their count, the change and its verdict: 140.0 ± 10.0 (n=3, +27.3% *)."""
    mean, std = row.get(label), row.get(f"{label}_std")
    if mean is None:
        return ""
    fmt = METRICS[pivot.value].fmt
    details = [f"n={row[f'{label}_n']}"]
    if row.get(f"{label}_delta_pct") is not None:
        details.append(_delta(row[f"{label}_delta_pct"], row[f"{label}_verdict"]))
    return fmt(mean) + ("" if std is None else f" ± {fmt(std)}") + f" ({', '.join(details)})"


def _pivot_legend(pivot: Pivot) -> list[str]:
    """What the cells hold, and what the changes are measured against."""
    axes = ((pivot.rows_by, "rows"), (pivot.cols_by, "columns"))
    by = " and ".join(f"{' / '.join(keys)} ({axis})" for keys, axis in axes if keys)
    cells = f"{pivot.value} {METRICS[pivot.value].direction} by {by}: mean ± standard deviation over a cell's runs"
    lines = [f"{cells} (n runs)"]
    if pivot.baseline is not None:
        along = "row" if pivot.baseline_axis == "column" else "column"
        lines.append(
            f"(+x.x%): change against the cell of {pivot.baseline} in the same {along}; * significant at 95%, ~ within "
            "noise (n > 1 a side: Welch's t over the runs; two single runs' accuracy: McNemar, f1_macro: paired "
            "bootstrap, on their predictions of the same rows); no mark: no verdict"
        )
    return lines


def render_pivot_markdown(pivot: Pivot) -> str:
    cells = [[_escape(row[key]) for key in pivot.rows_by] + [_pivot_cell(pivot, row, label) for label in pivot.columns]
             for row in pivot.rows]  # fmt: skip
    numeric = [False] * len(pivot.rows_by) + [True] * len(pivot.columns)
    return _pipe_table([*pivot.rows_by, *pivot.columns], cells, numeric, [*_pivot_legend(pivot), *pivot.notes])


def render_pivot_csv(pivot: Pivot) -> str:
    suffixes = ["", "_std", "_n", *(f"_{suffix}" for suffix in VERSUS if pivot.baseline is not None)]
    return _csv_text([*pivot.rows_by, *(label + suffix for label in pivot.columns for suffix in suffixes)], pivot.rows)


PIVOT_RENDERERS: dict[str, Callable[[Pivot], str]] = {
    "markdown": render_pivot_markdown,
    "csv": render_pivot_csv,
    "json": render_json,
}


def counted(number: int, noun: str) -> str:
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
            lines.append(f"skipped {len(self.skipped)} of {counted(total, 'result file')}, no row shown for them:")
            lines.extend(f"- {reason}" for reason in self.skipped)
        if self.ignored:
            names = list(dict.fromkeys(path.name for path in self.ignored))
            shown = ", ".join(names[:4]) + (", …" if len(names) > 4 else "")
            lines.append(f"ignored {counted(len(self.ignored), 'JSON file')} in folders: not harness results ({shown})")
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
        raise ValueError(f"{counted(len(loaded.skipped), 'result file')} cannot be used (strict):{reasons}")
    if not loaded.results:
        message = f"no readable result file in {', '.join(map(str, paths))}"
        if loaded.ignored:
            message += f" ({counted(len(loaded.ignored), 'JSON file')} ignored: not harness results)"
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
    prices: Prices | None = None,
) -> Table:
    """The comparison table of the result files named by paths (files or folders); files that cannot be
    used are skipped and named in its notes (see load_results)."""
    loaded = load_results(paths, strict=strict)
    table = build_table(loaded.results, metrics or DEFAULT_METRICS, split, baseline, ratio_of, per_run=per_run,
                        paths=loaded.paths, prices=prices)  # fmt: skip
    table.notes = [*loaded.notes(), *table.notes]
    return table


def pivot_table(
    paths: list[str],
    rows_by: list[str],
    cols_by: list[str],
    value: str = THROUGHPUT,
    split: str = "auto",
    baseline: str | None = None,
    *,
    strict: bool = False,
    prices: Prices | None = None,
) -> Pivot:
    """The pivot (see build_pivot) of the result files named by paths; unusable files are named in its notes."""
    loaded = load_results(paths, strict=strict)
    pivot = build_pivot(loaded.results, rows_by, cols_by, value, split, baseline, paths=loaded.paths, prices=prices)
    pivot.notes = [*loaded.notes(), *pivot.notes]
    return pivot


def compare(paths: list[str], metrics: list[str] | None = None, fmt: str = "markdown", **options: Any) -> str:
    """Load the result files named by paths and render their comparison table."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt](compare_table(paths, metrics, **options))
