"""bench/seed_trainer.py, the seed Trainer arm: one tiny run of the stock transformers.Trainer recipe on CPU,
offline, checked against counts made here independently from the recipe, and read by `harness compare`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from harness import train
from harness.compare import compare_table
from harness.data import load_labelled
from harness.modeling import load_tokenizer
from harness.recipe import load_recipe
from harness.results import load_result, result_problems

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("seed_trainer", REPO / "bench" / "seed_trainer.py")
seed_trainer = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = seed_trainer  # its dataclasses look their module up there
spec.loader.exec_module(seed_trainer)

RECIPE = "recipes/bert-shape-synthetic-cpu.yaml"
TRAIN_SAMPLES, BATCH, EPOCHS, WARMUP = 20, 8, 2, 1  # 20 = 8 + 8 + 4: every epoch ends on a short batch
TINY = [
    "model.config_overrides={num_hidden_layers: 1, hidden_size: 64, num_attention_heads: 2, intermediate_size: 128}",
    f"data.synthetic.train_samples={TRAIN_SAMPLES}", "data.synthetic.eval_samples=8",
    "train.max_steps=null", f"train.epochs={EPOCHS}", f"train.batch_size={BATCH}", "train.log_every_steps=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    """One seed Trainer run of the tiny workload: its result file and document."""
    tmp = tmp_path_factory.mktemp("seed")
    overrides = [*TINY, f"output.checkpoints_dir={tmp / 'checkpoints'}"]
    argv = [RECIPE, *[a for o in overrides for a in ("--set", o)], "--results-dir", str(tmp / "results"),
            "--warmup-steps", str(WARMUP)]  # fmt: skip
    assert seed_trainer.main(argv) == 0
    [path] = (tmp / "results").rglob("*.json")
    return path, json.loads(path.read_text())


def train_texts() -> tuple[list[str], object]:
    """The recipe's training texts and tokenizer, loaded here by the harness's loader, not by the script."""
    recipe = load_recipe(RECIPE, TINY)
    return list(load_labelled(recipe.data).splits["train"]["text"]), load_tokenizer(recipe.model)


def test_the_result_passes_the_schema_and_says_what_ran(run):
    path, result = run
    assert result_problems(result) == []
    assert load_result(path)["status"] == "completed"
    assert result["recipe_name"] == "bert-shape-synthetic-cpu-seed-trainer" == path.parent.name
    ran = result["ran"]
    assert ran["trainer"] == "transformers.Trainer" and ran["padding"] == "chunk"
    assert ran["optimizer"] == "adamw_torch_fused" and ran["fused_optimizer"] is True  # torch fuses AdamW on CPU
    assert (ran["mixed_precision"], ran["parameter_dtype"], ran["attn_implementation"]) == ("no", "float32", "sdpa")
    assert ran["num_layers"] == 1 and ran["hidden_size"] == 64  # read back from the model: the overrides held
    data = result["recipe"]["data"]
    assert (data["padding"], data["group_by_length"], data["pad_to_multiple_of"]) == ("chunk", False, 1)
    assert result["training"]["test_from"] == "final_weights"
    assert result["accuracy"]["test"]["num_samples"] == 8  # the synthetic test split, by the harness's metrics
    assert result["environment"]["packages"]["transformers"]
    assert (path.parent / result["predictions_file"]).is_file()


def test_samples_and_tokens_match_an_independent_count(run):
    _, result = run
    log, speed = result["training"]["step_log"], result["speed"]
    steps_per_epoch = -(-TRAIN_SAMPLES // BATCH)
    assert result["training"]["optimizer_steps"] == len(log["samples"]) == EPOCHS * steps_per_epoch
    assert log["samples"] == [8, 8, 4] * EPOCHS
    assert sum(log["samples"]) == TRAIN_SAMPLES * EPOCHS

    texts, tokenizer = train_texts()
    assert len(texts) == TRAIN_SAMPLES < 1000  # one datasets.map chunk: every row is padded to its longest text
    max_length = load_recipe(RECIPE, TINY).data.max_length
    chunk_length = len(tokenizer(texts, padding=True, truncation=True, max_length=max_length)["input_ids"][0])
    assert log["padded_tokens"] == [rows * chunk_length for rows in log["samples"]]
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    assert sum(log["real_tokens"]) == EPOCHS * sum(lengths)  # every text seen once per epoch
    assert sum(log["padded_tokens"]) >= sum(log["real_tokens"])
    assert speed["padding_efficiency"] == pytest.approx(sum(lengths) / (TRAIN_SAMPLES * chunk_length))

    assert (speed["warmup_steps"], speed["measured_steps"]) == (WARMUP, len(log["samples"]) - WARMUP)
    assert speed["train_samples_per_s"] > 0 and speed["data_wait_fraction"] is None  # not measured: null
    assert speed["mfu"] is None  # a CPU has no known peak


def test_accumulated_micro_batches_count_in_their_optimizer_step(tmp_path):
    """The Trainer fetches batches ahead of the step that trains on them; each step still gets its own counts,
    also the last step of an epoch, which accumulates fewer micro-batches (20 samples: 8 + 8, then 4)."""
    overrides = [*TINY, "train.gradient_accumulation_steps=2", "train.max_steps=3",
                 f"output.checkpoints_dir={tmp_path / 'checkpoints'}"]  # fmt: skip
    argv = [RECIPE, *[a for o in overrides for a in ("--set", o)], "--results-dir", str(tmp_path / "results")]
    assert seed_trainer.main(argv) == 0
    [path] = (tmp_path / "results").rglob("*.json")
    result = load_result(path)
    assert result["training"]["step_log"]["samples"] == [16, 4, 16]
    assert result["ran"]["global_batch_size"] == 16 and result["training"]["steps_per_epoch"] == 2


def test_harness_compare_reads_it(run):
    path, _ = run
    shown = subprocess.run([sys.executable, "-m", "harness", "compare", str(path.parent.parent), "--strict"],
                           capture_output=True, text=True, cwd=REPO, timeout=120, check=False)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "bert-shape-synthetic-cpu-seed-trainer" in shown.stdout
    assert "skipped" not in shown.stdout


def test_side_by_side_with_the_harness_on_the_same_workload(run):
    """The harness's own run of the recipe trains on the same samples and real tokens; compare shows both rows and
    names what the seed arm changed."""
    path, seed = run
    results = path.parent.parent
    overrides = [*TINY, "train.eval_strategy=no", f"output.checkpoints_dir={results.parent / 'checkpoints'}"]
    argv = ["--recipe", RECIPE, *[a for o in overrides for a in ("--set", o)], "--results-dir", str(results)]
    assert train.main(argv) == 0
    [harness_path] = (results / "bert-shape-synthetic-cpu").glob("*.json")
    harness_log, seed_log = load_result(harness_path)["training"]["step_log"], seed["training"]["step_log"]
    for counted in ("samples", "real_tokens"):
        assert sum(harness_log[counted]) == sum(seed_log[counted])
    assert sum(seed_log["padded_tokens"]) >= sum(harness_log["padded_tokens"])  # chunk padding pads more

    table = compare_table([str(path), str(harness_path)])
    seed_row, harness_row = table.rows
    assert (seed_row["recipe"], harness_row["recipe"]) == ("bert-shape-synthetic-cpu-seed-trainer",
                                                           "bert-shape-synthetic-cpu")  # fmt: skip
    assert "data.padding=chunk" in seed_row["differs"] and "data.group_by_length=false" in seed_row["differs"]


def test_each_1000_row_chunk_is_padded_to_its_own_longest_text(minilm_tokenizer):
    texts = ["short"] * 1000 + ["a much longer text than the others"] * 5
    data = seed_trainer.seed_tokenize(DatasetDict({"train": Dataset.from_dict({"text": texts})}), minilm_tokenizer, 64)
    ids = list(data["train"]["input_ids"])
    widths = {len(row) for row in ids[:1000]}, {len(row) for row in ids[1000:]}
    assert widths == ({3}, {len(minilm_tokenizer(texts[-1])["input_ids"])})  # [CLS] short [SEP]; the long text's


def test_a_recipe_of_several_processes_is_refused(tmp_path, capsys):
    argv = [RECIPE, "--set", "hardware.num_processes=2", "--results-dir", str(tmp_path)]
    assert seed_trainer.main(argv) == 2
    assert "runs one process" in capsys.readouterr().err
