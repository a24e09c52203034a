"""The GPU fast path's switches, on CPU: gradient checkpointing, length buckets, torch.compile and --profile.
Each is recorded in the result, and none changes what is learned."""

from __future__ import annotations

import gzip
import json

import pytest

from harness.recipe import RecipeError, load_recipe

pytestmark = pytest.mark.slow

NO_DROPOUT = (
    "model.config_overrides={num_hidden_layers: 1, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}"
)


def tiny(tmp_path, *overrides):
    """Four steps of 16 synthetic texts on a one-layer BERT-base shape, without dropout (so runs that differ in
    a speed switch only must learn the same)."""
    return load_recipe("bert-shape-synthetic-cpu", [
        NO_DROPOUT, "data.synthetic.train_samples=64", "data.synthetic.eval_samples=16", "train.max_steps=4",
        "train.batch_size=16", "train.log_every_steps=1", "collector.warmup_steps=1",
        f"output.checkpoints_dir={tmp_path / 'ck'}", *overrides,
    ])  # fmt: skip


def run(tmp_path, *overrides, profile_steps: int = 0) -> tuple[dict, object]:
    from harness.launcher import launch
    from harness.plan import make_plan
    from harness.results import load_result

    plan = make_plan(tiny(tmp_path, *overrides), results_dir=str(tmp_path / "results"))
    plan.profile_steps = profile_steps
    return load_result(launch(plan)), plan


def losses(result: dict) -> list[float]:
    return [entry["loss"] for entry in result["training"]["loss_history"]]


def test_gradient_checkpointing_recomputes_to_the_same_losses(tmp_path):
    plain, _ = run(tmp_path)
    checkpointed, _ = run(tmp_path, "train.gradient_checkpointing=true")
    assert checkpointed["ran"]["gradient_checkpointing"] is True and plain["ran"]["gradient_checkpointing"] is False
    assert losses(checkpointed) == pytest.approx(losses(plain), rel=1e-5)


def test_length_buckets_bound_the_batch_shapes_and_change_no_loss(tmp_path):
    """Buckets widen batches with padding the attention mask hides: the same losses, and every step's padded
    tokens are its batch rows times one of the buckets."""
    plain, _ = run(tmp_path)
    bucketed, _ = run(tmp_path, "data.length_buckets=[32, 96, 128]")
    assert losses(bucketed) == pytest.approx(losses(plain), rel=1e-5)
    log = bucketed["training"]["step_log"]
    widths = {padded // samples for padded, samples in zip(log["padded_tokens"], log["samples"])}
    assert widths <= {32, 96, 128} and log["real_tokens"] == plain["training"]["step_log"]["real_tokens"]
    assert bucketed["ran"]["loader"]["length_buckets"] == [32, 96, 128]


def test_profiled_steps_are_written_and_left_out_of_the_measured_window(tmp_path):
    result, plan = run(tmp_path, "train.max_steps=5", profile_steps=2)
    profile = result["ran"]["profile"]
    assert profile["steps"] == [2, 3] and profile["folder"] == str(plan.profile_dir)
    assert sorted(profile["files"]) == ["top_operators", "trace"]  # no CUDA memory snapshot on CPU
    with gzip.open(plan.profile_dir / profile["files"]["trace"], "rt") as handle:
        events = json.load(handle)["traceEvents"]
    assert sorted({e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}) == [
        "ProfilerStep#0", "ProfilerStep#1"]  # fmt: skip
    # warm-up (1) and profiled (2) steps are not timed: 2 of the 5 steps are measured
    assert result["speed"]["warmup_steps"] == 3 and result["speed"]["measured_steps"] == 2


def test_bucket_settings_that_cannot_hold_a_batch_are_refused():
    for value, match in (("[64, 32, 128]", "increasing"), ("[32, 64]", "shorter than data.max_length"),
                         ("[]", "increasing")):  # fmt: skip
        with pytest.raises(RecipeError, match=match):
            load_recipe("bert-shape-synthetic-cpu", [f"data.length_buckets={value}"])
    with pytest.raises(RecipeError, match="data.packing leaves training batches unpadded"):
        load_recipe("bert-shape-synthetic-cpu", ["data.length_buckets=[128]", "data.packing=true"])


def test_a_compiled_run_learns_the_same_and_reports_its_compilation(tmp_path):
    """torch.compile (inductor, on CPU here) changes no loss beyond float noise; the result says how often it
    compiled and for how long, over the run and inside the measured window. Bucketed lengths bound the training
    shapes. Without warm-up steps the first compile falls inside the window, and the result says so."""
    plain, _ = run(tmp_path)
    # save_best: the test split is evaluated with the best checkpoint, reloaded into the compiled model
    compiled, _ = run(tmp_path, "train.compile=true", "collector.warmup_steps=0", "train.save_best=true")
    assert losses(compiled) == pytest.approx(losses(plain), rel=1e-4)
    report = compiled["ran"]["compile"]
    assert (report["backend"], report["dynamic"]) == ("inductor", False)  # as accelerate compiled it: static
    log = compiled["training"]["step_log"]
    shapes = {(samples, padded // samples) for padded, samples in zip(log["padded_tokens"], log["samples"])}
    # every training batch fills the 128 bucket: one training graph, and the evaluation's (no_grad) graph, a
    # recompile, which is outside the measured window
    assert shapes == {(16, 128)} and compiled["ran"]["loader"]["length_buckets"] == [32, 64, 128]
    assert report["run"]["compiles"] == 2 and report["run"]["recompiles"] == 1 and report["run"]["compile_s"] > 0
    assert report["run"]["recompile_reasons"] == ["0/0: GLOBAL_STATE changed: grad_mode"]
    window = report["measured_window"]
    assert window["compiles"] == 1 and window["recompiles"] == 0 and 0 < window["compile_s"] < report["run"]["compile_s"]
    assert report["run"]["eager_fallbacks"] == 0 and plain["ran"]["compile"] is None
    assert compiled["training"]["test_from"] == "best_checkpoint" and "f1_macro" in compiled["accuracy"]["test"]
    # the checkpoint names its weights as the model does (not torch.compile's _orig_mod.*), so all of them load
    from transformers import AutoModelForSequenceClassification

    _, loading = AutoModelForSequenceClassification.from_pretrained(
        compiled["training"]["best"]["checkpoint"], output_loading_info=True
    )
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    assert compiled["ran"]["model_class"] == "BertForSequenceClassification"  # the model, not torch's wrapper
