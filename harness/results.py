"""The result file: one JSON document per run, versioned schema, written atomically, never overwritten.

The schema is documented in docs/results-schema.md; bump SCHEMA_VERSION's minor number when a field is
added, its major number when a field changes meaning or is removed. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import IO, Any, Literal, Union, get_args, get_origin, get_type_hints

from harness.errors import HarnessError

SCHEMA_VERSION = "2.2"


@dataclass
class SpeedReport:
    """Throughput and latency. Rates are global (all processes) and count each training sample once; the
    warm-up steps' time is estimated from the measured steps (harness/collector.py, docs/results-schema.md)."""

    warmup_steps: int  # optimizer steps whose time is not measured (their work is charged at the steady rate)
    measured_steps: int
    train_samples_per_s: float | None  # first-time samples / steady-state training seconds
    train_real_tokens_per_s: float | None  # their tokens with attention_mask == 1
    train_padded_tokens_per_s: float | None  # every position the model computed, pads and repeats included
    padding_efficiency: float | None  # real / padded tokens over all training steps
    step_time_mean_s: float | None  # over measured steps
    step_time_p50_s: float | None
    step_time_p90_s: float | None
    time_to_first_step_s: float | None  # from the start of the run (before data loading) to step 1 done
    train_wall_s: float  # the training loop's wall time, evaluations included
    eval_samples_per_s: float | None  # of the final evaluation: the test split, else validation
    total_wall_s: float
    train_samples_per_s_wall: float | None = None  # first-time samples / train_wall_s: the rate a user lives with
    repeated_samples: int = 0  # repeats that evened out the last round over several processes (not in samples)
    data_wait_fraction: float | None = None  # share of the measured steps' time spent waiting for batches
    train_samples_per_s_per_device: float | None = None
    model_flops_per_step_mean: float | None = None  # real-token FLOPs, see docs/results-schema.md
    achieved_flops_per_s: float | None = None
    peak_flops_per_s_per_device: float | None = None  # null when the device's peak is not known
    mfu: float | None = None  # achieved / (peak x world size); null when the peak is not known
    energy_j: float | None = None  # GPU energy of the measured window, all GPUs (NVML); null on CPU or without NVML
    joules_per_sample: float | None = None  # energy_j / the training samples of the measured steps


@dataclass
class MemoryReport:
    peak_host_rss_bytes: int  # max resident set size of this process (main process)
    cuda_peak_allocated_bytes: int | None = None  # torch.cuda.max_memory_allocated
    cuda_peak_reserved_bytes: int | None = None  # torch.cuda.max_memory_reserved
    per_rank: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunResult:
    run_id: str
    kind: Literal["train", "eval"]
    status: Literal["completed", "failed", "interrupted"]
    recipe_name: str
    recipe_hash: str
    recipe: dict[str, Any]
    started_at: str
    finished_at: str
    ran: dict[str, Any] = field(default_factory=dict)  # what actually ran: device, dtypes, attention, world size
    speed: SpeedReport | None = None
    memory: MemoryReport | None = None
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> metrics
    training: dict[str, Any] = field(default_factory=dict)  # loss curve, eval history, best checkpoint
    environment: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    repeats: dict[str, Any] | None = None  # {group, index, count} for runs of `harness run --repeats N`
    predictions_file: str | None = None  # beside this file: per-example test/validation predictions (.npz)
    schema_version: str = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id(recipe_name: str) -> str:
    """Sortable and unique: UTC time to the second plus 6 random hex digits."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{recipe_name}-{secrets.token_hex(3)}"


def write_new_file(path: Path, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Write a file atomically; fail rather than replace a file that exists.

    The bytes go to a temporary file in the same folder, are flushed to disk, then hard-linked to the
    final name: link() is atomic and refuses an existing name, so a reader never sees half a file and
    an earlier run is never overwritten.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path


def write_new_json(path: Path, document: dict[str, Any]) -> Path:
    def dump(handle: IO) -> None:
        json.dump(document, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")

    return write_new_file(path, dump)


def inside(folder: Path | str, *parts: str) -> Path:
    """folder/part/...; refused unless it stays inside folder (a name such as '../x' would write elsewhere)."""
    path = Path(folder).joinpath(*parts)  # checked as written: a link the user made inside folder is theirs
    if any(part in ("", ".", "..") or Path(part).name != part for part in parts):
        raise HarnessError(f"{'/'.join(parts)}: a name must stay inside {folder}; use letters, digits, '.', '_', '-'")
    return path


def result_path(results_dir: Path, recipe_name: str, run_id: str) -> Path:
    return inside(results_dir, recipe_name, f"{run_id}.json")


def fallback_results_dirs() -> list[Path]:
    """Where a result goes when its results folder cannot take it (full disk, lost mount, permissions):
    the user's cache, else the temporary folder. Numbers a run paid for are never dropped."""
    return [Path.home() / ".cache" / "harness" / "unsaved-results", Path(tempfile.gettempdir()) / "harness-unsaved-results"]


