"""bench/gpu_targets.py: the speed matrix's targets judged on fake result files, each a copy of a committed
result (tests/data/report) with only the fields that matter changed, laid out as bench/gpu_matrix.sh writes them."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_targets", REPO / "bench" / "gpu_targets.py")
gpu_targets = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = gpu_targets  # its dataclasses look their module up there
spec.loader.exec_module(gpu_targets)

RUNS = REPO / "tests" / "data" / "report" / "runs" / "minilm-banking77-cpu"
COMPLETED = json.loads((RUNS / "20261201T160210Z-minilm-banking77-cpu-3f9a1c.json").read_text())
FAILED = json.loads((RUNS / "20261201T163412Z-minilm-banking77-cpu-e21f70.json").read_text())
DEVICE = "NVIDIA H100 80GB HBM3"
SPEED, FA2 = "modernbert-base-speed-matrix", "modernbert-base-speed-matrix-fa2"
SEED = "modernbert-base-speed-matrix-seed-trainer"
ACCURACY = "minilm-banking77-gpu-accuracy"
FIXED = {"distribution": "fixed", "length": 512}
NORMAL = {"distribution": "normal", "mean": 128, "std": 96, "min": 16, "max": 512}


class Matrix:
    """Writes fake result files into a results folder: speed/ and accuracy/ as gpu_matrix.sh lays them out."""

    def __init__(self, root: Path):
        self.root = root
        self.count = 0

    def write(self, folder: str, document: dict) -> dict:
        self.count += 1
        document["run_id"] = f"20270101T0000{self.count:02d}Z-{document['recipe_name']}-{self.count:06x}"
        path = self.root / folder / document["recipe_name"] / f"{document['run_id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))
        return document

    def speed(self, recipe: str = SPEED, lengths: dict = FIXED, dtype: str = "bf16", attn: str = "sdpa",
              packing: bool = False, compile: bool = False, mfu: float | None = None, samples: float = 100.0,
              status: str = "completed") -> dict:  # fmt: skip
        """A speed run of one arm and workload with the given numbers."""
        document = run(COMPLETED if status == "completed" else FAILED, recipe, dtype, attn, packing, compile)
        document["recipe"]["data"]["synthetic"] = {"num_labels": 4, "lengths": dict(lengths)}
        if status == "completed":
            document["speed"].update(mfu=mfu, train_samples_per_s=samples, padding_efficiency=0.5,
                                     train_real_tokens_per_s=samples * 100)  # fmt: skip
        else:
            document["status"] = status
            document["error"] = {"type": "OutOfMemory", "message": "CUDA out of memory", "phase": "training",
                                 "batch_size": 32, "batch_shape": [32, 512]}  # fmt: skip
        return self.write("speed", document)

    def accuracy(self, f1: float, dtype: str = "fp32", packing: bool = False, compile: bool = False,
                 status: str = "completed") -> dict:  # fmt: skip
        """A run of the accuracy recipe with the given test macro-F1."""
        document = run(COMPLETED if status == "completed" else FAILED, ACCURACY, dtype, "sdpa", packing, compile)
        if status == "completed":
            document["accuracy"]["test"]["f1_macro"] = f1
        else:
            document["status"] = status
        return self.write("accuracy", document)


def run(template: dict, recipe: str, dtype: str, attn: str, packing: bool, compile: bool) -> dict:
    """A copy of a committed result with the recipe name and arm settings replaced."""
    document = copy.deepcopy(template)
    document["recipe_name"] = document["recipe"]["name"] = recipe
    document["recipe"]["precision"]["dtype"] = dtype
    document["recipe"]["model"]["attn_implementation"] = attn
    document["recipe"]["data"]["packing"] = packing
    document["recipe"]["train"]["compile"] = compile
    document["ran"]["device_name"] = DEVICE
    return document


def full_matrix(matrix: Matrix, best_mfu: float = 0.52, best_normal: float = 350.0,
                fast_f1: tuple[float, ...] = (0.899, 0.901, 0.900)) -> None:  # fmt: skip
    """A complete matrix: three fixed-length arms, three variable-length arms, the seed Trainer in each, and
    three repeats of the plain and fast accuracy arms."""
    matrix.speed(dtype="fp32", mfu=0.30)
    matrix.speed(dtype="bf16", mfu=0.40)
    matrix.speed(recipe=FA2, attn="flash_attention_2", packing=True, compile=True, mfu=best_mfu - 0.02)
    matrix.speed(recipe=FA2, attn="flash_attention_2", packing=True, compile=True, mfu=best_mfu + 0.02)
    matrix.speed(recipe=SEED, mfu=0.28)
    matrix.speed(lengths=NORMAL, samples=200.0)
    matrix.speed(lengths=NORMAL, recipe=FA2, attn="flash_attention_2", packing=True, samples=best_normal)
    matrix.speed(lengths=NORMAL, dtype="fp32", samples=90.0)
    matrix.speed(lengths=NORMAL, recipe=SEED, samples=100.0)
    for f1 in (0.898, 0.900, 0.902):
        matrix.accuracy(f1)
    for f1 in fast_f1:
        matrix.accuracy(f1, dtype="bf16", packing=True, compile=True)


def check(root: Path, tmp_path: Path) -> tuple[int, str, dict[str, gpu_targets.Outcome]]:
    """The exit code, the written summary and each target's outcome."""
    output = tmp_path / "out" / "targets.md"
    code = gpu_targets.main([str(root), "--output", str(output)])
    loaded = gpu_targets.load_results([str(root)])
    outcomes = {target.__name__: target(loaded.results) for target in gpu_targets.TARGETS}
    return code, output.read_text(), outcomes


