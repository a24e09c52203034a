"""harness.compare: tables over result files written to tmp_path, checked against hand-computed values."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import cohen_kappa_score, f1_score

from harness.charts import pareto_chart
from harness.cli import main
from harness.compare import (
    COST_METRICS,
    DEFAULT_METRICS,
    build_pivot,
    build_table,
    compare,
    group_runs,
    pivot_table,
    render_csv,
    render_json,
    render_markdown,
    render_pivot_csv,
    render_pivot_markdown,
)  # fmt: skip
from harness.prices import SHIPPED, load_prices, read_price_file
from harness.results import (
    MemoryReport,
    RunResult,
    SpeedReport,
    load_result,
    result_path,
    result_problems,
    scan_result_files,
    write_new_json,
)  # fmt: skip

REPO = Path(__file__).resolve().parents[1]


def make_result(
    run_id: str,
    *,
    samples_per_s: float | None = 100.0,
    processes: int = 1,
    batch_size: int = 32,
    status: str = "completed",
    accuracy: dict | None = None,
    cuda_bytes: int | None = None,
    recipe: dict | None = None,
    repeats: dict | None = None,
    global_batch: int | None = None,
    fingerprints: dict | None = None,
    device_name: str | None = None,
) -> dict:
    """A result document; recipe maps dotted keys ("train.seed") to values that replace the defaults; a device_name
    makes it a CUDA run on that GPU."""
    settings = {
        "name": "tiny",
        "model": {"name": "tiny-bert", "attn_implementation": "sdpa"},
        "precision": {"dtype": "fp32"},
        "train": {"batch_size": batch_size, "gradient_accumulation_steps": 1, "seed": 42},
        "hardware": {"device": "cpu", "num_processes": processes, "gpu": None},
    }
    for key, value in (recipe or {}).items():
        *parents, leaf = key.split(".")
        node = settings
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    speed = memory = None
    if status == "completed":
        speed = SpeedReport(
            warmup_steps=2, measured_steps=10, train_samples_per_s=samples_per_s,
            train_real_tokens_per_s=5000.0, train_padded_tokens_per_s=6250.0, padding_efficiency=0.8,
            step_time_mean_s=0.33, step_time_p50_s=0.3125, step_time_p90_s=0.5, time_to_first_step_s=4.0,
            train_wall_s=10.0, eval_samples_per_s=400.0, total_wall_s=20.0, mfu=None,
            train_samples_per_s_wall=None if samples_per_s is None else samples_per_s * 0.8,
        )
        memory = MemoryReport(peak_host_rss_bytes=3 * 2**30, cuda_peak_allocated_bytes=cuda_bytes)
    ran = {"device": "cuda" if device_name else "cpu", "device_name": device_name, "mixed_precision": "no",
           "attn_implementation": "sdpa", "world_size": processes}  # fmt: skip
    if global_batch is not None:
        ran["global_batch_size"] = global_batch
    return RunResult(
        run_id=run_id, kind="train", status=status, recipe_name="tiny", recipe_hash="abc", recipe=settings,
        started_at="2025-01-01T00:00:00+00:00", finished_at="2025-01-01T00:01:00+00:00", ran=ran,
        speed=speed, memory=memory, accuracy=accuracy or {},
        training={"data": {"fingerprints": fingerprints or {}}},
        error={"type": "RuntimeError", "message": "boom"} if status == "failed" else None,
        repeats=repeats,
    ).to_dict()


def write(tmp_path: Path, *results: dict) -> list[dict]:
    for result in results:
        write_new_json(result_path(tmp_path, result["recipe_name"], result["run_id"]), result)
    return [load_result(result_path(tmp_path, result["recipe_name"], result["run_id"])) for result in results]


def seeds(group: str, speeds: list[float], first_seed: int = 42, **options) -> list[dict]:
    """The results of one `harness run --repeats N` launch, one speed per seed."""
    return [
        make_result(f"{group}-{i}", samples_per_s=speed, recipe={"train.seed": first_seed + i},
                    repeats={"group": group, "index": i, "count": len(speeds)}, **options)
        for i, speed in enumerate(speeds)
    ]  # fmt: skip


def markdown_rows(text: str) -> list[dict[str, str]]:
    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    lines = text.split("\n\n")[0].splitlines()  # the legend and notes follow a blank line
    return [dict(zip(cells(lines[0]), cells(line))) for line in lines[2:]]


def notes(text: str) -> list[str]:
    """The lines under the markdown table."""
    return text.split("\n\n", 1)[1].splitlines() if "\n\n" in text else []


ACCURACY = {
    "validation": {"accuracy": 0.5, "accuracy_stderr": 0.1, "f1_macro": 0.4, "f1_macro_stderr": None},
    "test": {"accuracy": 0.912, "accuracy_stderr": 0.01, "f1_macro": 0.9, "f1_macro_stderr": 0.0123},
}


def test_markdown_headers_carry_direction_and_alignment(tmp_path):
    write(tmp_path, make_result("run-a"))
    lines = compare([str(tmp_path)]).splitlines()
    assert "f1_macro ↑" in lines[0] and "step_p50_s ↓" in lines[0] and "peak_rss_gib ↓" in lines[0]
    rule = lines[1].strip("|").split("|")
    assert not any(cell.endswith(":") for cell in rule[:5]) and all(cell.endswith(":") for cell in rule[5:])
    row = markdown_rows("\n".join(lines))[0]
    assert row["run"] == "run-a" and row["setup"] == "cpu fp32 sdpa x1" and row["status"] == "completed"
    assert row["n"] == "1" and row["differs"] == ""
    assert row["train_samples_per_s_wall ↑"] == "80.0"
    assert row["train_samples_per_s ↑"] == "100.0" and row["step_p50_s ↓"] == "0.312"
    assert row["padding_efficiency ↑"] == "0.800" and row["peak_rss_gib ↓"] == "3.00"


def test_ratio_against_baseline_by_prefix_and_index(tmp_path):
    results = write(tmp_path, make_result("run-a", samples_per_s=100.0), make_result("run-b", samples_per_s=300.0))
    table = build_table(results, ["train_samples_per_s"], baseline="run-a")
    assert table.columns[-1] == "train_samples_per_s vs baseline"
    assert [row["train_samples_per_s vs baseline"] for row in table.rows] == [1.0, 3.0]
    cells = markdown_rows(compare([str(tmp_path)], baseline="run-a"))
    assert [row["train_samples_per_s vs baseline"] for row in cells] == ["1.00", "3.00"]
    by_index = build_table(results, ["train_samples_per_s"], baseline="1").rows
    assert by_index[0]["train_samples_per_s vs baseline"] == pytest.approx(1 / 3)
    assert "vs baseline" not in " ".join(build_table(results, ["train_samples_per_s"]).columns)


def test_stderr_cells_and_auto_split(tmp_path):
    write(tmp_path, make_result("run-a", accuracy=ACCURACY))
    row = markdown_rows(compare([str(tmp_path)], metrics=["accuracy", "f1_macro", "f1_micro"]))[0]
    assert row["accuracy ↑"] == "0.912 ± 0.010"
    assert row["f1_macro ↑"] == "0.900 ± 0.012"
    assert row["f1_micro ↑"] == ""
    validation = markdown_rows(compare([str(tmp_path)], metrics=["accuracy", "f1_macro"], split="validation"))[0]
    assert validation["accuracy ↑"] == "0.500 ± 0.100" and validation["f1_macro ↑"] == "0.400"


def test_auto_split_falls_back_to_validation(tmp_path):
    results = write(tmp_path, make_result("run-a", accuracy={"validation": ACCURACY["validation"]}))
    row = build_table(results, ["accuracy"]).rows[0]
    assert row["accuracy"] == 0.5 and row["accuracy_stderr"] == 0.1


def test_scaling_efficiency(tmp_path):
    results = write(
        tmp_path,
        make_result("run-1", samples_per_s=100.0, processes=1, batch_size=64),
        make_result("run-2", samples_per_s=180.0, processes=2, batch_size=32),
        make_result("run-4", samples_per_s=300.0, processes=4, batch_size=16),
        make_result("run-other", samples_per_s=999.0, processes=1, batch_size=8),
    )
    table = build_table(results, ["train_samples_per_s"])
    assert table.columns[-1] == "scaling_eff"
    assert [row["scaling_eff"] for row in table.rows] == [1.0, 0.9, 0.75, None]
    cells = markdown_rows(compare([str(tmp_path)]))
    assert {row["run"]: row["scaling_eff"] for row in cells} == {
        "run-1": "1.00", "run-2": "0.90", "run-4": "0.75", "run-other": ""
    }
    assert {row["run"]: row["setup"] for row in cells}["run-4"] == "cpu fp32 sdpa x4"


def test_scaling_uses_mean_of_single_process_runs_and_is_omitted_without_group(tmp_path):
    results = write(
        tmp_path,
        make_result("run-1a", samples_per_s=90.0, recipe={"train.seed": 1}),
        make_result("run-1b", samples_per_s=110.0, recipe={"train.seed": 2}),
        make_result("run-2", samples_per_s=150.0, processes=2, batch_size=16),
    )
    assert [row["scaling_eff"] for row in build_table(results, ["mfu"]).rows] == [0.9, 1.1, 0.75]
    assert "scaling_eff" not in build_table(results[:2], ["mfu"]).columns


def test_csv_parses_back_to_raw_numbers(tmp_path):
    results = write(tmp_path, make_result("run-a", samples_per_s=123.456, accuracy=ACCURACY, cuda_bytes=2**31))
    text = render_csv(build_table(results, DEFAULT_METRICS))
    row = next(csv.DictReader(io.StringIO(text)))
    assert float(row["train_samples_per_s"]) == 123.456
    assert float(row["accuracy"]) == 0.912 and float(row["accuracy_stderr"]) == 0.01
    assert float(row["f1_macro_stderr"]) == 0.0123
    assert float(row["cuda_peak_alloc_gib"]) == 2.0
    assert row["mfu"] == "" and row["setup"] == "cpu fp32 sdpa x1"
    assert "padding_efficiency_stderr" not in row


def test_json_round_trips(tmp_path):
    results = write(tmp_path, make_result("run-a", accuracy=ACCURACY), make_result("run-b", samples_per_s=50.0))
    table = build_table(results, DEFAULT_METRICS, baseline="run-a")
    assert json.loads(render_json(table)) == table.rows
    assert json.loads(compare([str(tmp_path)], fmt="json", baseline="run-a")) == table.rows


def test_missing_values_and_failed_run_render_empty(tmp_path):
    write(tmp_path, make_result("run-a", accuracy=ACCURACY), make_result("run-b", status="failed"))
    rows = markdown_rows(compare([str(tmp_path)], baseline="run-a"))
    failed = rows[1]
    assert failed["run"] == "run-b" and failed["status"] == "failed"
    assert failed["n"] == "1"
    assert all(failed[header] == "" for header in failed if header not in ("run", "recipe", "status", "setup", "n"))
    assert rows[0]["mfu ↑"] == "" and rows[0]["cuda_peak_alloc_gib ↓"] == ""
    row = json.loads(compare([str(tmp_path)], fmt="json"))[1]
    assert row["train_samples_per_s"] is None and row["accuracy_stderr"] is None


def test_unknown_metric_names_closest(tmp_path):
    results = write(tmp_path, make_result("run-a"))
    with pytest.raises(ValueError, match=r"'f1macro' \(did you mean 'f1_macro'\?\)\. Valid metrics: .*top2_accuracy"):
        build_table(results, ["f1macro"])
    with pytest.raises(ValueError, match="did you mean 'train_samples_per_s'"):
        build_table(results, ["accuracy"], ratio_of="train_sample_per_s")


def test_unknown_baseline_lists_runs(tmp_path):
    results = write(tmp_path, make_result("run-a"), make_result("run-b"))
    with pytest.raises(ValueError, match="'zzz' is not a run id.*Runs: run-a, run-b"):
        build_table(results, ["mfu"], baseline="zzz")
    with pytest.raises(ValueError, match="'run' matches several runs"):
        build_table(results, ["mfu"], baseline="run")


def test_import_pulls_in_no_heavy_libraries():
    heavy = "{'torch', 'pandas', 'transformers', 'scipy', 'sklearn', 'matplotlib'}"
    code = f"import sys, harness.compare; print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_cli(tmp_path):
    write(tmp_path, make_result("run-a"))
    command = [sys.executable, "-m", "harness.cli", "compare", str(tmp_path), "--format", "csv", "--metrics", "mfu"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "run,recipe,status,setup,differs,n,mfu,mfu_std"
    bad = subprocess.run([*command[:-1], "mfuu"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'mfu'" in bad.stderr


def test_plot_draws_one_panel_per_metric_and_never_replaces_a_file(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from harness.charts import plot_table

    results = write(tmp_path, make_result("run-a"), make_result("run-b", samples_per_s=300.0))
    table = build_table(results, ["train_samples_per_s", "f1_macro", "mfu"])
    path = plot_table(table, tmp_path / "speed.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(path).shape[:2]
    assert width == round((3.2 * 3 + 2) * 120) and height == round((0.6 * 2 + 1.2) * 120)  # 3 panels, 2 runs
    with pytest.raises(FileExistsError):
        plot_table(table, path)


def test_repeats_share_a_row_with_mean_and_std(tmp_path):
    accuracy = [{"test": {"accuracy": value, "accuracy_stderr": 0.01, "f1_macro": value - 0.1,
                          "f1_macro_stderr": 0.02}} for value in (0.90, 0.92, 0.94)]  # fmt: skip
    runs = seeds("g1", [100.0, 110.0, 120.0])
    for run, scores in zip(runs, accuracy):
        run["accuracy"] = scores
    results = write(tmp_path, *runs, make_result("single", samples_per_s=95.0, accuracy=ACCURACY))
    rows = build_table(results, ["train_samples_per_s", "accuracy"]).rows
    group, single = rows
    assert group["run"] == "g1" and group["n"] == 3 and single["n"] == 1
    assert group["train_samples_per_s"] == pytest.approx(110.0) and group["train_samples_per_s_std"] == 10.0
    assert group["accuracy"] == pytest.approx(0.92) and group["accuracy_std"] == pytest.approx(0.02)
    assert group["accuracy_stderr"] is None  # one run's test-set error says nothing about the mean of three
    assert single["accuracy"] == 0.912 and single["accuracy_std"] is None and single["accuracy_stderr"] == 0.01
    text = compare([str(tmp_path)], metrics=["train_samples_per_s", "accuracy"])
    cells = markdown_rows(text)
    assert cells[0]["train_samples_per_s ↑"] == "110.0 ± 10.0" and cells[0]["accuracy ↑"] == "0.920 ± 0.020"
    assert cells[1]["train_samples_per_s ↑"] == "95.0" and cells[1]["accuracy ↑"] == "0.912 ± 0.010"
    assert cells[0]["n"] == "3" and cells[0]["differs"] == cells[1]["differs"] == ""  # seeds vary inside g1 only
    (legend,) = notes(text)
    assert "single run's accuracy/F1: standard error" in legend
    assert "n > 1: standard deviation over its n runs" in legend
    csv_row = next(csv.DictReader(io.StringIO(compare([str(tmp_path)], fmt="csv"))))
    assert float(csv_row["train_samples_per_s_std"]) == 10.0 and csv_row["n"] == "3"
    assert csv_row["accuracy_stderr"] == "" and float(csv_row["accuracy_std"]) == pytest.approx(0.02)


def test_per_run_rows_name_their_seeds(tmp_path):
    results = write(tmp_path, *seeds("g1", [100.0, 110.0, 120.0]))
    rows = build_table(results, ["train_samples_per_s"], per_run=True).rows
    assert [(row["run"], row["differs"], row["n"]) for row in rows] == [
        ("g1-0", "seed=42", 1),
        ("g1-1", "seed=43", 1),
        ("g1-2", "seed=44", 1),
    ]
    assert markdown_rows(compare([str(tmp_path)], per_run=True))[2]["differs"] == "seed=44"


def test_failed_repeat_keeps_its_own_row(tmp_path):
    runs = seeds("g1", [100.0, 120.0, 0.0])
    runs[2] = make_result("g1-2", status="failed", recipe={"train.seed": 44}, repeats=runs[2]["repeats"])
    rows = build_table(write(tmp_path, *runs), ["train_samples_per_s"]).rows
    assert [(row["run"], row["status"], row["n"], row["train_samples_per_s"]) for row in rows] == [
        ("g1", "completed", 2, 110.0),
        ("g1-2", "failed", 1, None),
    ]


def test_differs_names_varying_settings_only(tmp_path):
    results = write(
        tmp_path,
        make_result("run-a", recipe={"data.group_by_length": True, "train.lr": 5e-5, "output.dir": "a",
                                     "description": "first", "hardware.gpu": "H100"}),
        make_result("run-b", recipe={"data.group_by_length": False, "train.lr": 5e-5, "output.dir": "b",
                                     "description": "second", "hardware.gpu": "A100"}),
        make_result("run-c", batch_size=16, recipe={"data.group_by_length": False, "train.lr": 1e-4}),
    )  # fmt: skip
    assert [row["differs"] for row in build_table(results, ["mfu"]).rows] == [
        "train.batch_size=32, train.lr=5e-05, data.group_by_length=true",  # in recipe order
        "train.batch_size=32, train.lr=5e-05, data.group_by_length=false",
        "train.batch_size=16, train.lr=0.0001, data.group_by_length=false",
    ]


def test_baseline_verdicts_between_repeats_use_welch(tmp_path):
    base, faster, similar = [100.0, 110.0, 120.0], [130.0, 140.0, 150.0], [105.0, 115.0, 125.0]
    results = write(tmp_path, *seeds("base", base), *seeds("fast", faster), *seeds("same", similar))
    rows = build_table(results, ["train_samples_per_s"], baseline="base").rows
    assert all(rows[0][f"train_samples_per_s_{field}"] is None for field in ("delta_pct", "verdict", "p_value"))
    for row, values, verdict in [(rows[1], faster, "significant"), (rows[2], similar, "within noise")]:
        direct = scipy.stats.ttest_ind(values, base, equal_var=False)
        ci = direct.confidence_interval()
        assert row["train_samples_per_s_delta_pct"] == pytest.approx(100 * (np.mean(values) - 110) / 110)
        assert row["train_samples_per_s_p_value"] == pytest.approx(direct.pvalue)
        assert row["train_samples_per_s_diff_ci95"] == pytest.approx([ci.low, ci.high])
        assert row["train_samples_per_s_verdict"] == verdict
    assert rows[1]["train_samples_per_s_p_value"] < 0.05 < rows[2]["train_samples_per_s_p_value"]
    text = compare([str(tmp_path)], metrics=["train_samples_per_s"], baseline="base")
    cells = [row["train_samples_per_s ↑"] for row in markdown_rows(text)]
    assert cells == ["110.0 ± 10.0", "140.0 ± 10.0 (+27.3% *)", "115.0 ± 10.0 (+4.5% ~)"]
    legend = "(+x.x%) after a value: its change against baseline base; * significant"
    assert any(line.startswith(legend) for line in notes(text))
    by_member = build_table(results, ["train_samples_per_s"], baseline="fast-1").rows
    assert by_member[1]["train_samples_per_s_delta_pct"] is None  # a run id names its group's row


def with_predictions(tmp_path: Path, run: dict, labels: np.ndarray, preds: np.ndarray) -> dict:
    """run with its test predictions in a predictions file beside its result file, and accuracy and F1 to match."""
    f1_macro = f1_score(labels, preds, average="macro")
    run["accuracy"] = {"test": {"accuracy": float(np.mean(preds == labels)), "accuracy_stderr": 0.01,
                                "f1_macro": f1_macro, "f1_macro_stderr": 0.02}}  # fmt: skip
    run["predictions_file"] = f"{run['run_id']}.predictions.npz"
    folder = result_path(tmp_path, "tiny", run["run_id"]).parent
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / run["predictions_file"], **{"test.labels": labels, "test.preds": preds})
    return run


def paired_runs(tmp_path: Path, fingerprint_b: str = "f00d") -> tuple[list[dict], np.ndarray, np.ndarray, np.ndarray]:
    """Two single runs with predictions files on the same 50 test rows: 10 rows only a is right, 2 only b."""
    labels = np.arange(50) % 4
    right_a = np.repeat([True, False, True, False], [10, 2, 30, 8])
    right_b = np.repeat([False, True, True, False], [10, 2, 30, 8])
    preds_a, preds_b = np.where(right_a, labels, (labels + 1) % 4), np.where(right_b, labels, (labels + 2) % 4)
    arms = [("run-a", preds_a, "f00d", 100.0), ("run-b", preds_b, fingerprint_b, 90.0)]
    runs = [
        with_predictions(tmp_path, make_result(run_id, samples_per_s=speed, fingerprints={"test": fingerprint}),
                         labels, preds)
        for run_id, preds, fingerprint, speed in arms
    ]  # fmt: skip
    return write(tmp_path, *runs), labels, preds_a, preds_b


def test_single_runs_are_tested_on_their_paired_predictions(tmp_path):
    _, labels, preds_a, preds_b = paired_runs(tmp_path)
    rows = json.loads(compare([str(tmp_path)], metrics=["train_samples_per_s", "accuracy", "f1_macro"],
                              fmt="json", baseline="run-b"))  # fmt: skip
    row = rows[0]  # run-a against run-b
    assert row["accuracy_p_value"] == pytest.approx(2 * (1 + 12 + 66) / 2**12)  # binomial(12, 1/2) tails at <= 2
    assert row["accuracy_verdict"] == "significant"
    assert row["accuracy_delta_pct"] == pytest.approx(100 * (40 / 50 - 32 / 50) / (32 / 50))
    low, high = row["accuracy_diff_ci95"]
    assert low < (10 - 2) / 50 < high
    difference = f1_score(labels, preds_a, average="macro") - f1_score(labels, preds_b, average="macro")
    low, high = row["f1_macro_diff_ci95"]
    assert low < difference < high and row["f1_macro_p_value"] is None
    assert row["f1_macro_verdict"] == ("within noise" if low <= 0 <= high else "significant")
    assert row["train_samples_per_s_verdict"] is None  # one run each: no seed variance to judge speed by
    cells = markdown_rows(compare([str(tmp_path)], metrics=["train_samples_per_s", "accuracy"], baseline="run-b"))
    assert cells[0]["train_samples_per_s ↑"] == "100.0 (+11.1%)"  # no mark: no verdict
    assert cells[0]["accuracy ↑"] == "0.800 ± 0.010 (+25.0% *)"


def test_no_paired_test_on_different_data_or_without_predictions(tmp_path):
    results, *_ = paired_runs(tmp_path, fingerprint_b="beef")
    paths = [result_path(tmp_path, "tiny", run_id) for run_id in ("run-a", "run-b")]
    row = build_table(results, ["accuracy"], baseline="run-b", paths=paths).rows[0]
    assert row["accuracy_delta_pct"] == pytest.approx(25.0) and row["accuracy_verdict"] is None
    same_data, *_ = paired_runs(tmp_path / "again")
    assert build_table(same_data, ["accuracy"], baseline="run-b").rows[0]["accuracy_verdict"] is None  # no paths


def test_scaling_needs_the_same_global_batch(tmp_path):
    results = write(
        tmp_path,
        make_result("run-1", samples_per_s=100.0, batch_size=32),
        make_result("run-2", samples_per_s=180.0, processes=2, batch_size=32),
    )
    table = build_table(results, ["train_samples_per_s"])
    assert "scaling_eff" not in table.columns
    assert table.notes == [
        "scaling_eff: not computed across global batches for tiny x1 / x2: global batch 32 vs 64 — "
        + "accuracy and speed are confounded"
    ]
    assert notes(compare([str(tmp_path)])) == table.notes


def test_scaling_global_batch_from_accumulation_or_as_recorded(tmp_path):
    results = write(
        tmp_path,
        make_result("run-1", samples_per_s=100.0, batch_size=32, recipe={"train.gradient_accumulation_steps": 2}),
        make_result("run-2", samples_per_s=180.0, processes=2, batch_size=32),
        make_result("run-4", samples_per_s=360.0, processes=4, batch_size=8, global_batch=64),  # as recorded
    )
    table = build_table(results, ["train_samples_per_s"])
    assert [row["scaling_eff"] for row in table.rows] == [1.0, 0.9, 0.9] and table.notes == []


def test_scaling_counts_a_repeats_group_as_its_mean(tmp_path):
    results = write(tmp_path, *seeds("one", [90.0, 100.0, 110.0], batch_size=64),
                    make_result("run-2", samples_per_s=150.0, processes=2))  # fmt: skip
    assert [row["scaling_eff"] for row in build_table(results, ["mfu"]).rows] == [1.0, 0.75]


def test_plot_error_bars_are_std_for_repeats_and_stderr_for_single_runs(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    from harness.charts import plot_table

    runs = seeds("g1", [100.0, 120.0])
    for run, accuracy in zip(runs, (0.8, 0.9)):
        run["accuracy"] = {"test": {"accuracy": accuracy, "accuracy_stderr": 0.01}}
    results = write(tmp_path, *runs, make_result("single", accuracy=ACCURACY))
    drawn, barh = [], Axes.barh

    def record(axis, y, width, **options):
        drawn.append(options["xerr"])
        return barh(axis, y, width, **options)

    monkeypatch.setattr(Axes, "barh", record)
    plot_table(build_table(results, ["train_samples_per_s", "accuracy"]), tmp_path / "plot.png")
    assert drawn[0] == pytest.approx([np.std([100, 120], ddof=1), 0.0])
    assert drawn[1] == pytest.approx([np.std([0.8, 0.9], ddof=1), 0.01])


def test_a_setting_only_some_runs_have_is_a_difference(tmp_path):
    results = write(tmp_path, make_result("old"), make_result("new", recipe={"model.compile": True}))
    assert [row["differs"] for row in build_table(results, ["mfu"]).rows] == ["", "model.compile=true"]


def cli_compare(capsys, *arguments) -> tuple[int, str, str]:
    """harness compare's exit code, stdout and stderr."""
    code = main(["compare", *map(str, arguments)])
    out, err = capsys.readouterr()
    return code, out, err


