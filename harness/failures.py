"""Failed runs: `record_failure` is the one place that writes a result with status "failed" (called by the
launcher for the runs it starts, and by a worker started by your own launcher). No torch here."""

from __future__ import annotations

import json
import os
import signal
import traceback
from pathlib import Path
from typing import Any

from harness.plan import Plan
from harness.results import RunResult, save_result, utc_now, write_new_json

MAX_MESSAGE = 4000  # characters of an error message kept in a failed result
LAUNCHED_ENV = "HARNESS_LAUNCHED"  # set for the workers the harness launcher starts: it records their failures
BAD_INPUT_EXIT = 2  # a worker that stops on bad input (a HarnessError) prints it and exits with this code


def stopped_exit_code(signal_name: str) -> int:
    """The shell's exit code of a process ended by that signal: 130 for SIGINT, 143 for SIGTERM. A worker
    that recorded where a signal stopped it exits with it."""
    return 128 + signal.Signals[signal_name].value


def signal_of_exit_code(exitcode: int) -> str | None:
    """The signal a stopped worker's exit code stands for (130: SIGINT, 143: SIGTERM), if any."""
    return signal.Signals(exitcode - 128).name if 128 < exitcode < 128 + signal.NSIG else None


def exception_info(error: BaseException, rank: int | None) -> dict[str, Any]:
    return {"type": type(error).__name__, "message": str(error)[:MAX_MESSAGE], "rank": rank,
            "traceback": traceback.format_exception(error)[-3:]}  # fmt: skip


def note_exception(plan: Plan, info: dict[str, Any]) -> Path | None:
    """Every failing rank leaves what it raised in the run folder (exception-rank<R>-<pid>.json), so that the
    launcher's failed result carries the worker's own exception type and details, not only its message."""
    try:
        return write_new_json(plan.run_dir / f"exception-rank{info['rank']}-{os.getpid()}.json", info)
    except OSError:
        return None  # the failure is still recorded from the error file torch elastic keeps


def exception_note(run_dir: Path, rank: int, since: float) -> dict[str, Any] | None:
    """The exception a rank of this attempt noted (written at or after `since`), if any."""
    notes = [p for p in run_dir.glob(f"exception-rank{rank}-*.json") if p.stat().st_mtime >= since]
    return json.loads(max(notes, key=lambda p: p.stat().st_mtime).read_text()) if notes else None


def record_failure(plan: Plan, started_at: str, error: dict[str, Any], status: str = "failed",
                   training: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write the result of a run that did not complete: status "failed" (or "interrupted"), what stopped it
    where, and the training progress it had made. A resumable run may be retried under the same run id, so
    its unfinished attempts are kept in its run folder instead of results/."""
    from harness.environment import collect_environment

    result = RunResult(
        run_id=plan.run_id, kind="train", status=status,
        recipe_name=plan.recipe.name, recipe_hash=plan.recipe.hash, recipe=plan.recipe.to_dict(),
        started_at=started_at, finished_at=utc_now(), error=error, environment=collect_environment(),
        training=training or {}, repeats=plan.repeats,
    )  # fmt: skip
    if plan.resumable:
        attempt = Path(plan.checkpoint_dir) / f"{status}-attempt-{utc_now().replace(':', '')}.json"
        return write_new_json(attempt, result.to_dict())
    return save_result(Path(plan.results_dir), result)
