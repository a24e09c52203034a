"""Local launcher: every run in processes of its own, started through `accelerate launch` (one process, several
processes, several machines, DeepSpeed or FSDP alike), and a failed result when any process fails.

A run's folder (`<checkpoints_dir>/<recipe>/<run id>/`) holds the plan, the accelerate config and the DeepSpeed
JSON it was launched with, so any run can be started again by hand:
    accelerate launch --config_file RUN/accelerate.yaml --module harness.train --plan RUN/plan.json
A process of its own per run: accelerate's state, the allocator's caches and the peak-memory counters of one run
never reach the next, so the runs of one `harness run a b` command are as comparable as runs started apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.distributed import accelerate_config, cpu_threads_per_process, deepspeed_config, launch_arguments
from harness.errors import HarnessError
from harness.failures import (
    BAD_INPUT_EXIT,
    LAUNCHED_ENV,
    MAX_MESSAGE,
    exception_note,
    record_failure,
    signal_of_exit_code,
)  # fmt: skip
from harness.plan import Plan
from harness.recipe import Recipe
from harness.results import locate_result, result_path, utc_now


class RunFailed(RuntimeError):
    """A run started but did not complete; its failed result is at `path` (the run folder for a resumable
    run's attempt, else results/; None on machines other than rank 0)."""

    def __init__(self, message: str, path: Path | None):
        super().__init__(message)
        self.path = path


class RunStopped(RunFailed):
    """The run was stopped by a signal (Ctrl-C, a scheduler's SIGTERM); its result (status "interrupted", or
    "completed" if it finished first) is at `path`. No further run of the command should start."""

    def __init__(self, message: str, path: Path | None, signal_name: str):
        super().__init__(message, path)
        self.signal_name = signal_name


class RunInterrupted(RuntimeError):
    """A resumable run's processes were stopped from outside (preemption): try again, it resumes."""


INTERRUPTING_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")  # SIGKILL stays a failure: it is also how OOM kills
ELASTIC_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")  # torch elastic's handlers, left installed after a run


@dataclass
class MachineRole:
    """This machine's place in a multi-machine run (accelerate's flags); defaults: a single machine."""

    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None


def check(recipe: Recipe, results_dir: str | None = None) -> None:
    """Everything that can fail before a process starts: the installed stack and the output folders (preflight)
    and the data, loaded and checked once here (which also fills the datasets cache, so N processes do not
    download it N times). The seed plays no part in either, so the repeats of a recipe need one check."""
    from harness.data import load_labelled
    from harness.preflight import preflight

    preflight(recipe, results_dir)
    load_labelled(recipe.data)


def launch(plan: Plan, role: MachineRole | None = None, resume: bool = False, checked: bool = False) -> Path | None:
    """Run the plan in processes of its own; return the result file's path (None on machines other than machine
    0, whose main process writes the run's result under its run id), or raise RunFailed after recording the
    failure. checked=True: `check(plan.recipe)` has already passed.

    resume=True (restartable containers): the run saves its training state at every epoch end, and a new
    attempt with the same plan continues from the last one saved in the run folder; a run that already
    completed is not run again."""
    plan.started_at_unix = plan.started_at_unix or time.time()
    plan.resumable = plan.resumable or resume
    done = result_path(Path(plan.results_dir), plan.recipe.name, plan.run_id)
    if plan.resumable and done.is_file():
        return done
    if not checked:
        check(plan.recipe, plan.results_dir)
    return _launch_processes(plan, role or MachineRole())


def write_launch_files(plan: Plan) -> tuple[Path, Path]:
    """The run folder's plan.json, deepspeed.json (if any) and accelerate.yaml; returns (config, plan) paths."""
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=plan.resumable)  # only a resumed attempt reuses its run folder
    plan_file = plan.write(run_dir / "plan.json")
    deepspeed_file = None
    if plan.recipe.hardware.deepspeed:
        deepspeed_file = run_dir / "deepspeed.json"
        deepspeed_file.write_text(json.dumps(deepspeed_config(plan.recipe), indent=2))
    config_file = run_dir / "accelerate.yaml"
    config_file.write_text(yaml.safe_dump(accelerate_config(plan.recipe, deepspeed_file), sort_keys=False))
    return config_file, plan_file