def truncated_result(folder: Path) -> Path:
    """A result file cut off in its fourth line, as by a full disk or a copy that stopped."""
    path = folder / "tiny" / "run-cut.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{\n  "schema_version": "2.0",\n  "run_id": "run-cut",\n  "ki')
    return path


def test_a_truncated_file_is_skipped_and_named_and_the_other_rows_stay(tmp_path):
    write(tmp_path, make_result("run-a"), make_result("run-b"))
    cut = truncated_result(tmp_path)
    text = compare([str(tmp_path)])
    assert [row["run"] for row in markdown_rows(text)] == ["run-a", "run-b"]
    assert notes(text) == [
        "skipped 1 of 3 result files, no row shown for them:",
        f"- {cut}: invalid JSON at line 4, column 3: Unterminated string starting at (the file ends there: truncated?)",
    ]


def test_a_file_with_wrong_field_types_is_never_a_row(tmp_path):
    write(tmp_path, make_result("run-a"))
    fast = make_result("run-fast")
    fast["speed"]["train_samples_per_s"] = "fast"
    write_new_json(tmp_path / "fast.json", fast)
    write_new_json(tmp_path / "listed.json", make_result("run-listed") | {"accuracy": []})
    text = compare([str(tmp_path)])
    assert [row["run"] for row in markdown_rows(text)] == ["run-a"]
    assert notes(text)[1:] == [
        f"- {tmp_path / 'fast.json'}: not a valid result: speed.train_samples_per_s: expected a number or null, "
        'got "fast"',
        f"- {tmp_path / 'listed.json'}: not a valid result: accuracy: expected an object, got []",
    ]


