"""harness gate: pass, slowdown, non-inferiority (checked against bounds computed here by hand) and environment
checks, on small result files written to tmp_path."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from harness.cli import main
from harness.results import MemoryReport, RunResult, SpeedReport, save_predictions, write_new_json

CPU = {
    "python": "3.11.7", "cpu": "AMD EPYC", "cpu_count": 2,
    "packages": {"torch": "2.6.0+cpu", "transformers": "5.0.0", "harness": "0.1.0", "modal": "1.6.0"},
    "accelerators": {"torch_cuda": None, "gpus": [], "driver": None},
    "git": {"commit": "abc", "dirty": False},
}  # fmt: skip
H100 = {**CPU, "accelerators": {"torch_cuda": "12.8", "gpus": [{"name": "NVIDIA H100 80GB HBM3"}], "driver": "570.1"}}


def result(run_id: str, *, speed: float = 100.0, accuracy: float = 0.9, step_s: float = 0.3,
           environment: dict = CPU, predictions: str | None = None) -> dict:  # fmt: skip
    """A completed run's result document; accuracy is also its macro-F1."""
    report = SpeedReport(
        warmup_steps=1, measured_steps=10, train_samples_per_s=speed, train_real_tokens_per_s=None,
        train_padded_tokens_per_s=None, padding_efficiency=None, step_time_mean_s=step_s, step_time_p50_s=step_s,
        step_time_p90_s=step_s, time_to_first_step_s=None, train_wall_s=10.0, eval_samples_per_s=None,
        total_wall_s=20.0,
    )  # fmt: skip
    return RunResult(
        run_id=run_id, kind="train", status="completed", recipe_name="tiny", recipe_hash="abc", recipe={},
        started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:01:00+00:00", speed=report,
        memory=MemoryReport(peak_host_rss_bytes=2**30), accuracy={"test": {"accuracy": accuracy, "f1_macro": accuracy}},
        training={"data": {"fingerprints": {"test": "same rows"}}}, environment=environment,
        predictions_file=predictions,
    ).to_dict()  # fmt: skip


def write_runs(folder: Path, *results: dict) -> str:
    for document in results:
        write_new_json(folder / f"{document['run_id']}.json", document)
    return str(folder)


def repeats(folder: Path, accuracies: list[float], **options) -> str:
    """A folder of one setup's runs, one per accuracy: a group of repeats to the gate."""
    return write_runs(folder, *(result(f"seed{i}", accuracy=a, **options) for i, a in enumerate(accuracies)))


def gate(capsys, baseline: str, candidate: str, *options: str) -> tuple[int, str, str]:
    code = main(["gate", baseline, candidate, *options])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_candidate_within_both_limits_passes(tmp_path, capsys):
    base = write_runs(tmp_path / "base", result("a", speed=100.0, accuracy=0.900))
    cand = write_runs(tmp_path / "cand", result("b", speed=95.0, accuracy=0.895))
    code, out, _ = gate(capsys, base, cand)
    assert code == 0 and out.splitlines()[-1] == "gate: passed"
    assert "pass  speed train_samples_per_s: baseline 100 (n=1), candidate 95 (n=1): 5.0% slower, limit 10.0%" in out
    assert ("pass  non-inferiority accuracy: candidate - baseline -0.0050; no test possible (single runs without "
            "paired predictions, or no variation): the difference itself > -margin -0.0100") in out  # fmt: skip


@pytest.mark.parametrize("metric, base_run, cand_run", [
    ("train_samples_per_s", result("a", speed=100.0), result("b", speed=85.0)),  # 15% fewer samples/s
    ("step_p50_s", result("a", step_s=0.30), result("b", step_s=0.345)),  # steps 15% longer
])  # fmt: skip
def test_a_slowdown_beyond_the_limit_fails_naming_the_numbers(tmp_path, capsys, metric, base_run, cand_run):
    base, cand = write_runs(tmp_path / "base", base_run), write_runs(tmp_path / "cand", cand_run)
    code, out, _ = gate(capsys, base, cand, "--metric", metric)
    assert code == 1 and out.splitlines()[-1] == f"gate: FAILED (speed {metric})"
    assert "15.0% slower, limit 10.0% slower" in out
    assert gate(capsys, base, cand, "--metric", metric, "--max-slowdown", "0.2")[0] == 0