def save_somewhere(results_dir: Path, write: Callable[[Path], Path]) -> Path:
    """write(results_dir), or, if that folder cannot be written, write(fallback) with a warning naming both."""
    try:
        return write(results_dir)
    except FileExistsError:
        raise
    except OSError as error:
        for folder in fallback_results_dirs():
            try:
                path = write(folder)
            except FileExistsError:
                raise
            except OSError:
                continue
            print(f"warning: {results_dir} cannot be written ({error}); saved {path} instead", file=sys.stderr)
            return path
        raise


def save_result(results_dir: Path, result: RunResult) -> Path:
    """The result file under results_dir/<recipe>/, or under a fallback folder if results_dir fails."""
    def write(folder: Path) -> Path:
        return write_new_json(result_path(folder, result.recipe_name, result.run_id), result.to_dict())

    return save_somewhere(Path(results_dir), write)


def locate_result(results_dir: Path, recipe_name: str, run_id: str) -> Path | None:
    """Where a run's result file was saved: its results folder or a fallback folder; None if nowhere."""
    for folder in (Path(results_dir), *fallback_results_dirs()):
        path = result_path(folder, recipe_name, run_id)
        if path.is_file():
            return path
    return None


def predictions_path(results_dir: Path, recipe_name: str, run_id: str) -> Path:
    return inside(results_dir, recipe_name, f"{run_id}.predictions.npz")


def save_predictions(path: Path, arrays: dict[str, Any]) -> Path:
    """Per-example predictions as a compressed numpy archive, written like every result file."""
    import numpy as np

    return write_new_file(path, lambda handle: np.savez_compressed(handle, **arrays), binary=True)


def load_result(path: Path) -> dict[str, Any]:
    """The result document in path, checked against the schema. Every way a file can fail raises
    ResultFileError, whose message starts with the path, so a caller can skip the file by name."""
    document = read_json(path)
    if not isinstance(document, dict) or "schema_version" not in document:
        raise ResultFileError(f"{path}: not a harness result file (no schema_version)")
    version, major = str(document["schema_version"]), SCHEMA_VERSION.split(".")[0]
    if version.split(".")[0] != major:
        raise ResultFileError(f"{path}: schema version {version} is not readable: this harness reads "
                              f"{major}.x (it writes {SCHEMA_VERSION})")  # fmt: skip
    problems = result_problems(document)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ResultFileError(f"{path}: not a valid result: {'; '.join(problems[:3])}{more}")
    return document


def find_result_files(paths: list[str | Path]) -> list[Path]:
    """Result files named directly or found recursively under folders, in a stable order; JSON files in
    folders that are plainly not results are left out (scan_result_files also lists those)."""
    return scan_result_files(paths).files


class ResultFileError(ValueError):
    """A file that cannot be used as a result; the message starts with its path and says what is wrong."""


@dataclass
class ResultFiles:
    """What a search for result files found: the files to load, and the JSON files in folders that were
    ignored because they are plainly not results (a checkpoint's config.json, a run's plan.json)."""

    files: list[Path]
    ignored: list[Path]