@pytest.mark.parametrize(
    "version, reason",
    [("1.0", "schema version 1.0 is not readable: this harness reads 2.x"),
     ("2.0", "not a valid result: run_id: missing (required)")],
)  # fmt: skip
def test_a_schema_version_alone_is_no_row(tmp_path, capsys, version, reason):
    write(tmp_path, make_result("run-a"))
    (tmp_path / "bare.json").write_text(json.dumps({"schema_version": version}))
    code, out, err = cli_compare(capsys, tmp_path, "--format", "json")
    assert code == 0 and [row["run"] for row in json.loads(out)] == ["run-a"]
    assert "note: skipped 1 of 2 result files, no row shown for them:" in err
    assert f"note: - {tmp_path / 'bare.json'}: {reason}" in err


def test_checkpoints_beside_results_are_ignored_and_counted(tmp_path):
    write(tmp_path, make_result("run-a"), make_result("run-b"))
    run = tmp_path / "checkpoints" / "tiny" / "run-a"
    (run / "best").mkdir(parents=True)
    (run / "plan.json").write_text(json.dumps({"recipe": {"name": "tiny"}}))
    (run / "best" / "config.json").write_text(json.dumps({"model_type": "bert", "num_labels": 2}))
    (run / "best" / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {}}))
    (run / "best" / "harness.json").write_text(json.dumps({"run_id": "run-a", "labels": ["a", "b"]}))
    text = compare([str(tmp_path)])
    assert [row["run"] for row in markdown_rows(text)] == ["run-a", "run-b"]
    assert notes(text) == [
        "ignored 4 JSON files in folders: not harness results (config.json, harness.json, tokenizer.json, plan.json)"
    ]