def welch_bound_by_hand(cand: list[float], base: list[float], alpha: float) -> float:
    """d - t(1 - alpha, df) * se, with the Welch-Satterthwaite df."""
    a, b = np.var(cand, ddof=1) / len(cand), np.var(base, ddof=1) / len(base)
    df = (a + b) ** 2 / (a**2 / (len(cand) - 1) + b**2 / (len(base) - 1))
    return np.mean(cand) - np.mean(base) - student_t.ppf(1 - alpha, df) * math.sqrt(a + b)


def test_repeats_as_accurate_as_the_baseline_are_shown_non_inferior(tmp_path, capsys):
    accuracies = [0.815, 0.820, 0.825]  # both sides: d = 0, se = 0.00408, df = 4, bound = -2.132 * se = -0.0087
    base, cand = repeats(tmp_path / "base", accuracies), repeats(tmp_path / "cand", accuracies)
    code, out, _ = gate(capsys, base, cand, "--quality", "accuracy")
    bound = welch_bound_by_hand(accuracies, accuracies, 0.05)
    assert round(bound, 4) == -0.0087
    assert code == 0
    assert (f"pass  non-inferiority accuracy: candidate - baseline +0.0000; one-sided 95% lower bound {bound:+.4f} > "
            "-margin -0.0100 (Welch's t over seeds, n=3/3)") in out  # fmt: skip


def test_repeats_worse_by_two_points_fail_non_inferiority_unless_the_margin_allows(tmp_path, capsys):
    base = repeats(tmp_path / "base", [0.80, 0.82, 0.84])
    cand = repeats(tmp_path / "cand", [0.79, 0.80, 0.81])  # d = -0.02, se = 0.0129, df = 2.94: bound = -0.0506
    bound = welch_bound_by_hand([0.79, 0.80, 0.81], [0.80, 0.82, 0.84], 0.05)
    assert round(bound, 3) == -0.051
    code, out, _ = gate(capsys, base, cand, "--quality", "accuracy")
    assert code == 1 and out.splitlines()[-1] == "gate: FAILED (non-inferiority accuracy)"
    assert f"candidate - baseline -0.0200; one-sided 95% lower bound {bound:+.4f} <= -margin -0.0100" in out
    assert gate(capsys, base, cand, "--quality", "accuracy", "--margin", "0.06")[0] == 0  # -0.0506 > -0.06


def predicted_run(folder: Path, run_id: str, labels: np.ndarray, preds: np.ndarray) -> dict:
    """A single run with its test predictions beside it; its accuracy as the predictions give it."""
    name = f"{run_id}.predictions.npz"
    save_predictions(folder / name, {"test.labels": labels, "test.preds": preds})
    return result(run_id, accuracy=float(np.mean(labels == preds)), predictions=name)


def test_single_runs_with_predictions_get_a_paired_bootstrap(tmp_path, capsys):
    labels = np.arange(200) % 10
    baseline_preds = np.where(np.arange(200) < 20, (labels + 1) % 10, labels)  # 20 of 200 wrong: 0.90
    worse_preds = np.where(np.arange(200) < 40, (labels + 1) % 10, labels)  # 20 more wrong: 0.80, d = -0.10
    base = write_runs(tmp_path / "base", predicted_run(tmp_path / "base", "a", labels, baseline_preds))
    same = write_runs(tmp_path / "same", predicted_run(tmp_path / "same", "b", labels, baseline_preds))
    worse = write_runs(tmp_path / "worse", predicted_run(tmp_path / "worse", "c", labels, worse_preds))
    code, out, _ = gate(capsys, base, same)
    # the same predictions: every resample's difference is 0, so the bound is 0
    assert code == 0 and "lower bound +0.0000 > -margin -0.0100 (paired bootstrap of 200 examples)" in out
    code, out, _ = gate(capsys, base, worse, "--quality", "accuracy")
    # every resample has d <= 0 and a mean of -0.10 (sd ~0.021): the 5% quantile is near -0.135
    assert code == 1 and "candidate - baseline -0.1000; one-sided 95% lower bound -0.1" in out


