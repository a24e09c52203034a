"""harness find-batch: the search (by hand, with a fake try), one try's verdict from the launcher, the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import find_batch as fb
from harness import launcher
from harness.cli import main
from harness.errors import HarnessError
from harness.launcher import RunFailed
from harness.recipe import load_recipe


def fits_below(limit: int):
    return lambda size: size < limit


def test_doubling_then_bisecting_by_hand():
    result = fb.search(fits_below(48))
    assert [size for size, _ in result.tries] == [8, 16, 32, 64, 48, 40, 44, 46, 47]
    assert [ok for _, ok in result.tries] == [True, True, True, False, False, True, True, True, True]
    assert result.answer == 47


def test_a_start_that_does_not_fit_bisects_below_it():
    result = fb.search(fits_below(6), start=8)
    assert [size for size, _ in result.tries] == [8, 4, 6, 5]
    assert result.answer == 5


def test_the_maximum_caps_the_doubling():
    result = fb.search(lambda size: True, start=8, maximum=100)
    assert [size for size, _ in result.tries] == [8, 16, 32, 64, 100] and result.answer == 100
    assert fb.search(fits_below(90), start=8, maximum=100).answer == 89


def test_nothing_fits():
    result = fb.search(lambda size: False, start=4)
    assert [size for size, _ in result.tries] == [4, 2, 1] and result.answer is None


def test_a_start_above_the_maximum_is_refused():
    with pytest.raises(HarnessError, match="--start 64"):
        fb.search(lambda size: True, start=64, maximum=32)


def test_a_try_is_short_and_a_synthetic_one_is_its_worst_case():
    recipe = load_recipe("bert-shape-synthetic-cpu")
    tried = fb.try_recipe(recipe, 16, steps=3)
    assert tried.train.batch_size == 16 and tried.train.max_steps == 3
    assert tried.train.eval_strategy == "no" and not tried.train.save_best
    lengths = tried.data.synthetic.lengths
    assert (lengths.distribution, lengths.length) == ("fixed", 128)  # the recipe's normal lengths reach 128
    assert tried.data.synthetic.train_samples == 48
    files = fb.try_recipe(load_recipe("minilm-banking77-cpu"), 8)
    assert files.data.test_file is None and files.data.train_file == "tests/data/banking77_10/train.csv"


def failing_launch(error_type: str, seen: list):
    """A launcher.launch stand-in that records the plan and fails as a run whose result says error_type."""

    def launch(plan, *args, **kwargs):
        seen.append(plan)
        path = Path(plan.results_dir) / "failed.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"status": "failed", "error": {"type": error_type, "message": "boom"}}))
        raise RunFailed(f"run {plan.run_id}: rank 0 failed", path)

    return launch


def test_run_try_reads_out_of_memory_from_the_recorded_result(monkeypatch):
    seen: list = []
    monkeypatch.setattr(launcher, "launch", failing_launch("OutOfMemory", seen))
    recipe = load_recipe("bert-shape-synthetic-cpu")
    assert fb.run_try(recipe, 64) is False
    (plan,) = seen
    assert plan.recipe.train.batch_size == 64 and plan.recipe.train.max_steps == fb.TRY_STEPS
    assert "harness-find-batch-" in plan.results_dir and not Path(plan.results_dir).parent.exists()  # removed


def test_run_try_stops_on_any_other_failure(monkeypatch):
    monkeypatch.setattr(launcher, "launch", failing_launch("ValueError", []))
    with pytest.raises(HarnessError, match="batch size 8 failed with ValueError: boom"):
        fb.run_try(load_recipe("bert-shape-synthetic-cpu"), 8)


def test_run_try_fits_when_the_run_completes(monkeypatch):
    monkeypatch.setattr(launcher, "launch", lambda plan, *a, **k: Path(plan.results_dir) / "done.json")
    assert fb.run_try(load_recipe("bert-shape-synthetic-cpu"), 8) is True


def test_the_command_prints_each_try_and_the_answer(monkeypatch, capsys):
    """The real try path up to the launcher: out of memory above 24 samples per batch."""

    def launch(plan, *args, **kwargs):
        if plan.recipe.train.batch_size > 24:
            return failing_launch("OutOfMemory", [])(plan)
        return Path(plan.results_dir) / "done.json"

    monkeypatch.setattr(launcher, "launch", launch)
    assert main(["find-batch", "bert-shape-synthetic-cpu", "--start", "8", "--max", "64"]) == 0
    out = capsys.readouterr().out
    assert "try batch_size=8: fits" in out and "try batch_size=32: out of memory" in out
    assert "largest train.batch_size that fits: 24 (" in out


def test_the_command_exits_1_when_nothing_fits(monkeypatch, capsys):
    monkeypatch.setattr(fb, "run_try", lambda recipe, size, steps: False)
    assert main(["find-batch", "bert-shape-synthetic-cpu", "--start", "2"]) == 1
    assert "no batch size fits" in capsys.readouterr().out


@pytest.mark.slow
def test_a_real_try_on_cpu():
    tiny = "model.config_overrides={num_hidden_layers: 1, hidden_size: 64, intermediate_size: 128, num_attention_heads: 4}"
    recipe = load_recipe("bert-shape-synthetic-cpu", [tiny])
    assert fb.run_try(recipe, 4, steps=2) is True
