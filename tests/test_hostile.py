"""A hostile but realistic user: one test per kind of bad input or interruption, through the `harness` command.

Each asserts the exit code, that the message names the file or key and the fix, that nothing is written outside
the run's folders and that nothing already written is lost. The unit-level cases live beside their modules
(tests/test_recipe.py: recipe files and --set values; tests/test_data.py and tests/test_inference_input.py: data
files; tests/test_compare.py and tests/test_results.py: result files); this module checks the command's answer.
Runs stopped by a signal are real processes stopped by a real signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from harness import data as data_module
from harness import preflight as pf
from harness import results
from harness.cli import main
from harness.recipe import load_recipe
from harness.results import RunResult, load_result, locate_result, save_result

REPO = Path(__file__).resolve().parents[1]
BANKING = REPO / "tests" / "data" / "banking77_10"
SMOKE = "minilm-banking77-cpu"
HARNESS = [sys.executable, "-m", "harness"]


def recipe_file(folder: Path, name: str = "hostile", **sections) -> Path:
    """The smoke recipe with its output inside folder and the given sections laid over it."""
    content = {"extends": SMOKE, "output": {"results_dir": str(folder / "results"),
                                            "checkpoints_dir": str(folder / "checkpoints")}}  # fmt: skip
    for key, value in sections.items():
        content[key] = {**content.get(key, {}), **value}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def files_under(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def earlier_run(tmp_path) -> Path:
    """A result written before the hostile command: it must survive untouched."""
    result = RunResult(run_id="20260101T000000Z-hostile-aaaaaa", kind="train", status="completed",
                       recipe_name="hostile", recipe_hash="0" * 12, recipe={}, started_at="", finished_at="")  # fmt: skip
    return save_result(tmp_path / "results", result)


def refused(argv: list[str], capsys, *named: str) -> str:
    """Run the command, expect exit code 2 (bad input), and the message naming every string in `named`."""
    assert main(argv) == 2
    message = capsys.readouterr().err
    for text in named:
        assert text in message, (text, message)
    return message


def assert_nothing_lost_or_escaped(tmp_path: Path, before: dict[Path, bytes]) -> None:
    after = files_under(tmp_path)
    assert all(after.get(path) == content for path, content in before.items())  # nothing lost or changed
    for path in set(after) - set(before):  # anything new lies inside the run's folders
        assert path.is_relative_to(tmp_path / "results") or path.is_relative_to(tmp_path / "checkpoints"), path


# --------------------------------------------------------------------------- names and output folders


@pytest.mark.parametrize("how", ["file", "set"])
def test_a_name_that_escapes_the_output_folders_is_refused(tmp_path, capsys, earlier_run, how):
    before = files_under(tmp_path)
    if how == "file":
        path = recipe_file(tmp_path)
        path.write_text(path.read_text() + "name: ../../../../elsewhere/pwn\n")
        argv = ["run", str(path)]
    else:
        argv = ["run", str(recipe_file(tmp_path)), "--set", "name=../../escaped"]
    refused(argv, capsys, "name:", "letters, digits")
    assert_nothing_lost_or_escaped(tmp_path, before | files_under(tmp_path))


def test_every_path_written_stays_inside_its_folder(tmp_path):
    """The last line of defence behind the name rule: result, predictions and checkpoint paths are checked."""
    assert results.result_path(tmp_path, "recipe", "run") == tmp_path / "recipe" / "run.json"
    for parts in (("..", "x"), ("a/../../b", "x"), ("/etc", "x"), ("ok", "../up")):
        with pytest.raises(results.HarnessError, match="must stay inside"):
            results.inside(tmp_path, *parts)


@pytest.mark.parametrize("key", ["results_dir", "checkpoints_dir"])
def test_an_output_folder_that_cannot_be_written_is_found_before_the_data(tmp_path, capsys, earlier_run,
                                                                          monkeypatch, key):  # fmt: skip
    """A folder under a regular file: refused before the data load (which would take seconds), not after training."""
    (tmp_path / "a-file").write_text("not a folder")
    before = files_under(tmp_path)
    monkeypatch.setattr(data_module, "load_raw", lambda spec: pytest.fail("data loaded before the check"))
    recipe = recipe_file(tmp_path, output={key: str(tmp_path / "a-file" / "inside")})
    refused(["run", str(recipe)], capsys, f"output.{key}:", "a-file/inside", f"--set output.{key}=")
    assert_nothing_lost_or_escaped(tmp_path, before | {recipe: recipe.read_bytes()})


def test_a_result_that_cannot_be_written_at_the_end_goes_to_a_fallback_folder(tmp_path, monkeypatch, capsys):
    """The results folder went away during the run (a lost mount, a full disk): the numbers are kept elsewhere
    and the warning says where; the launcher finds them there."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "lost-mount").write_text("")
    result = RunResult(run_id="r1", kind="train", status="completed", recipe_name="hostile", recipe_hash="0" * 12,
                       recipe={}, started_at="", finished_at="")  # fmt: skip
    path = save_result(tmp_path / "lost-mount" / "results", result)
    assert path == tmp_path / "home" / ".cache" / "harness" / "unsaved-results" / "hostile" / "r1.json"
    assert load_result(path)["run_id"] == "r1"
    warning = capsys.readouterr().err
    assert "lost-mount/results cannot be written" in warning and str(path) in warning
    assert locate_result(tmp_path / "lost-mount" / "results", "hostile", "r1") == path