def test_another_environment_is_refused_naming_the_fields_unless_allowed(tmp_path, capsys):
    newer = {**H100, "packages": {**CPU["packages"], "torch": "2.7.0+cu128", "harness": "0.2.0"}}
    base = write_runs(tmp_path / "base", result("a", environment=H100))
    cand = write_runs(tmp_path / "cand", result("b", environment=newer))
    code, out, err = gate(capsys, base, cand)
    assert code == 2 and out == ""
    assert err.startswith("error: baseline and candidate ran on different environments")
    assert '  packages.torch: "2.6.0+cpu" (baseline) vs "2.7.0+cu128" (candidate)\n' in err
    assert "harness" not in err.split("environments", 1)[1].split("--allow-env-change")[0]  # the code under test
    code, out, _ = gate(capsys, base, cand, "--allow-env-change")
    assert code == 0 and "note: environment differs (allowed by --allow-env-change): packages.torch" in out


def test_a_package_that_one_side_does_not_record_is_not_a_change(tmp_path, capsys):
    """Results written before the harness recorded huggingface-hub compare with newer ones; a recorded change
    of it is still a change."""
    recorded = {**CPU, "packages": {**CPU["packages"], "huggingface-hub": "1.33.0"}}
    base = write_runs(tmp_path / "base", result("a"))
    cand = write_runs(tmp_path / "cand", result("b", environment=recorded))
    assert gate(capsys, base, cand)[0] == 0
    other = {**CPU, "packages": {**CPU["packages"], "huggingface-hub": "2.4.0"}}
    newer = write_runs(tmp_path / "newer", result("c", environment=other))
    code, _, err = gate(capsys, cand, newer)
    assert code == 2 and 'packages.huggingface-hub: "1.33.0" (baseline) vs "2.4.0" (candidate)' in err


def test_a_cpu_run_is_not_compared_with_a_gpu_run_nor_with_another_cpu(tmp_path, capsys):
    base = write_runs(tmp_path / "base", result("a"))
    gpu = write_runs(tmp_path / "gpu", result("b", environment=H100))
    other_cpu = write_runs(tmp_path / "cpu", result("c", environment={**CPU, "cpu": "Intel Xeon"}))
    code, _, err = gate(capsys, base, gpu)
    assert code == 2 and 'gpus: [] (baseline) vs ["NVIDIA H100 80GB HBM3"] (candidate)' in err
    assert 'driver: null (baseline) vs "570.1" (candidate)' in err
    code, _, err = gate(capsys, base, other_cpu)
    assert code == 2 and 'cpu: "AMD EPYC" (baseline) vs "Intel Xeon" (candidate)' in err


def test_bad_input_exits_2(tmp_path, capsys):
    base = write_runs(tmp_path / "base", result("a"))
    failed = write_runs(tmp_path / "failed", {**result("b"), "status": "failed"})
    code, _, err = gate(capsys, base, failed)
    assert code == 2 and "candidate" in err and "b (failed); gate compares completed runs" in err
    code, _, err = gate(capsys, base, base, "--metric", "samples_per_s")
    assert code == 2 and "unknown metric 'samples_per_s'" in err
    code, _, err = gate(capsys, base, str(tmp_path / "missing"))
    assert code == 2 and "no such result file or folder" in err
