"""Profiling a few training steps: `harness run --profile N`.

One `StepProfiler` per rank profiles N consecutive optimizer steps with torch.profiler and writes, into the
folder it is given (beside the run's result):

- `profile-rank{R}-trace.json.gz`: the chrome trace of those steps (CPU operators with their input shapes and
  memory, plus CUDA kernels on a GPU), each step a `ProfilerStep#k` span. Open it in https://ui.perfetto.dev or
  chrome://tracing (both read the gzip file as it is), or in Holistic Trace Analysis.
- `profile-rank{R}-top.txt`: the 25 operators with the most self time (CUDA time on a GPU, CPU time otherwise),
  from `key_averages()`, headed by a line naming the device, the number of steps and the sort key. Read it
  with any pager.
- `profile-rank{R}-memory.pickle`, on CUDA only: a CUDA memory snapshot (the allocator's segments and the
  history of up to 100,000 allocations and frees, with their stacks, from the first profiled step to the
  last). Drop it on https://pytorch.org/memory_viz. There is no snapshot on CPU: the allocator history is
  CUDA's.

Files are written atomically and never replace a file: a profile that finds its names taken raises
FileExistsError, before profiling when it can.

Overhead. The profiler (shapes, memory, CUDA activity) and the allocator history slow every profiled step, by
far more than noise. Profiled steps are therefore not part of the measured window: the caller treats them like
warm-up steps (not timed, their work charged at the steady rate), so a profiled run's rates stay comparable.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from torch.profiler import ProfilerAction, ProfilerActivity

from harness.results import write_new_file

MEMORY_HISTORY_ENTRIES = 100_000  # a few KB each with stacks: a snapshot of at most a few hundred MB
TOP_ROWS = 25


def profile_names(rank: int, device: str) -> dict[str, str]:
    """The names a profile of this rank writes, by kind: no memory snapshot off CUDA."""
    names = {"trace": f"profile-rank{rank}-trace.json.gz", "top_operators": f"profile-rank{rank}-top.txt"}
    if device == "cuda":
        names["memory_snapshot"] = f"profile-rank{rank}-memory.pickle"
    return names


def record_schedule(steps: int) -> Callable[[int], ProfilerAction]:
    """Record steps 0 .. steps-1, then nothing. torch.profiler.schedule(warmup=0) does the same but warns
    about its missing warm-up: the run's own warm-up steps come before the profile."""

    def action(step: int) -> ProfilerAction:
        if step < steps - 1:
            return ProfilerAction.RECORD
        return ProfilerAction.RECORD_AND_SAVE if step == steps - 1 else ProfilerAction.NONE

    return action


class StepProfiler:
    """Profiles `steps` consecutive training steps of one rank into `folder`.

    Call start() just before the first profiled step and step_done() after each optimizer step; it returns
    True once `steps` steps are profiled, and then has stopped the profiler and written the files. If the run
    ends first, finish() writes what was profiled (what ran between the last step and finish() is in the files
    too, outside any ProfilerStep span: call it as soon as the loop ends). On CPU there is no memory snapshot.
    Profiled steps are slow and not part of the measured window: the caller counts them as warm-up steps.
    Stopping synchronizes the device and writes the files, which can take seconds: the step that returns
    True is not a step to time either.
    """

    def __init__(self, steps: int, folder: Path, device: str, rank: int):
        if steps < 1:
            raise ValueError(f"profile: steps must be at least 1, got {steps}")
        self.steps, self.folder, self.device, self.rank = steps, Path(folder), device, rank
        self.names = profile_names(rank, device)
        for name in self.names.values():  # before any work: a run is never profiled for files it cannot write
            if (self.folder / name).exists():
                raise self.taken(name)
        self.done = 0
        self.profiler: torch.profiler.profile | None = None
        self.finished = False
        self.written: dict[str, str] = {}

    def start(self) -> None:
        """Start profiling; on CUDA, also the allocator's history, so that the snapshot shows these steps."""
        activities = [ProfilerActivity.CPU]
        if self.device == "cuda":
            activities.append(ProfilerActivity.CUDA)
            torch.cuda.memory._record_memory_history(max_entries=MEMORY_HISTORY_ENTRIES)
        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=record_schedule(self.steps),  # a schedule is what makes prof.step() mark ProfilerStep#k
            record_shapes=True,
            profile_memory=True,
            with_stack=False,  # stacks would multiply the trace's size
        )
        self.profiler.start()

    def step_done(self) -> bool:
        """One optimizer step done; True once all steps are profiled (the files are then written)."""
        if self.finished:
            return True
        if self.profiler is None:
            raise RuntimeError("StepProfiler.step_done() before start()")
        self.done += 1
        self.profiler.step()  # closes ProfilerStep#(done-1); after the last step the profiler stops recording
        if self.done == self.steps:
            self.finish()
        return self.finished

    def finish(self) -> None:
        """Stop profiling and write the files, once; without start() there is nothing to write."""
        if self.finished:
            return
        self.finished = True
        if self.profiler is None:
            return
        self.profiler.stop()
        snapshot = self.stop_memory_history() if self.device == "cuda" else None
        # a run that ended early leaves ProfilerStep#done open over whatever followed its last step
        unfinished = f"ProfilerStep#{self.done}" if self.done < self.steps else None
        self.write("trace", lambda handle: write_trace(self.profiler, handle, self.folder, unfinished))
        self.write("top_operators", lambda handle: handle.write(self.top_operators().encode()))
        if snapshot is not None:
            self.write("memory_snapshot", lambda handle: pickle.dump(snapshot, handle))

    def files(self) -> dict[str, str]:
        """What was written, by kind: names relative to the folder."""
        return dict(self.written)

    def stop_memory_history(self) -> dict[str, Any]:
        """The allocator snapshot (what torch.cuda.memory._dump_snapshot pickles), then stop recording."""
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        return snapshot

    def top_operators(self) -> str:
        sort_by = "self_cuda_time_total" if self.device == "cuda" else "self_cpu_time_total"
        steps = f"{self.done} step(s)" if self.done == self.steps else f"{self.done} of {self.steps} steps"
        header = f"device {self.device}, rank {self.rank}: {steps} profiled, sorted by {sort_by}\n"
        return header + self.profiler.key_averages().table(sort_by=sort_by, row_limit=TOP_ROWS) + "\n"

    def write(self, kind: str, write: Callable[[IO], None]) -> None:
        name = self.names[kind]
        try:
            write_new_file(self.folder / name, write, binary=True)
        except FileExistsError as error:  # taken since __init__, by another process
            raise self.taken(name) from error
        self.written[kind] = name

    def taken(self, name: str) -> FileExistsError:
        return FileExistsError(
            f"{self.folder / name} exists; a profile never replaces a file: profile into another folder"
        )


def write_trace(profiler: torch.profiler.profile, handle: IO, folder: Path, drop: str | None) -> None:
    """The profiler's chrome trace, gzipped into handle, without the events named `drop`. The profiler
    exports to a path only: a temporary file in the folder, removed here."""
    fd, raw = tempfile.mkstemp(dir=folder, prefix=".profile-trace.", suffix=".json")
    os.close(fd)
    try:
        profiler.export_chrome_trace(raw)
        with open(raw, "rb") as source, gzip.GzipFile(fileobj=handle, mode="wb") as packed:
            if drop is None:
                shutil.copyfileobj(source, packed)  # streamed: a trace of many steps can be large
            else:
                trace = json.load(source)
                trace["traceEvents"] = [e for e in trace["traceEvents"] if e.get("name") != drop]
                packed.write(json.dumps(trace).encode())
    finally:
        os.unlink(raw)