# --------------------------------------------------------------------------- the model


def test_a_model_path_that_does_not_exist_says_so_before_the_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data_module, "load_raw", lambda spec: pytest.fail("data loaded before the check"))
    recipe = recipe_file(tmp_path, model={"name": "./models/my-finetuned-bert"})
    refused(["run", str(recipe)], capsys, "model.name: ./models/my-finetuned-bert does not exist", "fix the path")


def test_a_folder_without_a_model_is_not_taken_for_one(tmp_path, capsys):
    (tmp_path / "empty-model").mkdir()
    recipe = recipe_file(tmp_path, model={"name": str(tmp_path / "empty-model")})
    refused(["run", str(recipe)], capsys, "empty-model is a folder without config.json")


def test_max_length_beyond_the_position_embeddings_is_refused_before_the_data(tmp_path, capsys, monkeypatch):
    """MiniLM has 512 positions: 1024 would validate, train, and crash at the first long text."""
    monkeypatch.setattr(data_module, "load_raw", lambda spec: pytest.fail("data loaded before the check"))
    recipe = recipe_file(tmp_path, data={"max_length": 1024})
    refused(["run", str(recipe)], capsys, "data.max_length: 1024", "512 tokens", "data.clamp_max_length: true")


def test_clamping_max_length_is_allowed_only_when_asked_and_recorded():
    recipe = load_recipe(SMOKE, ["data.max_length=1024", "data.clamp_max_length=true"])
    decisions = pf.preflight(recipe)
    assert decisions.max_length == 512
    assert {"what": "data.max_length", "requested": 1024, "used": 512}.items() <= decisions.fallbacks[0].items()


def test_position_limits_by_hand():
    """BERT: max_position_embeddings; RoBERTa's family starts after the padding index (514 - 1 - 1 = 512);
    DeBERTa-v3 has relative positions only (no limit of its own)."""
    from transformers import AutoConfig

    assert pf.position_limit(AutoConfig.for_model("bert")) == 512
    assert pf.position_limit(AutoConfig.for_model("roberta", max_position_embeddings=514, pad_token_id=1)) == 512
    assert pf.position_limit(AutoConfig.for_model("deberta-v2", position_biased_input=False)) is None
    assert pf.position_limit(AutoConfig.for_model("modernbert")) == 8192


# --------------------------------------------------------------------------- the data


def test_blank_labels_are_refused_naming_the_rows(tmp_path, capsys, earlier_run):
    rows = (BANKING / "train.csv").read_text().splitlines()
    rows[3] = rows[3].rsplit(",", 1)[0] + ","  # an empty label cell (row 2 of the data)
    rows[7] = rows[7].rsplit(",", 1)[0] + ",  "
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    before = files_under(tmp_path)
    recipe = recipe_file(tmp_path, data={"train_file": str(tmp_path / "train.csv")})
    refused(["run", str(recipe)], capsys, "train.csv", "label", "2, 6")
    assert_nothing_lost_or_escaped(tmp_path, before | {recipe: recipe.read_bytes()})


def test_an_unknown_recipe_key_is_refused_at_once_with_the_closest_key(tmp_path, capsys):
    """Already good before issue 8; must stay so: the key, the valid keys and a did-you-mean, without torch."""
    started = time.perf_counter()
    refused(["run", str(recipe_file(tmp_path, train={"learning_rte": 1e-4}))], capsys,
            "train.learning_rte: unknown key", "did you mean 'train.learning_rate'")  # fmt: skip
    assert time.perf_counter() - started < 1.0


def test_a_missing_data_file_names_the_field_and_the_override(tmp_path, capsys):
    recipe = recipe_file(tmp_path, data={"test_file": str(tmp_path / "missing.csv")})
    refused(["run", str(recipe)], capsys, "data.test_file:", "missing.csv does not exist", "--set data.test_file=")


# --------------------------------------------------------------------------- out of memory


