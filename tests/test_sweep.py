"""`harness sweep`: the cells of a recipe's `sweep:` axes, skipped where this machine cannot run them, each run
in processes of its own, a failed run isolated, a stop ending the sweep, completed cells not run again.

The unit tests stand a fake in for the processes of each run (launcher._launch_processes); the checks before
the first run (launcher.check: stack, folders, data) are the real ones. The last test sweeps the packaged MiniLM
for real."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from harness import launcher
from harness.cli import main
from harness.errors import HarnessError
from harness.launcher import RunFailed, RunStopped
from harness.plan import make_plan
from harness.recipe import RecipeError, load_recipe, load_sweep
from harness.results import RunResult, find_result_files, load_result, save_result, utc_now
from harness.sweep import sweep_exit_code

SMOKE = "minilm-banking77-cpu"


def recipe_file(folder: Path, sweep: dict | None, name: str = "swept", **sections) -> str:
    """The smoke recipe with the given sweep and sections laid over it; checkpoints inside folder."""
    content = {"extends": SMOKE, **sections, "output": {"checkpoints_dir": str(folder / "checkpoints")}}
    if sweep is not None:
        content["sweep"] = sweep
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return str(path)


def fake_result(plan, status: str = "completed", error: dict | None = None) -> Path:
    """A result file as a run of the plan would leave it (no numbers: the sweep reads status and hash)."""
    result = RunResult(run_id=plan.run_id, kind="train", status=status, recipe_name=plan.recipe.name,
                       recipe_hash=plan.recipe.hash, recipe=plan.recipe.to_dict(), started_at=utc_now(),
                       finished_at=utc_now(), error=error, repeats=plan.repeats)  # fmt: skip
    return save_result(Path(plan.results_dir), result)


class FakeRuns:
    """Stands in for the processes of each run: records its plan and what the command printed before it
    started, then completes the run, or raises the exception `outcome(plan)` returns."""

    def __init__(self, capsys, outcome=lambda plan: None):
        self.capsys, self.outcome = capsys, outcome
        self.plans, self.printed_before = [], []

    def __call__(self, plan, role):
        self.plans.append(plan)
        self.printed_before.append(self.capsys.readouterr().out)
        failure = self.outcome(plan)
        if failure:
            raise failure
        return fake_result(plan)


@pytest.fixture
def fake_runs(monkeypatch, capsys):
    def install(outcome=lambda plan: None) -> FakeRuns:
        fake = FakeRuns(capsys, outcome)
        monkeypatch.setattr(launcher, "_launch_processes", fake)
        return fake

    return install


def sweep(path: str, results: Path, *options: str) -> int:
    return main(["sweep", path, "--results-dir", str(results), *options])


def statuses(out: str) -> list[str]:
    """The status column of the summary table printed in out (the last, aligned under its header)."""
    header, *rows = out[out.index("\ncell ") + 1 :].split("\n\n")[0].splitlines()
    return [row[header.index("status") :] for row in rows]


# --------------------------------------------------------------------------- cells


def test_cells_are_the_product_of_the_axes_in_their_order(tmp_path):
    axes = {"precision.dtype": ["fp32", "bf16"], "model.attn_implementation": ["sdpa", "eager"],
            "train.batch_size": [16, 32, 64]}  # fmt: skip
    cells = load_sweep(recipe_file(tmp_path, axes)).cells
    assert [list(cell.settings.values()) for cell in cells] == [
        [dtype, attn, batch] for dtype in ["fp32", "bf16"] for attn in ["sdpa", "eager"] for batch in [16, 32, 64]
    ]
    assert cells[5].label == "precision.dtype=fp32 model.attn_implementation=eager train.batch_size=64"
    recipe = cells[5].recipe
    assert (recipe.precision.dtype, recipe.model.attn_implementation, recipe.train.batch_size) == ("fp32", "eager", 64)
    assert recipe.data.max_length == 128 and recipe.train.learning_rate == 1e-4  # the rest as the recipe says
    assert len({cell.recipe.hash for cell in cells}) == 12


def test_a_cells_hash_is_that_of_its_recipe_written_without_the_sweep(tmp_path):
    swept = load_sweep(recipe_file(tmp_path, {"train.batch_size": [16, 64], "model.config_overrides": [{}]}))
    by_hand = load_recipe(recipe_file(tmp_path, None, train={"batch_size": 64}))
    assert swept.cells[1].recipe.hash == by_hand.hash
    assert "sweep" not in swept.cells[1].recipe.to_dict() and "sweep" not in swept.base.to_dict()
    assert swept.base.hash == load_recipe(recipe_file(tmp_path, None)).hash  # the base: the recipe without sweep
    # `harness run` on a sweep recipe runs its base, once
    assert load_recipe(recipe_file(tmp_path, {"train.batch_size": [16, 64]})).train.batch_size == 32


@pytest.mark.parametrize(
    ("axes", "overrides", "expected"),
    [
        ({"train.batch_size": [16, 0]}, [],
         "sweep cell 2 of 2 (train.batch_size=0): train.batch_size: must be at least 1"),
        ({"data.padding": ["batch"], "train.batchsize": [16]}, [],
         "sweep cell 1 of 1 (data.padding=batch train.batchsize=16): train.batchsize: unknown key; "
         "did you mean 'train.batch_size'?"),
        ({"precision.dtype": ["fp32", "bf16"], "model.attn_implementation": ["flash_attention_2"]}, [],
         "sweep cell 1 of 2 (precision.dtype=fp32 model.attn_implementation=flash_attention_2): precision.dtype: "
         "flash_attention_2 runs only in fp16 or bf16"),
        ({"train.batch_size.x": [1]}, [],
         "sweep cell 1 of 1 (train.batch_size.x=1): sweep.train.batch_size.x: 'train.batch_size' is not a section"),
        ({"train.batch_size": 16}, [], "sweep.train.batch_size: got 16; expected a list of one or more values"),
        ({"train.batch_size": []}, [], "sweep.train.batch_size: got []; expected a list of one or more values"),
        ({}, [], "sweep: got {}; expected a mapping of dotted keys to lists of values"),
        ({"train.batch_size": [16, 32, 16]}, [],
         "sweep: cells 1 (train.batch_size=16) and 3 (train.batch_size=16) resolve to the same recipe"),
        ({"train.batch_size": [16]}, ["train.batch_size=8"],
         "sweep.train.batch_size: --set 'train.batch_size=8' sets what this axis sets; drop one of the two"),
    ],
)  # fmt: skip
def test_a_sweep_that_cannot_run_names_the_axis_key_and_the_cell(tmp_path, axes, overrides, expected):
    path = recipe_file(tmp_path, axes)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    assert str(info.value).startswith(f"{path}: {expected}")


def test_validate_checks_every_cell(tmp_path, capsys):
    good = recipe_file(tmp_path, {"train.batch_size": [16, 64], "data.padding": ["batch", "chunk"]}, name="good")
    bad = recipe_file(tmp_path, {"train.batch_size": [16, 64], "data.padding": ["batch", "chunks"]}, name="bad")
    assert main(["validate", good]) == 0
    assert main(["validate", bad]) == 1
    out = capsys.readouterr().out
    assert "sweep cell 2 of 4 (train.batch_size=16 data.padding=chunks): data.padding: got 'chunks'" in out


# --------------------------------------------------------------------------- before anything runs


def test_an_impossible_cell_is_listed_skipped_before_anything_runs(tmp_path, fake_runs, capsys):
    fake = fake_runs()
    path = recipe_file(tmp_path, {"precision.dtype": ["fp16", "fp32"]})
    assert sweep(path, tmp_path / "results") == 0
    assert [plan.recipe.precision.dtype for plan in fake.plans] == ["fp32"]  # no process for fp16
    reason = "precision.dtype: fp16 mixed precision needs a CUDA GPU; on CPU use bf16 or fp32"
    assert f"skipped: cell 1 (precision.dtype=fp16): {reason}" in fake.printed_before[0]
    assert statuses(capsys.readouterr().out) == [f"skipped: {reason}", "completed"]


def test_a_sweep_no_cell_of_which_can_run_is_refused(tmp_path, fake_runs, capsys):
    fake = fake_runs()
    path = recipe_file(tmp_path, {"precision.dtype": ["fp16"], "data.max_length": [128, 1024]})
    assert sweep(path, tmp_path / "results") == 2
    assert fake.plans == []
    err = capsys.readouterr().err
    assert "no cell of the sweep can run here" in err and "fp16 mixed precision needs a CUDA GPU" in err
    assert "data.max_length: 1024 is longer than the model takes" in err


@pytest.mark.parametrize(
    ("axes", "overrides", "expected"),
    [
        ({"train.batch_size": [16, 32]}, ["data.train_file=missing.csv"],
         "data.train_file: missing.csv does not exist"),
        ({"data.text_column": ["text", "utterance"]}, [],
         "sweep cell 2 (data.text_column=utterance): data.text_column: column 'utterance' is not in the train split"),
    ],
)  # fmt: skip
def test_bad_input_refuses_the_whole_sweep(tmp_path, fake_runs, capsys, axes, overrides, expected):
    fake = fake_runs()
    sets = [option for text in overrides for option in ("--set", text)]
    assert sweep(recipe_file(tmp_path, axes), tmp_path / "results", *sets) == 2
    assert fake.plans == []
    assert expected in capsys.readouterr().err


def test_a_recipe_without_a_sweep_is_refused(tmp_path, fake_runs, capsys):
    fake = fake_runs()
    assert sweep(recipe_file(tmp_path, None), tmp_path / "results") == 2
    assert fake.plans == [] and "has no sweep: section" in capsys.readouterr().err


# --------------------------------------------------------------------------- re-running


def test_a_cell_with_a_completed_result_of_its_hash_is_not_run_again(tmp_path, fake_runs, capsys):
    path, results = recipe_file(tmp_path, {"train.batch_size": [16, 32, 64]}), tmp_path / "results"
    cells = load_sweep(path).cells
    plans = [make_plan(cell.recipe, results_dir=str(results)) for cell in cells]
    done = fake_result(plans[0])
    fake_result(plans[1], status="failed", error={"type": "ValueError"})  # failed: run again
    (results / "swept" / "truncated.json").write_text('{"schema_version": "2.1", "run_')  # passed over
    fake = fake_runs()
    assert sweep(path, results) == 0
    assert [plan.recipe.train.batch_size for plan in fake.plans] == [32, 64]
    out = capsys.readouterr().out
    assert statuses(out) == ["already done", "completed", "completed"] and str(done) in out
    fake = fake_runs()
    assert sweep(path, results, "--rerun") == 0
    assert [plan.recipe.train.batch_size for plan in fake.plans] == [16, 32, 64]


def test_the_seeds_left_of_a_cell_join_its_repeats_group(tmp_path, fake_runs):
    path, results = recipe_file(tmp_path, {"train.batch_size": [16, 32]}), tmp_path / "results"
    fake = fake_runs(lambda plan: RunStopped("stopped", fake_result(plan, "interrupted"), "SIGINT")
                     if plan.recipe.train.seed == 43 else None)  # fmt: skip
    assert sweep(path, results, "--repeats", "2") == 130
    assert [(plan.recipe.train.batch_size, plan.recipe.train.seed) for plan in fake.plans] == [(16, 42), (16, 43)]
    first_group = fake.plans[0].repeats["group"]
    fake = fake_runs()
    assert sweep(path, results, "--repeats", "2") == 0
    assert [(plan.recipe.train.batch_size, plan.recipe.train.seed) for plan in fake.plans] == [
        (16, 43), (32, 42), (32, 43)]  # fmt: skip
    assert fake.plans[0].repeats == {"group": first_group, "index": 1, "count": 2}
    assert fake.plans[1].repeats["group"] == fake.plans[2].repeats["group"] != first_group


# --------------------------------------------------------------------------- failures, stops, exit codes


def test_failed_runs_do_not_stop_the_sweep_and_are_counted(tmp_path, fake_runs, capsys):
    def failing(plan):
        if plan.recipe.train.batch_size == 32:  # a worker that stopped on bad input only it could see
            return HarnessError("run stopped on bad input: its error is printed above")
        if plan.recipe.train.batch_size == 64:
            error = {"type": "OutOfMemory", "phase": "training", "batch_size": 64}
            return RunFailed("out of memory", fake_result(plan, "failed", error))

    fake = fake_runs(failing)
    assert sweep(recipe_file(tmp_path, {"train.batch_size": [16, 32, 64, 8]}), tmp_path / "results") == 2
    assert [plan.recipe.train.batch_size for plan in fake.plans] == [16, 32, 64, 8]
    assert statuses(capsys.readouterr().out) == [
        "completed", "failed: bad input", "failed: OutOfMemory (training batch_size 64)", "completed"]  # fmt: skip


def test_a_stop_ends_the_sweep_with_the_signals_exit_code(tmp_path, fake_runs, capsys):
    fake = fake_runs(lambda plan: RunStopped("stopped", fake_result(plan, "interrupted"), "SIGTERM")
                     if plan.recipe.train.batch_size == 32 else None)  # fmt: skip
    assert sweep(recipe_file(tmp_path, {"train.batch_size": [16, 32, 64]}), tmp_path / "results") == 143
    assert [plan.recipe.train.batch_size for plan in fake.plans] == [16, 32]
    assert statuses(capsys.readouterr().out) == ["completed", "stopped: SIGTERM", "not started"]


def test_the_exit_code_counts_failed_runs_up_to_125():
    runs = [SimpleNamespace(status="failed")] * 200 + [SimpleNamespace(status="completed")]
    assert sweep_exit_code(runs[-3:], None) == 2
    assert sweep_exit_code(runs, None) == 125
    assert sweep_exit_code(runs[-1:], None) == 0
    assert sweep_exit_code(runs, "SIGINT") == 130


# --------------------------------------------------------------------------- for real


@pytest.mark.slow
def test_a_real_sweep_isolates_a_failing_cell_and_reruns_only_it(tmp_path, monkeypatch, capsys):
    """Four cells of the packaged MiniLM, one of which fails when its model is built (384 hidden units do not
    split into 5 heads): the others complete, and the same command again runs the failed cell only."""
    overrides = [{}, {"hidden_dropout_prob": 0.2}, {"num_attention_heads": 5}, {"attention_probs_dropout_prob": 0.2}]
    path = recipe_file(tmp_path, {"model.config_overrides": overrides}, train={"max_steps": 2},
                       data={"max_eval_samples": 30}, collector={"warmup_steps": 1})  # fmt: skip
    launched, real = [], launcher._launch_processes
    monkeypatch.setattr(launcher, "_launch_processes", lambda plan, role: launched.append(plan) or real(plan, role))
    results = tmp_path / "results"
    assert sweep(path, results) == 1
    documents = {tuple(r["recipe"]["model"]["config_overrides"]): r
                 for r in map(load_result, find_result_files([results]))}  # fmt: skip
    assert {key: r["status"] for key, r in documents.items()} == {
        (): "completed", ("hidden_dropout_prob",): "completed", ("num_attention_heads",): "failed",
        ("attention_probs_dropout_prob",): "completed"}  # fmt: skip
    assert documents[("num_attention_heads",)]["error"]["type"] == "ValueError"
    assert statuses(capsys.readouterr().out) == ["completed", "completed", "failed: ValueError", "completed"]
    assert sweep(path, results) == 1
    assert [plan.recipe.model.config_overrides for plan in launched] == [*overrides, {"num_attention_heads": 5}]
    assert statuses(capsys.readouterr().out) == ["already done", "already done", "failed: ValueError", "already done"]
