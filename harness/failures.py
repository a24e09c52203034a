"""Failed runs: `record_failure` is the one place that writes a result with status "failed" (called by the
launcher for the runs it starts, and by a worker started by your own launcher). No torch here."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from harness.plan import Plan
from harness.results import RunResult, save_result, utc_now, write_new_json

MAX_MESSAGE = 4000  # characters of an error message kept in a failed result
LAUNCHED_ENV = "HARNESS_LAUNCHED"  # set for the workers the harness launcher starts: it records their failures
BAD_INPUT_EXIT = 2  # a worker that stops on bad input (a HarnessError) prints it and exits with this code


def exception_info(error: BaseException, rank: int | None) -> dict[str, Any]:
    return {"type": type(error).__name__, "message": str(error)[:MAX_MESSAGE], "rank": rank,
            "traceback": traceback.format_exception(error)[-3:]}  # fmt: skip


def record_failure(plan: Plan, started_at: str, error: dict[str, Any]) -> Path:
    """Write the run's result with status "failed" and what failed where. A resumable run may be retried
    under the same run id, so its failed attempts are kept in its run folder instead of results/."""
    from harness.environment import collect_environment

    result = RunResult(
        run_id=plan.run_id, kind="train", status="failed",
        recipe_name=plan.recipe.name, recipe_hash=plan.recipe.hash, recipe=plan.recipe.to_dict(),
        started_at=started_at, finished_at=utc_now(), error=error, environment=collect_environment(),
        repeats=plan.repeats,
    )  # fmt: skip
    if plan.resumable:
        attempt = Path(plan.checkpoint_dir) / f"failed-attempt-{utc_now().replace(':', '')}.json"
        return write_new_json(attempt, result.to_dict())
    return save_result(Path(plan.results_dir), result)