def test_running_out_of_gpu_memory_is_a_failed_result_naming_the_batch(tmp_path, monkeypatch):
    """Injected on CPU: the first training forward raises torch's OutOfMemoryError, as CUDA's allocator would.
    The worker (here with your own launcher, in this process) records what ran out and the batch that did."""
    from harness import train

    recipe = recipe_file(tmp_path, train={"max_steps": 2, "batch_size": 8})
    model_forward = torch.nn.Module.__call__

    def out_of_memory(module, *args, **kwargs):
        if module.training and "labels" in kwargs:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return model_forward(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", out_of_memory)
    monkeypatch.delenv("HARNESS_LAUNCHED", raising=False)
    with pytest.raises(torch.OutOfMemoryError):
        train.main(["--recipe", str(recipe)])
    (path,) = (tmp_path / "results").rglob("*.json")
    error = load_result(path)["error"]
    assert load_result(path)["status"] == "failed"
    assert error["type"] == "OutOfMemory" and error["phase"] == "training" and error["batch_size"] == 8
    assert error["batch_shape"][0] == 8 and "Tried to allocate" in error["message"]


# --------------------------------------------------------------------------- stopped by a signal


def start(argv: list[str], tmp_path: Path) -> subprocess.Popen:
    """The command in a session of its own, as a terminal runs it (a signal goes to this process only)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(tmp_path / "log.txt", "w") as log:  # the child keeps its own copy of the file
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(pattern: str, folder: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        assert proc.poll() is None, (folder / "log.txt").read_text()[-3000:]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{pattern} never appeared")


def long_run(tmp_path: Path, **sections) -> Path:
    """A run far longer than the test: evaluated (and checkpointed) every 2 steps."""
    train = {"max_steps": 400, "batch_size": 8, "eval_strategy": "steps", "eval_steps": 2, "log_every_steps": 1}
    return recipe_file(tmp_path, train=train, data={"max_eval_samples": 40}, **sections)


def results_of(folder: Path) -> list[dict]:
    return [load_result(p) for p in sorted(folder.rglob("*.json")) if not p.name.startswith(".")]


@pytest.mark.slow
def test_ctrl_c_records_where_the_run_stopped_and_its_checkpoint(tmp_path, earlier_run):
    """Ctrl-C once: the run stops after the step in progress, and its result says so: the steps made, the loss
    and evaluations so far, and the best checkpoint it points at. Later runs of the command do not start."""
    recipe = long_run(tmp_path)
    proc = start([*HARNESS, "run", str(recipe), str(recipe)], tmp_path)
    wait_for("checkpoints/hostile/*/best", tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    stopped = [r for r in results_of(tmp_path / "results") if r["run_id"] != earlier_run.stem]
    (result,) = stopped  # the second run of the command never started
    assert result["status"] == "interrupted" and result["error"]["signal"] == "SIGINT"
    training = result["training"]
    assert 2 <= training["optimizer_steps"] < 400 and training["total_steps"] == 400
    assert training["evaluations"] and training["loss_history"][-1]["step"] <= training["optimizer_steps"]
    assert Path(training["best"]["checkpoint"], "model.safetensors").is_file()
    assert training["best"]["step"] == max(training["evaluations"], key=lambda e: e["f1_macro"])["step"]
    assert f"after step {training['optimizer_steps']} of 400" in result["error"]["message"]
    assert load_result(earlier_run)["status"] == "completed"


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_the_run_is_still_recorded(tmp_path):
    recipe = long_run(tmp_path)
    proc = start([*HARNESS, "run", str(recipe)], tmp_path)
    plan = wait_for("checkpoints/hostile/*/best", tmp_path, proc).parent / "plan.json"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert time.monotonic() - stopped_at < 15  # at once: no step or evaluation is waited for
    (result,) = results_of(tmp_path / "results")
    assert result["status"] == "interrupted" and result["error"]["signal"] == "SIGINT"
    time.sleep(1)
    workers = subprocess.run(["pgrep", "-f", str(plan)], capture_output=True, text=True, check=False).stdout.split()
    assert not workers  # no worker runs on alone


@pytest.mark.slow
def test_sigterm_stops_every_rank_after_the_same_step(tmp_path):
    """Two processes (gloo): a scheduler's SIGTERM to the launcher reaches both ranks through torch elastic;
    they agree on the step to stop after, so neither waits for the other, and rank 0 records it."""
    recipe = long_run(tmp_path, hardware={"num_processes": 2, "device": "cpu"})
    proc = start([*HARNESS, "run", str(recipe)], tmp_path)
    wait_for("checkpoints/hostile/*/best", tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    (result,) = results_of(tmp_path / "results")
    assert result["status"] == "interrupted" and result["error"]["signal"] == "SIGTERM"
    assert result["training"]["optimizer_steps"] >= 2
    assert "stopped by SIGTERM after step" in result["error"]["message"]
