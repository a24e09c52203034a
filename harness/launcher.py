"""Local launcher: starts a planned run in this process (one device), or under `accelerate launch` (several
processes, several machines, or DeepSpeed), and records a failed run when any process fails.

Multi-process runs write into the run's folder (`<checkpoints_dir>/<recipe>/<run id>/`) the plan, the
accelerate config and the DeepSpeed JSON they were launched with:
    accelerate launch --config_file RUN/accelerate.yaml --module harness.train --plan RUN/plan.json
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.distributed import accelerate_config, deepspeed_config, launch_arguments
from harness.errors import HarnessError
from harness.plan import Plan
from harness.results import RunResult, result_path, save_result, utc_now, write_new_json

MAX_MESSAGE = 4000  # characters of an error message kept in a failed result
LAUNCHED_ENV = "HARNESS_LAUNCHED"  # set for workers started here: the launcher records their failures


class RunFailed(RuntimeError):
    """A run started but did not complete; its failed result is at `path` (the run folder for a resumable
    run's attempt, else results/; None on machines other than rank 0)."""

    def __init__(self, message: str, path: Path | None):
        super().__init__(message)
        self.path = path


class RunInterrupted(RuntimeError):
    """A resumable run's processes were stopped from outside (preemption): try again, it resumes."""


INTERRUPTING_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")  # SIGKILL stays a failure: it is also how OOM kills


@dataclass
class MachineRole:
    """This machine's place in a multi-machine run (accelerate's flags); defaults: a single machine."""

    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None


def record_failure(plan: Plan, started_at: str, error: dict[str, Any]) -> Path:
    """Write the run's result with status "failed" and what failed where. A resumable run may be retried
    under the same run id, so its failed attempts are kept in its run folder instead of results/."""
    from harness.environment import collect_environment

    result = RunResult(
        run_id=plan.run_id, kind="train", status="failed",
        recipe_name=plan.recipe.name, recipe_hash=plan.recipe.hash, recipe=plan.recipe.to_dict(),
        started_at=started_at, finished_at=utc_now(), error=error, environment=collect_environment(),
    )  # fmt: skip
    if plan.resumable:
        attempt = Path(plan.checkpoint_dir) / f"failed-attempt-{utc_now().replace(':', '')}.json"
        return write_new_json(attempt, result.to_dict())
    return save_result(Path(plan.results_dir), result)


def exception_info(error: BaseException, rank: int | None) -> dict[str, Any]:
    return {"type": type(error).__name__, "message": str(error)[:MAX_MESSAGE], "rank": rank,
            "traceback": traceback.format_exception(error)[-3:]}  # fmt: skip


def validate_data_once(plan: Plan) -> None:
    """Before N processes start: bad data fails here, once, and the datasets cache is filled so that
    the ranks do not download the data set N times. (An in-process run checks its data itself, before
    it loads the model.)"""
    from harness.data import load_labelled

    load_labelled(plan.recipe.data, plan.recipe.train.seed)


def launch(plan: Plan, role: MachineRole | None = None, resume: bool = False) -> Path:
    """Run the plan; return the result file's path, or raise RunFailed after recording the failure.

    resume=True (restartable containers): the run saves its training state at every epoch end, and a new
    attempt with the same plan continues from the last one saved in the run folder; a run that already
    completed is not run again."""
    plan.started_at_unix = plan.started_at_unix or time.time()
    plan.resumable = plan.resumable or resume
    done = result_path(Path(plan.results_dir), plan.recipe.name, plan.run_id)
    if plan.resumable and done.is_file():
        return done
    from harness.preflight import preflight

    preflight(plan.recipe)  # stack checks, before anything loads or starts
    if plan.recipe.hardware.launched:
        validate_data_once(plan)
        return _launch_processes(plan, role or MachineRole())
    return _run_in_process(plan)


def _run_in_process(plan: Plan) -> Path:
    from harness import train

    started_at = utc_now()
    try:
        path = train.execute(plan)
    except HarnessError:
        raise
    except Exception as error:
        path = record_failure(plan, started_at, exception_info(error, rank=0))
        raise RunFailed(f"run {plan.run_id} failed ({type(error).__name__}: {error}); result: {path}", path) from error
    assert path is not None  # a single process is the main process
    return path


def write_launch_files(plan: Plan) -> tuple[Path, Path]:
    """The run folder's plan.json, deepspeed.json (if any) and accelerate.yaml; returns (config, plan) paths."""
    run_dir = Path(plan.checkpoint_dir)
    run_dir.mkdir(parents=True, exist_ok=plan.resumable)  # only a resumed attempt reuses its run folder
    plan_file = plan.write(run_dir / "plan.json")
    deepspeed_file = None
    if plan.recipe.hardware.deepspeed:
        deepspeed_file = run_dir / "deepspeed.json"
        deepspeed_file.write_text(json.dumps(deepspeed_config(plan.recipe), indent=2))
    config_file = run_dir / "accelerate.yaml"
    config_file.write_text(yaml.safe_dump(accelerate_config(plan.recipe, deepspeed_file), sort_keys=False))
    return config_file, plan_file


def _launch_processes(plan: Plan, role: MachineRole) -> Path:
    from accelerate.commands.launch import launch_command, launch_command_parser
    from accelerate.utils import patch_environment
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    started_at = utc_now()
    config_file, plan_file = write_launch_files(plan)
    args = launch_command_parser().parse_args(
        launch_arguments(config_file, plan_file, role.machine_rank, role.main_process_ip, role.main_process_port)
    )
    env = {LAUNCHED_ENV: "1"}
    if plan.recipe.hardware.device == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"  # gloo on CPU; without it each process would train alone
    try:
        with patch_environment(**env):
            launch_command(args)
    except ChildFailedError as failure:
        rank, info = failure.get_first_failure()
        error = {
            "type": "ChildFailedError",
            "rank": rank,
            "exitcode": info.exitcode,
            "signal": info.signal_name() if info.exitcode < 0 else None,
            "message": (info.message if isinstance(info.message, str) else json.dumps(info.message))[:MAX_MESSAGE],
            "failed_ranks": sorted(failure.failures),
        }
        if plan.resumable and error["signal"] in INTERRUPTING_SIGNALS:
            raise RunInterrupted(f"run {plan.run_id}: rank {rank} stopped by {error['signal']}") from None
        path = record_failure(plan, started_at, error) if role.machine_rank == 0 else None
        message = f"run {plan.run_id}: rank {rank} failed (exit code {info.exitcode}); result: {path}"
        raise RunFailed(message, path) from None
    return result_path(Path(plan.results_dir), plan.recipe.name, plan.run_id)


def is_launched_worker() -> bool:
    return os.environ.get(LAUNCHED_ENV) == "1"