def test_all_targets_met(tmp_path, capsys):
    matrix = Matrix(tmp_path / "h100")
    full_matrix(matrix)
    code, text, outcomes = check(matrix.root, tmp_path)
    assert code == 0
    assert capsys.readouterr().out == text
    assert {outcome.status for outcome in outcomes.values()} == {"met"}
    assert f"Device: {DEVICE}." in text
    assert "15 results read (15 completed)" in text
    mfu = outcomes["mfu_target"]
    assert "**bf16 flash_attention_2 packing compile** (modernbert-base-speed-matrix-fa2, 2 runs), MFU 0.520" in text
    assert mfu.summary == "bf16 flash_attention_2 packing compile: MFU 0.520 ≥ 0.45, 7.0 percentage points to spare"
    assert "mfu ↑" in text and "train_samples_per_s ↑" in text and "padding_efficiency ↑" in text
    rows = [line for line in mfu.body if line.startswith("| modernbert")]
    assert [row.split("|")[2].strip() for row in rows] == [
        "bf16 flash_attention_2 packing compile", "bf16 sdpa", "fp32 sdpa", "bf16 sdpa"]  # sorted by MFU, seed last
    assert SEED in rows[-1] and "0.280" in rows[-1]
    assert "0.520 ± 0.028" in rows[0]  # mean ± std over the arm's two runs
    speedup = outcomes["speedup_target"]
    assert speedup.summary.startswith("bf16 flash_attention_2 packing / seed Trainer = 3.50x ≥ 3x (0.50x to spare)")
    accuracy = outcomes["accuracy_target"]
    assert "fast − plain macro-F1 -0.0000" in accuracy.summary or "+0.0000" in accuracy.summary
    assert "alpha 0.05" in text and "≤ 0.01 (1 point of F1)" in text
    assert "fast: bf16 sdpa packing compile" in text and "plain: fp32 sdpa" in text
    assert "None." in text  # no run that did not complete
    assert "Not part of the matrix" not in text


def test_other_recipes_are_named(tmp_path):
    matrix = Matrix(tmp_path / "h100")
    full_matrix(matrix)
    matrix.write("speed", run(COMPLETED, "minilm-banking77-cpu", "fp32", "sdpa", False, False))
    code, text, _ = check(matrix.root, tmp_path)
    assert code == 0
    assert "Not part of the matrix (no target reads them): minilm-banking77-cpu (1)." in text