def scan_result_files(paths: list[str | Path]) -> ResultFiles:
    """Files named directly are always result files. Folders are searched recursively for *.json (hidden
    files skipped); there, JSON files that are plainly something else are ignored rather than refused, so a
    results folder may also hold checkpoints."""
    files: list[Path] = []
    ignored: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            for path in sorted(p for p in entry.rglob("*.json") if p.is_file() and not p.name.startswith(".")):
                (files if may_be_result(path) else ignored).append(path)
        elif entry.is_file():
            files.append(entry)
        else:
            raise FileNotFoundError(f"{entry}: no such result file or folder")
    return ResultFiles(files, ignored)


def may_be_result(path: Path) -> bool:
    """False only for JSON whose top level is not an object with a schema_version. A file that cannot be
    read or parsed may be a truncated result, so it stays one, for load_result to name what is wrong."""
    try:
        document = read_json(path)
    except ResultFileError:
        return True
    return isinstance(document, dict) and "schema_version" in document


def read_json(path: Path) -> Any:
    """The parsed JSON in path, or ResultFileError saying why not: unreadable, not UTF-8, or invalid JSON
    (line and column, and whether the file ends there, as a truncated one does)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise ResultFileError(f"{path}: cannot be read ({error.strerror or error})") from error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ResultFileError(f"{path}: not UTF-8 text (byte {error.start} is {raw[error.start]:#04x})") from error
    if not text.strip():
        raise ResultFileError(f"{path}: empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        ends = error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string")
        hint = " (the file ends there: truncated?)" if ends else ""
        raise ResultFileError(f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: "
                              f"{error.msg}{hint}") from error  # fmt: skip


def result_problems(document: Any) -> list[str]:
    """Where a result document departs from RunResult (and the SpeedReport and MemoryReport in it), one
    readable line each. Lenient where versions differ: fields with a default may be missing (files of an
    older minor version) and fields the schema does not know are allowed (a newer minor version adds some)."""
    return schema_problems(document, RunResult)


JSON_TYPES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """A dataclass's resolved field types, once per class: compare validates thousands of files."""
    return get_type_hints(cls)


def schema_problems(value: Any, hint: Any, where: str = "") -> list[str]:
    """The problems of a JSON value against a type hint, found by recursing through dataclass fields, dicts,
    lists, unions, Literals and JSON scalars; where is the dotted path of value in the document."""
    arms = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    arm = next((arm for arm in arms if has_json_type(value, arm)), None)
    if arm is None:
        return [f"{where or 'document'}: expected {describe_type(hint)}, got {show_value(value)}"]
    prefix = f"{where}." if where else ""
    if dataclasses.is_dataclass(arm):
        hints = field_types(arm)
        problems = []
        for item in dataclasses.fields(arm):
            if item.name in value:
                problems += schema_problems(value[item.name], hints[item.name], prefix + item.name)
            elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                problems.append(f"{prefix}{item.name}: missing (required)")
        return problems
    origin, args = get_origin(arm), get_args(arm)
    if origin is dict and args:
        return [problem for key, item in value.items() for problem in schema_problems(item, args[1], prefix + key)]
    if origin is list and args:
        return [problem for i, item in enumerate(value) for problem in schema_problems(item, args[0], f"{where}[{i}]")]
    return []


def has_json_type(value: Any, hint: Any) -> bool:
    """Whether value is of hint's JSON type, at the top level only (a bool is no number, an int is one)."""
    container = get_origin(hint) or hint
    if hint is Any:
        return True
    if container is Literal:
        return any(type(value) is type(option) and value == option for option in get_args(hint))
    if dataclasses.is_dataclass(hint) or container is dict:
        return isinstance(value, dict)
    if container is list:
        return isinstance(value, list)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def describe_type(hint: Any) -> str:
    """A type hint as a problem line reads it, in JSON's terms: "a number or null"."""
    origin = get_origin(hint)
    if origin in (Union, UnionType):
        return " or ".join(describe_type(arm) for arm in get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(option) for option in get_args(hint))
    if dataclasses.is_dataclass(hint) or (origin or hint) is dict:
        return "an object"
    if (origin or hint) is list:
        return "an array"
    return JSON_TYPES.get(hint, "any value")


def show_value(value: Any) -> str:
    """The value as JSON, cut to 40 characters."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else f"{text[:37]}..."