def test_strict_exits_2_naming_each_file(tmp_path, capsys):
    write(tmp_path, make_result("run-a"))
    cut = truncated_result(tmp_path)
    code, out, err = cli_compare(capsys, tmp_path, "--strict")
    assert code == 2 and out == ""
    assert err.startswith("error: 1 result file cannot be used (strict):\n")
    assert f"  {cut}: invalid JSON at line 4, column 3" in err
    assert cli_compare(capsys, tmp_path)[0] == 0


def test_no_readable_result_exits_2_naming_what_was_skipped(tmp_path, capsys):
    cut = truncated_result(tmp_path)
    (tmp_path / "bare.json").write_text('{"schema_version": "2.0"}')
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    code, out, err = cli_compare(capsys, tmp_path)
    assert code == 2 and out == ""
    assert err.startswith(f"error: no readable result file in {tmp_path} (1 JSON file ignored: not harness results); "
                          "skipped:\n")  # fmt: skip
    assert f"  {tmp_path / 'bare.json'}: not a valid result" in err and f"  {cut}: invalid JSON" in err


def test_committed_results_and_every_fixture_validate():
    for path in scan_result_files([REPO / "results"]).files:
        assert result_problems(load_result(path)) == []  # load_result raises, naming the file, on any problem
    fixtures = [
        make_result("full", accuracy=ACCURACY, cuda_bytes=2**31, global_batch=64, fingerprints={"test": "abc"}),
        make_result("failed", status="failed"),
        make_result("no-speed", samples_per_s=None),
        *seeds("group", [90.0, 110.0]),
    ]
    assert {result["run_id"]: result_problems(result) for result in fixtures} == {
        result["run_id"]: [] for result in fixtures
    }


