"""Two machines simulated on one host: one process each (gloo on CPU), each machine in a working folder of its
own, so nothing is shared but the process group, as on machines with node-local disks. A run that saves its best
checkpoint and tests it completes, and a resumable run killed after its first epoch resumes on both machines to
the same model as a run never killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.plan import make_plan
from harness.recipe import load_recipe
from harness.results import load_result

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parent / "data" / "banking77_10"
TWO_MACHINES = [
    "hardware.device=cpu", "hardware.num_processes=2", "hardware.num_machines=2",
    "train.batch_size=16", "data.max_train_samples=96", "data.max_eval_samples=40", "collector.warmup_steps=0",
    f"data.train_file={DATA / 'train.csv'}", f"data.validation_file={DATA / 'test.csv'}",
    f"data.test_file={DATA / 'test.csv'}",
]  # fmt: skip
STEPS_PER_EPOCH = 96 // (16 * 2)

# one machine's launcher: the plan (relative output folders: this machine's working folder), its rank, a port
MACHINE = """
import sys
from harness.launcher import MachineRole, launch
from harness.plan import Plan
role = MachineRole(int(sys.argv[2]), "127.0.0.1", int(sys.argv[3]))
launch(Plan.read(sys.argv[1]), role, resume=sys.argv[4] == "resume")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_plan(folder: Path, *overrides: str) -> Path:
    """A plan whose results and checkpoints folders are relative: each machine writes into its own folder."""
    recipe = load_recipe("minilm-banking77-cpu", [*TWO_MACHINES, *overrides])
    plan = make_plan(recipe, results_dir="results")
    return plan.write(folder / f"{plan.run_id}.plan.json")


def start_machines(plan_file: Path, machines: list[Path], mode: str) -> list[subprocess.Popen]:
    port = str(free_port())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-c", MACHINE, str(plan_file)]
    return [subprocess.Popen([*command, str(rank), port, mode], cwd=folder, env=env, start_new_session=True)
            for rank, folder in enumerate(machines)]  # fmt: skip


def finish(processes: list[subprocess.Popen]) -> None:
    assert [p.wait(timeout=600) for p in processes] == [0, 0]


def machines_in(folder: Path) -> list[Path]:
    machines = [folder / "machine0", folder / "machine1"]
    for machine in machines:
        machine.mkdir(parents=True)
    return machines


def the_result(machines: list[Path]) -> dict:
    """Machine 0 writes the run's one result; machine 1 writes none."""
    (path,) = (machines[0] / "results").rglob("*.json")
    assert not list(machines[1].glob("results/**/*.json"))
    return load_result(path)


def test_two_machines_without_a_shared_disk_test_their_best_checkpoint(tmp_path):
    """The best checkpoint exists on machine 0 only; its weights reach machine 1 over the process group."""
    machines = machines_in(tmp_path)
    plan = write_plan(tmp_path, "train.max_steps=6", "train.eval_strategy=steps", "train.eval_steps=3")
    finish(start_machines(plan, machines, "once"))
    result = the_result(machines)
    assert result["status"] == "completed" and result["ran"]["world_size"] == 2 and result["ran"]["num_machines"] == 2
    assert result["training"]["test_from"] == "best_checkpoint"
    assert (machines[0] / result["training"]["best"]["checkpoint"] / "model.safetensors").is_file()
    assert not (machines[1] / result["training"]["best"]["checkpoint"]).exists()  # never written on machine 1


def test_a_killed_two_machine_run_resumes_on_both_from_their_own_saved_state(tmp_path):
    reference_machines = machines_in(tmp_path / "reference")
    finish(start_machines(write_plan(tmp_path, "train.epochs=2"), reference_machines, "resume"))
    reference = the_result(reference_machines)

    machines = machines_in(tmp_path / "killed")
    plan_file = write_plan(tmp_path, "train.epochs=2")
    processes = start_machines(plan_file, machines, "resume")
    run = Path("checkpoints", "minilm-banking77-cpu", plan_file.name.removesuffix(".plan.json"))
    saved = [machine / run / f"state-machine{rank}" / "progress.json" for rank, machine in enumerate(machines)]
    deadline = time.monotonic() + 300
    while not all(p.is_file() for p in saved):  # the first epoch saved on each machine, in its own folder
        assert all(p.poll() is None for p in processes) and time.monotonic() < deadline
        time.sleep(0.05)
    for process in processes:  # the launchers die at once; their workers follow (they watch their parent)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    time.sleep(2)
    assert not list(machines[0].glob("results/**/*.json"))  # killed: no result yet

    finish(start_machines(plan_file, machines, "resume"))
    resumed = the_result(machines)
    assert resumed["status"] == "completed" and resumed["training"]["resumed_from_step"] == STEPS_PER_EPOCH
    assert resumed["training"]["optimizer_steps"] == 2 * STEPS_PER_EPOCH
    for key in ("accuracy", "f1_macro", "loss"):  # same RNG, optimizer and scheduler state on both machines
        for split in ("validation", "test"):
            assert resumed["accuracy"][split][key] == pytest.approx(reference["accuracy"][split][key], abs=1e-6)
