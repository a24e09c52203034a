"""torch.compile support: bounded sequence lengths, and what compilation cost.

Shapes. torch.compile specialises a graph on its input shapes. With dynamic padding every batch has its own
longest text, so with `dynamic=False` (or CUDA graphs) each new length is a new graph: a recompile. A compiled
run pads each batch up to a *bucket* instead (`bucket_length`): a handful of lengths, one graph each. Batch sizes
count too (the last batch of an epoch or split), and so does the mode: evaluation under `torch.no_grad()` fails
the training graph's guards (grad mode) and compiles its own. Past `torch._dynamo.config.recompile_limit` (8 by
default) graphs of one function, torch stops compiling that function: new shapes then run eagerly, with only
a warning. `CompileStats.eager_fallbacks` counts that, so a "compiled" run that mostly ran eagerly says so.

Cost. `CompileWatch` reads torch's own compilation records at `start()` and returns the difference at `read()`,
so a run counts its own compilation and nothing compiled before it. Nothing here imports torch at import time
(`harness validate` and `harness compare` never import torch); the watch imports it when started.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

SMALLEST_BUCKET = 32  # shorter batches are cheap: padding them to 32 wastes little, one graph less than from 16
# torch keeps its per-compile records in a ring of 64 entries (two per compile when the backward is compiled):
# a watch widens it so that a run's records are all still there when it is read
COMPILE_LOG_ENTRIES = 1024
REASON_CHARS = 300
REASONS_KEPT = 5


def default_buckets(max_length: int) -> list[int]:
    """Sequence-length buckets for compiled runs: the powers of two from 32 below max_length, then max_length
    itself (always the last bucket, so that every text fits). 512 -> [32, 64, 128, 256, 512];
    100 -> [32, 64, 100]; 20 -> [20]."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    buckets, size = [], SMALLEST_BUCKET
    while size < max_length:
        buckets.append(size)
        size *= 2
    return [*buckets, max_length]


def bucket_length(longest: int, buckets: list[int]) -> int:
    """The length to pad a batch to: the smallest bucket >= its longest sequence. Buckets must ascend
    strictly; a sequence longer than the last bucket is an error (ValueError naming both)."""
    if not buckets or any(a >= b for a, b in itertools.pairwise(buckets)):
        raise ValueError(f"buckets must be a non-empty, strictly ascending list of lengths, got {buckets}")
    for bucket in buckets:
        if bucket >= longest:
            return bucket
    raise ValueError(
        f"a sequence of {longest} tokens is longer than the last bucket, {buckets[-1]} (buckets: {buckets})"
    )


@dataclass
class CompileStats:
    """What compilation cost during a window of the run, on this process (every rank compiles its own)."""

    compiles: int = 0  # graphs compiled (by the backend), the first one included
    recompiles: int = 0  # compiles of a function already compiled whose guards failed (new shapes, grad mode, ...)
    graph_breaks: int = 0  # graph breaks met while tracing (each retrace meets them again)
    compile_s: float = 0.0  # wall seconds spent compiling: dynamo, the backend, and a backward compiled lazily
    eager_fallbacks: int = 0  # functions torch gave up compiling (recompile limit, a suppressed error): eager
    recompile_reasons: list[str] = field(default_factory=list)  # the first few guard failures, as torch words them

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "compile_s": round(self.compile_s, 6)}

    def __add__(self, other: CompileStats) -> CompileStats:
        """Two windows of one run as one (a training window with its evaluations cut out)."""
        counts = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)}
        return CompileStats(**{**counts, "recompile_reasons": counts["recompile_reasons"][:REASONS_KEPT]})