# --- pivot: one metric by settings


def setup_runs(name: str, speeds: list[float], **recipe) -> list[dict]:
    """Single runs of one setup, one per speed, with seeds 42, 43, …; recipe keys are dotted with __ for '.'."""
    settings = {key.replace("__", "."): value for key, value in recipe.items()}
    return [make_result(f"{name}-{i}", samples_per_s=speed, recipe={**settings, "train.seed": 42 + i})
            for i, speed in enumerate(speeds)]  # fmt: skip


def model_by_dtype(tmp_path: Path) -> list[dict]:
    """tiny-bert: fp32 100/110/120, bf16 200/220 (and a failed run); other-bert: fp32 50, no bf16."""
    return write(
        tmp_path,
        *setup_runs("tiny-fp32", [100.0, 110.0, 120.0]),
        *setup_runs("tiny-bf16", [200.0, 220.0], precision__dtype="bf16"),
        make_result("tiny-bf16-failed", status="failed", recipe={"precision.dtype": "bf16"}),
        *setup_runs("other-fp32", [50.0], model__name="other-bert"),
    )


def test_pivot_cells_are_mean_std_and_n_of_their_runs(tmp_path):
    pivot = build_pivot(model_by_dtype(tmp_path), ["model.name"], ["precision.dtype"], "train_samples_per_s")
    assert pivot.columns == ["bf16", "fp32"]
    other, tiny = pivot.rows
    assert other == {"model.name": "other-bert", "bf16": None, "bf16_std": None, "bf16_n": 0,
                     "fp32": 50.0, "fp32_std": None, "fp32_n": 1}  # fmt: skip
    assert tiny["model.name"] == "tiny-bert" and tiny["fp32_n"] == 3 and tiny["bf16_n"] == 2  # the failed run: none
    assert tiny["fp32"] == pytest.approx(110.0) and tiny["fp32_std"] == pytest.approx(10.0)
    assert tiny["bf16"] == pytest.approx(210.0) and tiny["bf16_std"] == pytest.approx(np.std([200, 220], ddof=1))
    assert pivot.notes == []
    cells = markdown_rows(render_pivot_markdown(pivot))
    assert cells == [
        {"model.name": "other-bert", "bf16": "", "fp32": "50.0 (n=1)"},
        {"model.name": "tiny-bert", "bf16": "210.0 ± 14.1 (n=2)", "fp32": "110.0 ± 10.0 (n=3)"},
    ]
    legend = "train_samples_per_s ↑ by model.name (rows) and precision.dtype (columns): mean ± standard deviation"
    assert notes(render_pivot_markdown(pivot)) == [f"{legend} over a cell's runs (n runs)"]
    row = list(csv.DictReader(io.StringIO(render_pivot_csv(pivot))))[1]
    assert list(row) == ["model.name", "bf16", "bf16_std", "bf16_n", "fp32", "fp32_std", "fp32_n"]
    assert float(row["fp32"]) == pytest.approx(110.0) and row["fp32_n"] == "3"
    assert json.loads(render_json(pivot)) == pivot.rows