def test_mfu_missed_by_points_and_ratio(tmp_path):
    matrix = Matrix(tmp_path / "h100")
    full_matrix(matrix, best_mfu=0.40)  # the fa2 arm: 0.38 and 0.42, mean 0.40; bf16 sdpa 0.40 too
    matrix.speed(recipe=FA2, attn="flash_attention_2", mfu=0.41)
    code, _, outcomes = check(matrix.root, tmp_path)
    assert code == 1
    outcome = outcomes["mfu_target"]
    assert outcome.status == "missed"
    assert outcome.summary == ("bf16 flash_attention_2: MFU 0.410 < 0.45: missed by 4.0 percentage points "
                               "(0.91x the target)")  # fmt: skip


def test_mfu_ignores_other_precisions_and_the_seed_trainer(tmp_path):
    """Only bf16 harness arms are judged: a faster fp16 arm or seed Trainer run does not count."""
    matrix = Matrix(tmp_path / "h100")
    full_matrix(matrix, best_mfu=0.30)
    matrix.speed(dtype="fp16", mfu=0.60)
    matrix.speed(recipe=SEED, mfu=0.70)
    _, _, outcomes = check(matrix.root, tmp_path)
    assert outcomes["mfu_target"].status == "missed"
    assert outcomes["mfu_target"].summary.startswith("bf16 sdpa: MFU 0.400 < 0.45")


def test_speedup_missed(tmp_path):
    matrix = Matrix(tmp_path / "h100")
    full_matrix(matrix, best_normal=250.0)
    code, text, outcomes = check(matrix.root, tmp_path)
    assert code == 1
    outcome = outcomes["speedup_target"]
    assert outcome.status == "missed"
    assert "2.50x < 3x: 0.50x short (the target needs 300.0 samples/s)" in outcome.summary
    assert "Seed Trainer arm: **bf16 sdpa** (modernbert-base-speed-matrix-seed-trainer, 1 run): 100.0 samples/s" in text
    assert "Best harness arm: **bf16 flash_attention_2 packing**" in text and "250.0 samples/s" in text
    assert "real_tokens_per_s ↑" in text


def test_accuracy_drop_is_missed(tmp_path):
    matrix = Matrix(tmp_path / "h100")
    full_matrix(matrix, fast_f1=(0.798, 0.800, 0.802))  # 0.80 ± 0.002 against 0.90 ± 0.002
    code, text, outcomes = check(matrix.root, tmp_path)
    assert code == 1
    outcome = outcomes["accuracy_target"]
    assert outcome.status == "missed"
    assert "fast − plain macro-F1 -0.1000" in outcome.summary and "|difference| 0.1000 > 0.01" in outcome.summary
    assert "rejected at alpha 0.05" in text and "not rejected" not in text
    assert "0.800 ± 0.002" in text and "0.900 ± 0.002" in text


def test_accuracy_small_but_significant_drop_is_missed(tmp_path):
    """Both criteria: a drop under one point that Welch's test still rejects is not within noise."""
    matrix = Matrix(tmp_path / "h100")
    full_matrix(matrix, fast_f1=(0.8929, 0.8930, 0.8931))  # 0.007 below, with tiny spread
    _, _, outcomes = check(matrix.root, tmp_path)
    outcome = outcomes["accuracy_target"]
    assert outcome.status == "missed" and "|difference| 0.0070 ≤ 0.01" in outcome.summary


