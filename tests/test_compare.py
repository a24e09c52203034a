"""harness.compare: tables over result files written to tmp_path, checked against hand-computed values."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.compare import DEFAULT_METRICS, build_table, compare, render_csv, render_json
from harness.results import MemoryReport, RunResult, SpeedReport, load_result, save_result

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
) -> RunResult:
    recipe = {
        "name": "tiny",
        "model": {"name": "tiny-bert", "attn_implementation": "sdpa"},
        "precision": {"dtype": "fp32"},
        "train": {"batch_size": batch_size},
        "hardware": {"device": "cpu", "num_processes": processes, "gpu": None},
    }
    speed = memory = None
    if status == "completed":
        speed = SpeedReport(
            warmup_steps=2, measured_steps=10, train_samples_per_s=samples_per_s,
            train_real_tokens_per_s=5000.0, train_padded_tokens_per_s=6250.0, padding_efficiency=0.8,
            step_time_mean_s=0.33, step_time_p50_s=0.3125, step_time_p90_s=0.5, time_to_first_step_s=4.0,
            train_wall_s=10.0, eval_samples_per_s=400.0, total_wall_s=20.0, mfu=None,
        )
        memory = MemoryReport(peak_host_rss_bytes=3 * 2**30, cuda_peak_allocated_bytes=cuda_bytes)
    return RunResult(
        run_id=run_id, kind="train", status=status, recipe_name="tiny", recipe_hash="abc", recipe=recipe,
        started_at="2025-01-01T00:00:00+00:00", finished_at="2025-01-01T00:01:00+00:00",
        ran={"device": "cpu", "mixed_precision": "no", "attn_implementation": "sdpa", "world_size": processes},
        speed=speed, memory=memory, accuracy=accuracy or {},
        error={"type": "RuntimeError", "message": "boom"} if status == "failed" else None,
    )


def write(tmp_path: Path, *results: RunResult) -> list[dict]:
    for result in results:
        save_result(tmp_path, result)
    return [load_result(tmp_path / "tiny" / f"{result.run_id}.json") for result in results]


def markdown_rows(text: str) -> list[dict[str, str]]:
    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    lines = text.splitlines()
    return [dict(zip(cells(lines[0]), cells(line))) for line in lines[2:]]


ACCURACY = {
    "validation": {"accuracy": 0.5, "accuracy_stderr": 0.1, "f1_macro": 0.4, "f1_macro_stderr": None},
    "test": {"accuracy": 0.912, "accuracy_stderr": 0.01, "f1_macro": 0.9, "f1_macro_stderr": 0.0123},
}


def test_markdown_headers_carry_direction_and_alignment(tmp_path):
    write(tmp_path, make_result("run-a"))
    lines = compare([str(tmp_path)]).splitlines()
    assert "f1_macro ↑" in lines[0] and "step_p50_s ↓" in lines[0] and "peak_rss_gib ↓" in lines[0]
    rule = lines[1].strip("|").split("|")
    assert not rule[0].endswith(":") and all(cell.endswith(":") for cell in rule[4:])
    row = markdown_rows("\n".join(lines))[0]
    assert row["run"] == "run-a" and row["setup"] == "cpu fp32 sdpa x1" and row["status"] == "completed"
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
        make_result("run-1", samples_per_s=100.0, processes=1),
        make_result("run-2", samples_per_s=180.0, processes=2),
        make_result("run-4", samples_per_s=300.0, processes=4),
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
        make_result("run-1a", samples_per_s=90.0),
        make_result("run-1b", samples_per_s=110.0),
        make_result("run-2", samples_per_s=150.0, processes=2),
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
    assert all(failed[header] == "" for header in failed if header not in ("run", "recipe", "status", "setup"))
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
    code = "import sys, harness.compare; print(sorted({'torch', 'pandas', 'numpy', 'matplotlib'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_cli(tmp_path):
    write(tmp_path, make_result("run-a"))
    command = [sys.executable, "-m", "harness.cli", "compare", str(tmp_path), "--format", "csv", "--metrics", "mfu"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "run,recipe,status,setup,mfu"
    bad = subprocess.run([*command[:-1], "mfuu"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'mfu'" in bad.stderr


def test_plot_draws_one_panel_per_metric_and_never_replaces_a_file(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from harness.compare import plot_table

    results = write(tmp_path, make_result("run-a"), make_result("run-b", samples_per_s=300.0))
    table = build_table(results, ["train_samples_per_s", "f1_macro", "mfu"])
    path = plot_table(table, tmp_path / "speed.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = imread(path).shape[:2]
    assert width == round((3.2 * 3 + 2) * 120) and height == round((0.6 * 2 + 1.2) * 120)  # 3 panels, 2 runs
    with pytest.raises(FileExistsError):
        plot_table(table, path)