class CompileWatch:
    """Reads torch._dynamo's counters at start() and returns the difference at read(), so a run counts only its
    own compilation.

    Sources (torch 2.13, and the same in the GPU image's 2.8; torch has no public API for them, so a field it
    drops reads as nothing, never an error):
    - `torch._dynamo.utils.counters`: `stats.unique_graphs` (one per graph handed to the backend) for
      `compiles`, the `graph_break` counter for `graph_breaks`, `frames.total - frames.ok` (frame compiles
      that failed, e.g. at the recompile limit, and then run eagerly) for `eager_fallbacks`. They only grow:
      never capped, never cleared by `torch._dynamo.reset()`. There is no "recompiles" counter in 2.13.
    - `torch._dynamo.utils.get_compilation_metrics()`: one `CompilationMetrics` record per frame compile (and
      one per backward graph that AOTAutograd compiles lazily, `is_forward=False`), with `duration_us` (the
      outermost compile timer: dynamo plus backend, or the whole backward compile) and `recompile_reason`
      (set by dynamo exactly when it recompiles a function: the guard that failed). They give `recompiles`,
      `recompile_reasons` and `compile_s` per compile, and survive `torch._dynamo.reset()`. The window is the
      records after the last one present at start(), found by identity. The log is a ring (64 records by
      default); start() widens it to COMPILE_LOG_ENTRIES. Should records of the window still be lost,
      compile_s falls back to the cumulative phase timers (`calculate_time_spent()["total_wall_time"]`: the
      same timers summed, but cleared by `torch._dynamo.reset()`), whichever is larger, and recompiles is a
      lower bound.
    """

    def __init__(self, reasons: int = REASONS_KEPT):
        self.reasons = reasons
        self._start: dict[str, Any] | None = None
        self._kept = CompileStats()  # what was counted before a pause()
        self._paused = False

    def pause(self) -> None:
        """Stop counting until resume() (an evaluation inside a training window); what was counted is kept.
        A watch not started yet stays unstarted."""
        if self._start is not None and not self._paused:
            self._kept, self._paused = self.read(), True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self.start()

    def start(self) -> None:
        from torch._dynamo import utils

        ring = getattr(utils, "_compilation_metrics", None)
        if getattr(ring, "maxlen", None) is not None and ring.maxlen < COMPILE_LOG_ENTRIES:
            utils.set_compilation_metrics_limit(COMPILE_LOG_ENTRIES)
        log = utils.get_compilation_metrics()
        self._start = {**_counts(), "last_record": log[-1] if log else None, "timers_s": _timers_s()}

    def read(self) -> CompileStats:
        """What was compiled since start(), pauses left out; the watch keeps running (read again for a longer
        window)."""
        if self._paused:
            return self._kept
        if self._start is None:
            raise RuntimeError("CompileWatch.read() before start()")
        from torch._dynamo import utils

        start, now = self._start, _counts()
        log = utils.get_compilation_metrics()
        records, complete = _records_since(log, start["last_record"])
        if complete and start["last_record"] is None:  # empty at start: complete unless the ring has filled
            ring = getattr(utils, "_compilation_metrics", None)
            complete = getattr(ring, "maxlen", None) is None or len(log) < ring.maxlen
        # the attempt that hits the recompile limit has a reason too, and a fail_type: an eager fallback
        recompiled = [r for r in records if _field(r, "recompile_reason") and not _field(r, "fail_type")
                      and _field(r, "is_forward") is not False]  # fmt: skip
        # every record's outermost compile timer: frame compiles, lazy backward compiles, runtime autotuning
        compile_s = sum(_field(r, "duration_us") or 0 for r in records) / 1e6
        if not complete:
            compile_s = max(compile_s, _timers_s() - start["timers_s"])
        return self._kept + CompileStats(
            compiles=max(0, now["graphs"] - start["graphs"]),
            recompiles=len(recompiled),
            graph_breaks=max(0, now["graph_breaks"] - start["graph_breaks"]),
            compile_s=compile_s,
            eager_fallbacks=max(0, now["failed_frames"] - start["failed_frames"]),
            recompile_reasons=[_first_line(_field(r, "recompile_reason")) for r in recompiled[: self.reasons]],
        )


def settle_problem_type(model: Any) -> bool:
    """Set `config.problem_type` as a Hugging Face sequence classifier's first forward with integer labels does
    (single-label classification for two labels or more). The forward reads it, so under torch.compile the
    write at step 1 fails a guard at step 2: a recompile of the same shape, and a dead graph that counts against
    torch's recompile limit. True if it set it."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "problem_type", None) is not None or getattr(config, "num_labels", 0) < 2:
        return False
    config.problem_type = "single_label_classification"
    return True


def _counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    frames = counters["frames"]
    return {
        "graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
        "failed_frames": frames["total"] - frames["ok"],
    }


def _field(record: Any, name: str) -> Any:
    return getattr(record, name, None)


def _timers_s() -> float:
    from torch._dynamo.utils import calculate_time_spent

    return calculate_time_spent().get("total_wall_time", 0.0)


def _records_since(log: list[Any], last: Any) -> tuple[list[Any], bool]:
    """The records after `last` (by identity), and whether `last` was still there (None: the log was empty)."""
    if last is None:
        return log, True
    for index in range(len(log) - 1, -1, -1):
        if log[index] is last:
            return log[index + 1 :], True
    return log, False


def _first_line(reason: str) -> str:
    """Dynamo's reason without the user stack it appends: "0/1: tensor 'kwargs['input_ids']' size mismatch at
    index 1. expected 16, actual 32"."""
    line = reason.splitlines()[0].strip() if reason else ""
    return line if len(line) <= REASON_CHARS else line[: REASON_CHARS - 3] + "..."
