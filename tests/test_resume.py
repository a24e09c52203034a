"""A resumable run interrupted after its first epoch continues from the saved state on the next attempt, and
ends where an uninterrupted run ends: whether its attempt crashed or was stopped by a signal."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import train
from harness.launcher import launch
from harness.plan import make_plan
from harness.recipe import load_recipe
from harness.results import load_result

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "banking77_10"
OVERRIDES = [
    "train.epochs=2", "train.batch_size=16", "data.max_train_samples=96", "data.max_eval_samples=60",
    f"data.validation_file={DATA / 'test.csv'}", "data.test_file=null", "collector.warmup_steps=0",
]  # fmt: skip


def plan_in(folder: Path):
    recipe = load_recipe("minilm-banking77-cpu", [*OVERRIDES, f"output.checkpoints_dir={folder / 'checkpoints'}"])
    return make_plan(recipe, results_dir=str(folder / "results"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run, never interrupted."""
    return load_result(launch(plan_in(tmp_path_factory.mktemp("reference"))))


def assert_same_model(resumed: dict, reference: dict) -> None:
    for key in ("accuracy", "f1_macro", "loss"):  # same RNG, optimizer and scheduler state: the same model
        assert resumed["accuracy"]["validation"][key] == pytest.approx(reference["accuracy"]["validation"][key],
                                                                       abs=1e-6), key  # fmt: skip


def test_an_interrupted_run_resumes_from_its_last_epoch(tmp_path, monkeypatch, reference):

    # the first attempt: the worker itself, in this process, stopped right after saving its first epoch
    plan = plan_in(tmp_path / "resumed")
    plan.resumable = True
    run_dir = plan.run_dir
    run_dir.mkdir(parents=True)
    save_progress = train.save_progress

    def preempted_after_first_epoch(*args):
        save_progress(*args)
        raise RuntimeError("container preempted")

    monkeypatch.setattr(train, "save_progress", preempted_after_first_epoch)
    with pytest.raises(RuntimeError, match="container preempted"):
        train.main(["--plan", str(plan.write(run_dir / "plan.json"))])
    (attempt,) = run_dir.glob("failed-attempt-*.json")  # kept beside the state, not in results/
    assert json.loads(attempt.read_text())["error"]["message"] == "container preempted"
    assert not Path(plan.results_dir, plan.recipe.name).exists()

    # the next attempt: launched as a retried container would launch it
    resumed = load_result(launch(plan, resume=True))
    steps_per_epoch = 96 // 16
    assert resumed["status"] == "completed" and resumed["run_id"] == plan.run_id
    assert resumed["training"]["resumed_from_step"] == steps_per_epoch
    assert resumed["training"]["optimizer_steps"] == 2 * steps_per_epoch
    assert len(resumed["training"]["step_log"]["samples"]) == steps_per_epoch  # only this attempt's steps timed
    assert [e["step"] for e in resumed["training"]["evaluations"]] == [steps_per_epoch, 2 * steps_per_epoch]
    assert_same_model(resumed, reference)
    assert launch(plan, resume=True) == Path(plan.results_dir, plan.recipe.name, f"{plan.run_id}.json")  # done


LAUNCH_RESUMABLE = """
import sys
from harness.launcher import RunInterrupted, launch
from harness.plan import Plan
try:
    launch(Plan.read(sys.argv[1]), resume=True)
except RunInterrupted:
    sys.exit(3)
"""


def test_a_run_stopped_by_ctrl_c_resumes_and_ends_as_an_uninterrupted_run(tmp_path, reference):
    """A real SIGINT to the launcher during the second epoch: the attempt records where it stopped in the run
    folder and is to be tried again; the next attempt continues from the first epoch's saved state."""
    plan = plan_in(tmp_path)
    plan.resumable = True
    plan.run_dir.mkdir(parents=True)
    plan_file = plan.write(tmp_path / "plan.json")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    attempt = subprocess.Popen([sys.executable, "-c", LAUNCH_RESUMABLE, str(plan_file)], env=env,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (plan.run_dir / "state" / "progress.json").is_file():  # the first epoch is saved
        assert attempt.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    attempt.send_signal(signal.SIGINT)
    assert attempt.wait(timeout=120) == 3  # RunInterrupted: try again
    (note,) = plan.run_dir.glob("interrupted-attempt-*.json")
    stopped = json.loads(note.read_text())
    assert stopped["status"] == "interrupted" and stopped["error"]["signal"] == "SIGINT"
    assert stopped["training"]["saved_state"] == str(plan.run_dir / "state")
    assert stopped["training"]["epochs_done"] == 1 and stopped["training"]["optimizer_steps"] >= 96 // 16
    assert not Path(plan.results_dir, plan.recipe.name).exists()

    resumed = load_result(launch(plan, resume=True))
    assert resumed["status"] == "completed" and resumed["training"]["resumed_from_step"] == 96 // 16
    assert_same_model(resumed, reference)