def test_pivot_baseline_column_compares_each_row_with_its_own_cell(tmp_path):
    results = model_by_dtype(tmp_path)
    pivot = build_pivot(results, ["model.name"], ["precision.dtype"], baseline="fp32")
    other, tiny = pivot.rows
    direct = scipy.stats.ttest_ind([200, 220], [100, 110, 120], equal_var=False)
    assert tiny["bf16_delta_pct"] == pytest.approx(100 * (210 - 110) / 110)
    assert tiny["bf16_p_value"] == pytest.approx(direct.pvalue)
    assert tiny["bf16_verdict"] == ("significant" if direct.pvalue < 0.05 else "within noise")
    assert tiny["fp32_delta_pct"] is None and other["bf16_delta_pct"] is None  # the baseline itself; an empty cell
    mark = "*" if direct.pvalue < 0.05 else "~"
    text = render_pivot_markdown(pivot)
    assert markdown_rows(text)[1]["bf16"] == f"210.0 ± 14.1 (n=2, +90.9% {mark})"
    assert notes(text)[1].startswith("(+x.x%): change against the cell of fp32 in the same row; * significant")
    by_row = build_pivot(results, ["model.name"], ["precision.dtype"], baseline="tiny-bert").rows[0]
    assert by_row["fp32_delta_pct"] == pytest.approx(100 * (50 - 110) / 110)
    assert by_row["fp32_verdict"] is None  # one run against three: Welch needs two a side


def test_pivot_by_a_ran_field_in_numeric_order_notes_mixed_cells(tmp_path):
    results = write(
        tmp_path,
        make_result("x16", processes=16, batch_size=2, samples_per_s=900.0),
        make_result("x2-a", processes=2, batch_size=16, samples_per_s=180.0),
        make_result("x4", processes=4, batch_size=8, samples_per_s=330.0),
        make_result("x2-b", processes=2, batch_size=32, samples_per_s=200.0),
    )
    pivot = build_pivot(results, ["ran.world_size"], [], "train_samples_per_s")
    assert pivot.columns == ["train_samples_per_s"]
    cells = [(row["ran.world_size"], row["train_samples_per_s"], row["train_samples_per_s_n"]) for row in pivot.rows]
    assert cells == [("2", 190.0, 2), ("4", 330.0, 1), ("16", 900.0, 1)]
    mixed = "cells mix runs that differ in train.batch_size: their mean ± std spans those setups"
    assert pivot.notes == [f"{mixed} (add the keys to --rows or --cols to tell them apart)"]


def test_pivot_unknown_keys_and_baselines_name_the_closest(tmp_path):
    results = model_by_dtype(tmp_path)
    unknown = r"--rows: unknown key 'model.nam' \(did you mean 'model.name'\?\); keys that vary across these runs: "
    with pytest.raises(ValueError, match=unknown + "model.name, precision.dtype, train.seed$"):
        build_pivot(results, ["model.nam"], ["precision.dtype"])
    with pytest.raises(ValueError, match=r"--cols: unknown key 'dtype' \(did you mean 'precision.dtype'\?\)"):
        build_pivot(results, ["model.name"], ["dtype"])
    with pytest.raises(ValueError, match=r"metric 'train_samples_per_sec' \(did you mean 'train_samples_per_s'"):
        build_pivot(results, ["model.name"], ["precision.dtype"], "train_samples_per_sec")
    neither = r"baseline 'fp33' is neither a column \(bf16, fp32\) nor a row \(other-bert, tiny-bert\) of the pivot"
    with pytest.raises(ValueError, match=neither + r" \(did you mean 'fp32'\?\)"):
        build_pivot(results, ["model.name"], ["precision.dtype"], baseline="fp33")


def test_cli_pivot(tmp_path, capsys):
    model_by_dtype(tmp_path)
    code, out, _ = cli_compare(capsys, tmp_path, "--rows", "model.name", "--cols", "precision.dtype", "--baseline",
                               "fp32", "--format", "json")  # fmt: skip
    assert code == 0
    assert json.loads(out) == pivot_table([str(tmp_path)], ["model.name"], ["precision.dtype"], baseline="fp32").rows
    code, out, err = cli_compare(capsys, tmp_path, "--rows", "model.name", "--cols", "precision.dtyp")
    assert code == 2 and "did you mean 'precision.dtype'" in err
    code, out, err = cli_compare(capsys, tmp_path, "--rows", "model.name", "--metrics", "mfu")
    assert code == 2 and "--metrics: not with --rows/--cols" in err
    code, out, err = cli_compare(capsys, tmp_path, "--value", "mfu")
    assert code == 2 and "--value" in err


# --- the quality guard of speed-ups


