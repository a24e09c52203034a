"""The result file: one JSON document per run, versioned schema, written atomically, never overwritten.

The schema is documented in docs/results-schema.md; bump SCHEMA_VERSION's minor number when a field is
added, its major number when a field changes meaning or is removed. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

SCHEMA_VERSION = "2.0"


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
    train_samples_per_s_per_device: float | None = None
    model_flops_per_step_mean: float | None = None  # real-token FLOPs, see docs/results-schema.md
    achieved_flops_per_s: float | None = None
    peak_flops_per_s_per_device: float | None = None  # null when the device's peak is not known
    mfu: float | None = None  # achieved / (peak x world size); null when the peak is not known


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
    status: Literal["completed", "failed"]
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


def result_path(results_dir: Path, recipe_name: str, run_id: str) -> Path:
    return results_dir / recipe_name / f"{run_id}.json"


def save_result(results_dir: Path, result: RunResult) -> Path:
    return write_new_json(result_path(results_dir, result.recipe_name, result.run_id), result.to_dict())


def predictions_path(results_dir: Path, recipe_name: str, run_id: str) -> Path:
    return results_dir / recipe_name / f"{run_id}.predictions.npz"


def save_predictions(path: Path, arrays: dict[str, Any]) -> Path:
    """Per-example predictions as a compressed numpy archive, written like every result file."""
    import numpy as np

    return write_new_file(path, lambda handle: np.savez_compressed(handle, **arrays), binary=True)


def load_result(path: Path) -> dict[str, Any]:
    document = json.loads(Path(path).read_text())
    if not isinstance(document, dict) or "schema_version" not in document:
        raise ValueError(f"{path}: not a harness result file (no schema_version)")
    major = str(document["schema_version"]).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise ValueError(f"{path}: schema {document['schema_version']} is not readable by {SCHEMA_VERSION}")
    return document


def find_result_files(paths: list[str | Path]) -> list[Path]:
    """Result files named directly or found recursively under folders, in a stable order."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found.extend(sorted(p for p in entry.rglob("*.json") if not p.name.startswith(".")))
        elif entry.is_file():
            found.append(entry)
        else:
            raise FileNotFoundError(f"{entry}: no such result file or folder")
    return found