def _launch_processes(plan: Plan, role: MachineRole) -> Path | None:
    import torch
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    started_at, attempt_start = utc_now(), time.time()
    # one process has no torch elastic: its exception goes to a file of this attempt's own, as elastic's would
    error_file = plan.run_dir / f"error-{started_at.replace(':', '')}.json"
    config_file, plan_file = write_launch_files(plan)
    args = launch_command_parser().parse_args(
        launch_arguments(config_file, plan_file, role.machine_rank, role.main_process_ip, role.main_process_port)
    )
    threads = cpu_threads_per_process(plan.recipe, torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))
    env = {LAUNCHED_ENV: "1", "OMP_NUM_THREADS": threads}
    if not plan.recipe.hardware.distributed:
        env["TORCHELASTIC_ERROR_FILE"] = str(error_file)
    if plan.recipe.hardware.device == "cpu" and not plan.recipe.hardware.deepspeed:
        # gloo on CPU; without it each process would train alone. (DeepSpeed on CPU sets up gloo itself, and
        # accelerate would drop DeepSpeed for this flag.)
        env["ACCELERATE_USE_CPU"] = "1"
    try:
        with launch_environment(env):
            # torch elastic (several processes, DeepSpeed, FSDP) passes a signal on to its workers itself
            launch_command(args) if plan.recipe.hardware.distributed else launch_one_process(args)
    except (SignalException, StoppedFromOutside) as stop:
        stopped(plan, role, started_at, stop.sigval.name if isinstance(stop, SignalException) else stop.signal_name)
    except (ChildFailedError, subprocess.CalledProcessError) as failure:
        error = failure_info(failure, error_file)
        note = exception_note(plan.run_dir, error["rank"], since=attempt_start) or {}
        error.update({k: v for k, v in note.items() if k not in error or k == "type"})  # the worker's exception type
        if error["exitcode"] == BAD_INPUT_EXIT and error["signal"] is None:
            raise HarnessError(f"run {plan.run_id} stopped on bad input: its error is printed above") from None
        signal_name = error["signal"] or signal_of_exit_code(error["exitcode"])
        if signal_name in INTERRUPTING_SIGNALS:  # a worker stopped from outside (and, if it could, recorded it)
            stopped(plan, role, started_at, signal_name)
        path = record_failure(plan, started_at, error) if role.machine_rank == 0 else None
        message = f"run {plan.run_id}: rank {error['rank']} failed (exit code {error['exitcode']}); result: {path}"
        raise RunFailed(message, path) from None
    if role.machine_rank != 0:
        return None
    return locate_result(Path(plan.results_dir), plan.recipe.name, plan.run_id) or result_path(
        Path(plan.results_dir), plan.recipe.name, plan.run_id
    )


class StoppedFromOutside(Exception):
    """This process received a stop signal while its one worker ran (and passed it on)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


def launch_one_process(args: Any) -> None:
    """accelerate's one-process launch, with the worker in a session of its own: a Ctrl-C at the terminal reaches
    it once, passed on by this process, which also passes on a SIGTERM sent to it alone (accelerate's launch
    would leave the worker running). A second Ctrl-C, passed on too, stops the worker at once."""
    from accelerate.commands.launch import _validate_launch_command
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    args, _, _ = _validate_launch_command(args)  # fills the arguments from the run's accelerate.yaml
    command, env = prepare_simple_launcher_cmd_env(args)
    worker = subprocess.Popen(command, env=env, start_new_session=True)
    received: list[str] = []

    def pass_on(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        worker.send_signal(signum)

    for name in INTERRUPTING_SIGNALS:
        signal.signal(signal.Signals[name], pass_on)  # launch_environment restores the handlers afterwards
    worker.wait()
    if received:
        raise StoppedFromOutside(received[0])
    if worker.returncode:
        raise subprocess.CalledProcessError(worker.returncode, command)


def stopped(plan: Plan, role: MachineRole, started_at: str, signal_name: str) -> None:
    """A run stopped by a signal: a resumable one is tried again (it resumes); otherwise its result is what the
    worker recorded, or, if the worker could not record it (stopped at once), an interrupted result here."""
    if plan.resumable:
        raise RunInterrupted(f"run {plan.run_id}: stopped by {signal_name}") from None
    path = locate_result(Path(plan.results_dir), plan.recipe.name, plan.run_id)
    if path is None and role.machine_rank == 0:
        path = record_failure(plan, started_at, {"type": "Interrupted", "signal": signal_name, "rank": None,
                                                 "message": f"stopped by {signal_name} before it could record its "
                                                            "progress"}, status="interrupted")  # fmt: skip
    raise RunStopped(f"run {plan.run_id}: stopped by {signal_name}; result: {path}", path, signal_name) from None


@contextlib.contextmanager
def launch_environment(settings: dict[str, str]):
    """This process's environment with settings laid over it for one launch, and afterwards exactly as it was:
    torch elastic sets OMP_NUM_THREADS in its parent's environment, which would otherwise reach the next run,
    and leaves its signal handlers installed, which would turn a later Ctrl-C into its SignalException."""
    saved = dict(os.environ)
    handlers = {name: signal.getsignal(signal.Signals[name]) for name in ELASTIC_SIGNALS}
    os.environ.update(settings)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for name, handler in handlers.items():
            signal.signal(signal.Signals[name], handler)


def failure_info(failure: Exception, error_file: Path) -> dict[str, Any]:
    """What failed where, from torch elastic's record of the first failing rank (several processes) or from the
    one process's exit code and error file."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    if isinstance(failure, ChildFailedError):
        rank, info = failure.get_first_failure()
        failed_ranks = sorted(failure.failures)
    else:
        rank, failed_ranks = 0, [0]
        info = ProcessFailure(local_rank=0, pid=-1, exitcode=failure.returncode, error_file=str(error_file))
    # an exception's error file holds {"message": "Type: text", "extraInfo": {"py_callstack": ...}}
    recorded = info.message if isinstance(info.message, dict) else {"message": info.message}
    callstack = recorded.get("extraInfo", {}).get("py_callstack", "")
    signal_name = info.signal_name() if info.exitcode < 0 else None
    return {
        "type": "Killed" if signal_name else type(failure).__name__,  # a worker's own exception type replaces it
        "rank": rank,
        "exitcode": info.exitcode,
        "signal": signal_name,
        "message": str(recorded["message"])[:MAX_MESSAGE],
        "traceback": callstack.strip().splitlines()[-6:],
        "failed_ranks": failed_ranks,
    }