def speed_pair(tmp_path: Path, changed: int, recipe: dict, **options) -> list[dict]:
    """A baseline and a second single run that predicted the same 100 test rows: the baseline is right on all,
    the other wrong on the first `changed`; recipe and options set the second run's setup."""
    labels = np.arange(100) % 4
    preds = np.where(np.arange(100) < changed, (labels + 1) % 4, labels)
    base = make_result("base", fingerprints={"test": "f00d"})
    other = make_result("other", samples_per_s=180.0, fingerprints={"test": "f00d"}, recipe=recipe, **options)
    return write(tmp_path, with_predictions(tmp_path, base, labels, labels),
                 with_predictions(tmp_path, other, labels, preds))  # fmt: skip


def guard_row(tmp_path: Path) -> dict:
    return json.loads(compare([str(tmp_path)], ["train_samples_per_s"], fmt="json", baseline="base"))[1]


def test_guard_finds_the_same_model_within_noise(tmp_path):
    speed_pair(tmp_path, 0, {"precision.dtype": "bf16", "model.attn_implementation": "eager", "train.seed": 7})
    row = guard_row(tmp_path)
    assert (row["agreement"], row["kappa"], row["guard"]) == (1.0, 1.0, "same model within noise")
    text = compare([str(tmp_path)], ["train_samples_per_s"], baseline="base")
    cells = markdown_rows(text)
    assert cells[0]["guard"] == "" and cells[1]["guard"] == "same model within noise"
    assert cells[1]["agreement"] == "1.000" and cells[1]["kappa"] == "1.000"
    legend = "guard (rows that differ from the baseline in speed settings only): agreement = share of test examples"
    assert any(line.startswith(legend) for line in notes(text))


def test_guard_flags_a_speed_up_that_changed_30_percent_of_predictions(tmp_path):
    speed_pair(tmp_path, 30, {"precision.dtype": "fp16"})
    row = guard_row(tmp_path)
    labels = np.arange(100) % 4
    preds = np.where(np.arange(100) < 30, (labels + 1) % 4, labels)
    assert row["agreement"] == pytest.approx(0.7)
    assert row["kappa"] == pytest.approx(cohen_kappa_score(labels, preds))
    accuracy, f1_macro = row["guard"].removeprefix("changed: ").split("; ")
    assert accuracy == "accuracy −30.0 pts, p<0.001"  # McNemar: 30 discordant rows, all against
    drop = 100 * (1 - f1_score(labels, preds, average="macro"))
    assert f1_macro.startswith(f"f1_macro −{drop:.1f} pts, 95% CI −")  # the paired bootstrap's interval


@pytest.mark.parametrize(
    "recipe, options",
    [({"train.batch_size": 16, "train.gradient_accumulation_steps": 2}, {}),  # the same global batch of 32
     ({"hardware.deepspeed": "zero2", "hardware.offload": "cpu"}, {"processes": 2, "batch_size": 16})],
)  # fmt: skip
def test_guard_covers_a_batch_split_at_the_same_global_batch(tmp_path, recipe, options):
    speed_pair(tmp_path, 0, recipe, **options)
    assert guard_row(tmp_path)["guard"] == "same model within noise"


@pytest.mark.parametrize(
    "recipe, options",
    [({"train.learning_rate": 1e-4}, {}), ({"model.name": "other-bert"}, {}), ({}, {"batch_size": 16})],
)  # fmt: skip
def test_no_guard_when_a_setting_other_than_speed_differs(tmp_path, recipe, options):
    speed_pair(tmp_path, 30, {"precision.dtype": "bf16", **recipe}, **options)
    row = guard_row(tmp_path)
    assert "guard" not in row and "agreement" not in row
    assert row["train_samples_per_s_delta_pct"] == pytest.approx(80.0)


def test_guard_of_repeats_uses_welch_over_seeds(tmp_path):
    base, fast = seeds("base", [100.0] * 3), seeds("fast", [200.0] * 3)
    for runs, scores in ((base, [0.90, 0.93, 0.96]), (fast, [0.82, 0.85, 0.88])):
        for run, score in zip(runs, scores):
            run["accuracy"] = {"test": {"accuracy": score}}
            run["recipe"]["precision"]["dtype"] = "bf16" if run in fast else "fp32"
    row = build_table(write(tmp_path, *base, *fast), ["train_samples_per_s"], baseline="base").rows[1]
    direct = scipy.stats.ttest_ind([0.82, 0.85, 0.88], [0.90, 0.93, 0.96], equal_var=False)
    assert 0.001 < direct.pvalue < 0.05
    assert row["agreement"] is None and row["kappa"] is None
    assert row["guard"] == f"changed: accuracy −8.0 pts, p={direct.pvalue:.3f}"


# --- cost


def h100_pair(tmp_path: Path) -> list[dict]:
    """Two H100s for half an hour at 100 samples/s, and a CPU run."""
    gpu = make_result("h100x2", processes=2, device_name="NVIDIA H100 80GB HBM3")
    gpu["speed"]["total_wall_s"] = 1800.0
    return write(tmp_path, gpu, make_result("cpu"))


def test_cost_is_price_times_gpus_times_hours(tmp_path):
    table = build_table(h100_pair(tmp_path), COST_METRICS)
    price = read_price_file(SHIPPED).price("NVIDIA H100 80GB HBM3")
    gpu, cpu = table.rows
    assert gpu["cost_usd"] == pytest.approx(2 * 0.5 * price)
    assert gpu["usd_per_million_samples"] == pytest.approx(price * 2 / 3600 / 100.0 * 1e6)
    assert cpu["cost_usd"] is None and cpu["usd_per_million_samples"] is None
    assert table.notes == [
        "cost: USD per GPU-hour for NVIDIA H100 80GB HBM3 from https://modal.com/pricing, read on 2025-06",
        "cost: prices change; check them (--prices FILE.json or --price 'DEVICE=USD_PER_HOUR' override)",
        "cost: null for 1 run without a GPU (CPU): no GPU price applies",
    ]
    assert "cost_usd" not in build_table(h100_pair(tmp_path / "again"), DEFAULT_METRICS).rows[0]


def test_cost_with_overridden_prices_and_without_a_price(tmp_path):
    results = h100_pair(tmp_path)
    table = build_table(results, ["cost_usd"], prices=load_prices(flags=["H100=4"]))
    assert table.rows[0]["cost_usd"] == pytest.approx(2 * 0.5 * 4.0)
    assert table.notes[0] == "cost: USD per GPU-hour for NVIDIA H100 80GB HBM3 from --price"
    rtx = write(tmp_path / "rtx", make_result("rtx", device_name="NVIDIA GeForce RTX 4090"))
    table = build_table(rtx, ["usd_per_million_samples"])
    assert table.rows[0]["usd_per_million_samples"] is None
    no_price = "cost: null for 1 run on 'NVIDIA GeForce RTX 4090', which has no price"
    assert table.notes == [f"{no_price}: add --price 'NVIDIA GeForce RTX 4090=USD_PER_HOUR'"]


