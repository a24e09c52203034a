"""Time to target and GPU energy. On CPU there is no NVML counter, so a fake one stands in for it: a 100 W GPU
whose counter is the clock times 100. The measured window's energy must then be 100 W times the measured
steps' seconds (evaluations and warm-up left out), and the energy to target 100 W times the loop's wall time up to
the evaluation that reached it (evaluations included)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness import train
from harness.energy import EnergyMeter
from harness.recipe import RecipeError, load_recipe
from harness.results import load_result

DATA = Path(__file__).parent / "data" / "banking77_10"
WATTS = 100.0


def fake_gpu_counter(device: str):
    return lambda: time.perf_counter() * WATTS


def test_the_energy_window_adds_up_its_stretches_only():
    readings = iter([10.0, 15.0, 40.0, 42.0, 50.0, 57.0])
    meter = EnergyMeter(lambda: next(readings))
    meter.start_loop()  # 10
    meter.open_window()  # 15
    meter.pause()  # 40: 25 J of training
    meter.resume()  # 42 (an evaluation took 2 J)
    meter.pause()  # 50: 8 J more
    assert meter.window_joules() == 33.0
    assert meter.joules_since_loop_start() == 57.0 - 10.0  # everything since the loop began


def test_without_a_counter_every_energy_is_null():
    meter = EnergyMeter(None)
    meter.start_loop()
    meter.open_window()
    meter.pause()
    assert meter.window_joules() is None and meter.joules_since_loop_start() is None


def test_a_target_names_a_validation_metric_and_needs_evaluation():
    with pytest.raises(RecipeError, match="train.target.f1_makro: not a validation metric .did you mean 'f1_macro'"):
        load_recipe("minilm-banking77-cpu", ["train.target={f1_makro: 0.9}"])
    with pytest.raises(RecipeError, match="train.target: needs evaluation"):
        load_recipe("minilm-banking77-cpu", ["train.target={f1_macro: 0.9}", "train.eval_strategy=no",
                                             "train.save_best=false"])  # fmt: skip
    plain = load_recipe("minilm-banking77-cpu")
    assert load_recipe("minilm-banking77-cpu", ["train.target={f1_macro: 0.9}"]).hash == plain.hash  # an observer


def test_reaching_a_target_needs_every_metric():
    assert train.reaches({"f1_macro": 0.91, "loss": 0.4}, {"f1_macro": 0.9, "loss": 0.5})
    assert not train.reaches({"f1_macro": 0.91, "loss": 0.6}, {"f1_macro": 0.9, "loss": 0.5})  # loss: at most
    assert not train.reaches({"f1_macro": 0.91}, {})


@pytest.mark.slow
def test_time_energy_and_samples_to_target_and_joules_per_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "nvml_reader", fake_gpu_counter)
    monkeypatch.delenv("HARNESS_LAUNCHED", raising=False)
    overrides = [
        "train.max_steps=6", "train.batch_size=8", "train.eval_strategy=steps", "train.eval_steps=2",
        "train.target={f1_macro: 0.0, loss: 100}", "collector.warmup_steps=1", "data.max_eval_samples=40",
        f"data.validation_file={DATA / 'test.csv'}", "data.test_file=null",
        f"output.checkpoints_dir={tmp_path / 'ck'}", f"output.results_dir={tmp_path / 'results'}",
    ]  # fmt: skip
    assert train.main(["--recipe", "minilm-banking77-cpu", *[a for o in overrides for a in ("--set", o)]]) == 0
    (path,) = (tmp_path / "results").rglob("*.json")
    result = load_result(path)
    training, speed, log = result["training"], result["speed"], result["training"]["step_log"]

    first = training["evaluations"][0]  # a target every model reaches: the first evaluation
    target = training["target"]
    assert target["reached"] and target["step"] == first["step"] == 2
    assert target["samples"] == sum(log["samples"][:2]) == 16
    assert target["train_wall_s"] == first["train_wall_s"]
    assert target["energy_j"] == pytest.approx(WATTS * first["train_wall_s"], rel=0.05)
    assert [e["train_wall_s"] for e in training["evaluations"]] == sorted(e["train_wall_s"] for e in training["evaluations"])

    measured_s = sum(log["durations_s"][1:])  # the warm-up step and the three evaluations are left out
    assert speed["energy_j"] == pytest.approx(WATTS * measured_s, rel=0.02)
    assert speed["joules_per_sample"] == pytest.approx(speed["energy_j"] / sum(log["samples"][1:]))
    assert speed["energy_j"] < WATTS * speed["train_wall_s"] * 0.9  # evaluations took a good part of the loop