def test_failed_and_out_of_memory_runs_are_listed_and_ignored(tmp_path):
    matrix = Matrix(tmp_path / "h100")
    full_matrix(matrix)
    oom = matrix.speed(dtype="fp32", attn="eager", status="failed")  # an OOM arm faster on paper: ignored
    stopped = matrix.accuracy(0.1, dtype="bf16", status="interrupted")
    code, text, outcomes = check(matrix.root, tmp_path)
    assert code == 0
    assert "17 results read (15 completed)" in text
    assert (f"- `{oom['run_id']}` ({SPEED}, fp32 eager, fixed, 512 tokens): failed, OutOfMemory (training, "
            "batch_size 32 per device, batch 32×512)") in text  # fmt: skip
    assert f"- `{stopped['run_id']}` ({ACCURACY}, bf16 sdpa): interrupted, ChildFailedError" in text
    assert "fp32 eager" not in "\n".join(outcomes["mfu_target"].body)


def test_unreadable_files_are_named(tmp_path):
    matrix = Matrix(tmp_path / "h100")
    full_matrix(matrix)
    (matrix.root / "speed" / "cut.json").write_text('{"schema_version": "2.1", "run_id": "x')
    code, text, _ = check(matrix.root, tmp_path)
    assert code == 0
    assert "skipped 1 of 16 result files" in text and "cut.json" in text


def test_missing_data_exits_2_naming_the_target(tmp_path):
    matrix = Matrix(tmp_path / "h100")
    full_matrix(matrix)
    for path in (matrix.root / "speed").rglob("*.json"):
        if json.loads(path.read_text())["recipe_name"] == SEED:
            path.unlink()
    code, text, outcomes = check(matrix.root, tmp_path)
    assert code == 2
    assert outcomes["speedup_target"].status == "no data"
    assert ("2. Variable-length workload: best harness arm ≥ 3x the seed Trainer's samples/s: **no data**: no "
            "completed seed Trainer arm with train_samples_per_s in the normal-length workload") in text  # fmt: skip
    assert outcomes["mfu_target"].status == "met"  # the seed Trainer is only a reference row there


def test_not_enough_repeats_exits_2_unless_a_target_is_missed(tmp_path):
    matrix = Matrix(tmp_path / "h100")
    full_matrix(matrix, fast_f1=())  # plain arm only
    matrix.accuracy(0.9, dtype="bf16", packing=True)
    code, text, outcomes = check(matrix.root, tmp_path)
    assert code == 2
    why = "not enough repeats with macro-F1 (at least 2 per arm; found fast 1 run)"
    assert outcomes["accuracy_target"].summary == why
    assert "3. Accuracy: fast arm's macro-F1 within noise of the plain arm's: **no data**: not enough repeats" in text
    matrix.speed(recipe=FA2, attn="flash_attention_2", samples=1.0, mfu=0.1)  # the MFU target still met
    matrix.speed(lengths=NORMAL, recipe=SEED, dtype="fp32", samples=200.0)  # the fastest seed arm is compared
    code, _, outcomes = check(matrix.root, tmp_path)
    assert code == 1
    assert outcomes["speedup_target"].summary.startswith("bf16 flash_attention_2 packing / seed Trainer = 1.75x < 3x")


def test_no_mfu_recorded_is_no_data(tmp_path):
    """An unknown device's MFU is null: no data, not a miss."""
    matrix = Matrix(tmp_path / "cpu")
    matrix.speed(mfu=None)
    matrix.speed(lengths=NORMAL, samples=350.0)
    matrix.speed(lengths=NORMAL, recipe=SEED, samples=100.0)
    code, _, outcomes = check(matrix.root, tmp_path)
    assert code == 2
    assert outcomes["mfu_target"].summary.startswith("no bf16 harness run recorded speed.mfu")
    assert outcomes["speedup_target"].status == "met"
    assert outcomes["accuracy_target"].summary.startswith("not enough repeats")


def test_empty_folder_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert gpu_targets.main([str(tmp_path / "empty")]) == 2
    assert "no data for any target" in capsys.readouterr().err


@pytest.mark.parametrize("statuses, code", [(["met", "met"], 0), (["met", "no data"], 2), (["no data", "missed"], 1)])
def test_exit_codes(statuses, code):
    outcomes = [gpu_targets.Outcome(str(i), status, "", []) for i, status in enumerate(statuses)]
    assert gpu_targets.exit_code(outcomes) == code