def test_cli_prices_by_flag_and_file_add_the_cost_columns(tmp_path, capsys):
    h100_pair(tmp_path / "runs")

    def costs(*options) -> dict[str, float | None]:
        code, out, _ = cli_compare(capsys, tmp_path / "runs", *options, "--format", "json")
        assert code == 0
        return {row["run"]: row["cost_usd"] for row in json.loads(out)}

    assert costs("--price", "NVIDIA H100 80GB HBM3=3") == {"cpu": None, "h100x2": pytest.approx(3.0)}
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpus": {"H100": {"usd_per_hour": 5, "device_names": ["NVIDIA H100 80GB HBM3"]}}}))
    assert costs("--prices", prices) == {"cpu": None, "h100x2": pytest.approx(5.0)}
    code, _, err = cli_compare(capsys, tmp_path / "runs", "--price", "H100")
    assert code == 2 and "expected DEVICE=USD_PER_HOUR" in err
    prices = load_prices(flags=["H100=3"])
    pivot = pivot_table([str(tmp_path / "runs")], ["ran.device_name"], [], "cost_usd", prices=prices)
    assert [(row["ran.device_name"], row["cost_usd"]) for row in pivot.rows] == [("NVIDIA H100 80GB HBM3", 3.0)]
    assert pivot.notes[-1] == "cost: null for 1 run without a GPU (CPU): no GPU price applies"


# --- throughput against peak memory


def memory_runs(tmp_path: Path) -> list[dict]:
    """(per-device batch, CUDA GiB, samples/s): 16 → (1, 50), 32 → (2, 100), 24 → (3, 90) is beaten by 32, 48 →
    (4, 120) by 64 → (4, 150); batch 128 ran out of memory."""
    runs = [make_result(f"b{batch}", batch_size=batch, cuda_bytes=gib * 2**30, samples_per_s=speed)
            for batch, gib, speed in [(16, 1, 50.0), (32, 2, 100.0), (24, 3, 90.0), (48, 4, 120.0), (64, 4, 150.0)]]
    oom = make_result("b128", batch_size=128, status="failed")
    oom["error"] = {"type": "OutOfMemory", "message": "CUDA out of memory", "phase": "training", "batch_size": 128}
    return write(tmp_path, *runs, oom)  # fmt: skip


def test_pareto_front_by_hand_and_out_of_memory_runs_kept(tmp_path):
    chart = pareto_chart(group_runs(memory_runs(tmp_path)))
    assert [(point.label, point.memory_gib, point.samples_per_s, point.optimal) for point in chart.points] == [
        ("batch_size=16", 1.0, 50.0, True),
        ("batch_size=32", 2.0, 100.0, True),
        ("batch_size=24", 3.0, 90.0, False),
        ("batch_size=48", 4.0, 120.0, False),
        ("batch_size=64", 4.0, 150.0, True),
    ]
    assert all(point.cuda for point in chart.points)
    assert [(failed.label, failed.batch_size) for failed in chart.out_of_memory] == [("batch_size=128", 128)]
    host = pareto_chart(group_runs(write(tmp_path / "cpu", make_result("cpu-run"))))
    assert [(point.memory_gib, point.cuda, point.label) for point in host.points] == [(3.0, False, "cpu-run")]


def test_pareto_draws_the_front_and_a_red_x_per_out_of_memory_run(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    from harness.charts import draw_pareto

    figure, axis = plt.subplots()
    draw_pareto(axis, pareto_chart(group_runs(memory_runs(tmp_path))))
    (front,) = axis.lines
    assert front.get_xydata().tolist() == [[1.0, 50.0], [2.0, 100.0], [4.0, 150.0]]
    (oom,) = [collection for collection in axis.collections if collection.get_label() == "out of memory"]
    ((x, y),) = oom.get_offsets().tolist()
    assert 4.0 < x < axis.get_xlim()[1] and 0 < y < 150.0  # at the memory axis' right edge, inside the plot
    assert tuple(oom.get_edgecolor()[0]) == to_rgba("red")
    texts = [text.get_text() for text in axis.texts]
    assert "OOM, batch 128: batch_size=128" in texts and "batch_size=48" in texts
    plt.close(figure)


def test_cli_pareto_writes_a_new_image_only(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    memory_runs(tmp_path / "runs")
    image = tmp_path / "pareto.png"
    code, out, _ = cli_compare(capsys, tmp_path / "runs", "--pareto", image)
    assert code == 0 and out.endswith(f"pareto: {image}\n")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = cli_compare(capsys, tmp_path / "runs", "--pareto", image)
    assert code == 2 and "exists" in err


def reaching(results: list[dict], walls: list[float | None], device: str | None = None) -> list[dict]:
    """Each run's training.target: reached after walls[i] seconds (None: never reached)."""
    for result, wall in zip(results, walls):
        result["training"]["target"] = {"metrics": {"f1_macro": 0.9}, "reached": wall is not None, "step": None,
                                        "epoch": None, "samples": None if wall is None else int(wall * 10),
                                        "train_wall_s": wall, "energy_j": None if wall is None else wall * 300.0}  # fmt: skip
        result["ran"]["device_name"] = device
    return results


def test_time_energy_and_cost_to_target_are_medians_with_their_range_over_repeats(tmp_path):
    """MLPerf's way: a row of seeds shows the median time to target of the runs that reached it, their range, and
    how many did; cost to target prices the GPUs for that time."""
    runs = reaching(seeds("g", [100.0, 110.0, 90.0, 95.0]), [120.0, 80.0, None, 100.0], "NVIDIA H100 80GB HBM3")
    names = ["time_to_target_s", "samples_to_target", "energy_to_target_j", "cost_to_target_usd"]
    table = build_table(write(tmp_path, *runs), names)
    (row,) = table.rows
    assert row["time_to_target_s"] == 100.0 and row["time_to_target_s_range"] == [80.0, 120.0]
    assert row["time_to_target_s_reached"] == "3/4" and row["time_to_target_s_std"] is None
    assert row["energy_to_target_j"] == 300.0 * 100.0 and row["samples_to_target"] == 1000
    price = read_price_file(SHIPPED).price("NVIDIA H100 80GB HBM3")
    assert row["cost_to_target_usd"] == pytest.approx(price * 100.0 / 3600)
    cells = markdown_rows(render_markdown(table))[0]
    assert cells["time_to_target_s ↓"] == "100 [80.0, 120] (3/4 reached)"
    assert any("median over a row's runs that reached train.target" in line for line in notes(render_markdown(table)))
