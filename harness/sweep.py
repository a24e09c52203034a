"""`harness sweep`: every cell of a recipe's `sweep:` axes (their Cartesian product), each seed of each cell a
run in processes of its own, started as `harness run` starts them.

What cannot run is known before the first run starts: a cell this machine cannot run (what preflight refuses:
fp16 on CPU, bf16 without support, flash-attn missing) is skipped with the reason, and any other bad input refuses
the whole sweep. A failed run does not stop the sweep; Ctrl-C or SIGTERM does. A run whose recipe hash already has
a completed result is not run again (unless --rerun), so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cli import repeat_plans
from harness.errors import HarnessError
from harness.failures import stopped_exit_code
from harness.launcher import RunFailed, RunStopped, check, launch
from harness.plan import Plan
from harness.preflight import PreflightError
from harness.recipe import RecipeError, SweepCell, load_sweep, setting_text
from harness.results import ResultFileError, inside, load_result

MAX_FAILED_EXIT = 125  # above it a shell reads an exit code otherwise (126: not executable, 128+N: signal N)


@dataclass
class SweepRun:
    """One row of the sweep: one seed of one cell, what became of it and where its result is."""

    number: int  # the cell's place in the sweep, from 1
    cell: SweepCell
    plan: Plan
    status: str = "not started"  # or: completed, failed, skipped, already done, stopped
    detail: str = ""  # the failure's error type, the reason of a skip, the stopping signal
    path: Path | None = None

    @property
    def outcome(self) -> str:
        return f"{self.status}: {self.detail}" if self.detail else self.status


def run_sweep(name: str, overrides: list[str], repeats: int = 1, rerun: bool = False,
              results_dir: str | None = None) -> int:  # fmt: skip
    """Run the sweep of the recipe `name`, print its summary and comparison tables; return the exit code."""
    cells = load_sweep(name, overrides).cells
    if not cells:
        raise RecipeError(f"{name}: has no sweep: section; run it with `harness run {name}`")
    runs = plan_sweep(cells, repeats, rerun, results_dir)
    announce(runs, len(cells), repeats)
    stopped_by = run_pending(runs)
    print_summary(runs)
    print_comparison(runs)
    return sweep_exit_code(runs, stopped_by)


def plan_sweep(cells: list[SweepCell], repeats: int, rerun: bool, results_dir: str | None) -> list[SweepRun]:
    """Every run of the sweep, in cell order, marked before any process starts: already done (unless rerun),
    skipped (this machine cannot run its cell) or not started. A sweep no cell of which can run is refused."""
    runs = [SweepRun(number, cell, plan) for number, cell in enumerate(cells, start=1)
            for plan in repeat_plans(cell.recipe, repeats, results_dir)]  # fmt: skip
    if not rerun:
        mark_done(runs)
    mark_impossible([run for run in runs if run.status == "not started"])
    if all(run.status == "skipped" for run in runs):
        reasons = "".join(f"\n  {reason}" for reason in dict.fromkeys(run.detail for run in runs))
        raise HarnessError(f"no cell of the sweep can run here:{reasons}")
    return runs


def mark_done(runs: list[SweepRun]) -> None:
    """A run whose recipe hash (the cell's recipe with its seed) has a completed result in its results folder is
    already done; the runs left of its cell join that result's repeats group, so compare shows the cell as one
    row."""
    done: dict[Path, dict[str, tuple[Path, dict[str, Any]]]] = {}
    for run in runs:
        folder = inside(run.plan.results_dir, run.plan.recipe.name)
        if folder not in done:
            done[folder] = completed_results(folder)
        if run.plan.recipe.hash in done[folder]:
            run.path, result = done[folder][run.plan.recipe.hash]
            run.status = "already done"
            join_group(runs, run.cell, result.get("repeats"))


def completed_results(folder: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Recipe hash -> (path, result) of the completed training results in folder; a file that does not load as
    a result is passed over (it is not this sweep's to judge)."""
    completed = {}
    for path in sorted(folder.glob("*.json")):
        try:
            result = load_result(path)
        except ResultFileError:
            continue
        if result["kind"] == "train" and result["status"] == "completed":
            completed[result["recipe_hash"]] = (path, result)
    return completed


def join_group(runs: list[SweepRun], cell: SweepCell, repeats: dict[str, Any] | None) -> None:
    """The cell's plans take the repeats group of its done result when that group has as many seeds."""
    for run in runs:
        if run.cell is cell and repeats and run.plan.repeats and run.plan.repeats["count"] == repeats["count"]:
            run.plan.repeats["group"] = repeats["group"]


def mark_impossible(runs: list[SweepRun]) -> None:
    """Check each cell of these runs once (launcher.check: stack, folders, data); a cell preflight refuses is
    one this machine cannot run, and its runs are skipped with the reason."""
    reasons: dict[str, str | None] = {}
    for run in runs:
        if run.cell.recipe.hash not in reasons:
            reasons[run.cell.recipe.hash] = cannot_run_here(run)
        if reasons[run.cell.recipe.hash]:
            run.status, run.detail = "skipped", reasons[run.cell.recipe.hash]


def cannot_run_here(run: SweepRun) -> str | None:
    """Why preflight refuses the run's cell, or None once its check passed; other bad input (the data) refuses
    the whole sweep, naming the cell."""
    try:
        check(run.cell.recipe, run.plan.results_dir)
    except PreflightError as error:
        return str(error)
    except HarnessError as error:
        raise HarnessError(f"sweep cell {run.number} ({run.cell.label}): {error}") from None
    return None


def announce(runs: list[SweepRun], cells: int, repeats: int) -> None:
    """What the sweep will do, before it starts: counts, and each skipped cell with its reason."""
    count = {status: sum(run.status == status for run in runs) for status in ("not started", "already done")}
    skipped = dict.fromkeys((run.number, run.cell.label, run.detail) for run in runs if run.status == "skipped")
    print(f"sweep {runs[0].plan.recipe.name}: {cells} cells x {repeats} seed(s): {count['not started']} run(s) to "
          f"start, {count['already done']} already done, {len(skipped)} cell(s) skipped", flush=True)  # fmt: skip
    for number, label, reason in skipped:
        print(f"skipped: cell {number} ({label}): {reason}", flush=True)


def run_pending(runs: list[SweepRun]) -> str | None:
    """Run each run not started, in processes of its own; a failure is recorded and the sweep goes on, a stop
    signal ends it (the runs after it stay not started). Returns the signal's name if one stopped it."""
    pending = [run for run in runs if run.status == "not started"]
    for index, run in enumerate(pending, start=1):
        plan = run.plan
        print(f"\n[{index}/{len(pending)}] cell {run.number} ({run.cell.label}), seed {plan.recipe.train.seed}: "
              f"run {plan.run_id} (hash {plan.recipe.hash})", flush=True)  # fmt: skip
        try:
            run.path, run.status = launch(plan, checked=True), "completed"
        except RunStopped as stop:  # Ctrl-C or SIGTERM: record this run, start no other
            run.path, run.status, run.detail = stop.path, "stopped", stop.signal_name
            print(f"STOPPED: {stop}", file=sys.stderr, flush=True)
            return stop.signal_name
        except RunFailed as error:
            run.path, run.status, run.detail = error.path, "failed", failure_type(error.path)
            print(f"FAILED: {error}", file=sys.stderr, flush=True)
        except HarnessError as error:  # bad input only the worker could see; it printed it
            run.status, run.detail = "failed", "bad input"
            print(f"FAILED: {error}", file=sys.stderr, flush=True)
        print(f"result: {run.path or '-'}", flush=True)
    return None


def failure_type(path: Path | None) -> str:
    """The failed result's error type, with the batch size of a GPU out of memory (what to lower)."""
    try:
        error = (load_result(path)["error"] if path else None) or {}
    except ResultFileError:
        error = {}
    if error.get("type") == "OutOfMemory":
        return f"OutOfMemory ({error.get('phase')} batch_size {error.get('batch_size')})"
    return error.get("type", "")


def print_summary(runs: list[SweepRun]) -> None:
    """One row per run: the cell's axis values, the seed, its result and what became of it."""
    axes = list(runs[0].cell.settings)
    header = ["cell", *axes, "seed", "result", "status"]
    rows = [[str(run.number), *(setting_text(run.cell.settings[axis]) for axis in axes),
             str(run.plan.recipe.train.seed), str(run.path or "-"), run.outcome] for run in runs]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, *rows]:
        print("  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip())


def print_comparison(runs: list[SweepRun]) -> None:
    """harness compare's table over the sweep's result files, failed and already done ones included."""
    from harness.compare import compare

    paths = [str(run.path) for run in runs if run.path and run.path.is_file()]
    if not paths:
        return
    print()
    try:
        print(compare(paths, baseline="0" if len(paths) > 1 else None))
    except ValueError as error:  # no table can be made (every file unreadable): the runs' outcome stands
        print(f"note: no comparison table: {error}", file=sys.stderr)


def sweep_exit_code(runs: list[SweepRun], stopped_by: str | None) -> int:
    """130 or 143 when a signal stopped the sweep; else the number of failed runs, at most 125."""
    if stopped_by:
        return stopped_exit_code(stopped_by)
    return min(sum(run.status == "failed" for run in runs), MAX_FAILED_EXIT)
