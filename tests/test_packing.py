"""Packed training batches (data.packing): the collator's row, per-sample logits equal to the padded forward's,
a packed run's losses equal to a padded run's, and the refusals."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from harness.packing import PackingCollator, accept_packed_batches, position_ids_start
from harness.preflight import PreflightError, preflight
from harness.recipe import RecipeError, load_recipe

pytestmark = pytest.mark.stack  # packed == padded on every stack we ship: transformers' masks change between versions

LENGTHS = [5, 17, 9, 30, 3]  # longer than ModernBERT's tiny local window below, so sliding layers matter
LABELS = [0, 1, 2, 0, 1]


def features(lengths=LENGTHS, first_id: int = 3) -> list[dict]:
    """Tokenised samples as the dataset yields them: ids (never the pad ids 0 and 1), label, length."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for n, label in zip(lengths, LABELS):
        ids = [first_id, *torch.randint(5, 100, (n - 2,), generator=generator).tolist(), 4]
        rows.append({"input_ids": ids, "labels": label, "length": n})
    return rows


def tiny_model(model_type: str, attn: str, **config) -> torch.nn.Module:
    config = AutoConfig.for_model(model_type, vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, num_labels=3, **config)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attn)
    return accept_packed_batches(model.eval())


def padded(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """The same samples as one padded batch, built by hand (right padding, mask of ones on real tokens)."""
    longest = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), longest), pad_id)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row["input_ids"])] = torch.tensor(row["input_ids"])
        mask[i, : len(row["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["labels"] for r in rows])}


def test_the_packed_row_holds_each_sample_once_with_restarting_positions():
    rows = features()
    batch = PackingCollator(first_position=0)([dict(r) for r in rows])
    counts = batch.pop("counts")
    assert batch["input_ids"].tolist() == [[t for r in rows for t in r["input_ids"]]]
    assert batch["position_ids"].tolist() == [[p for n in LENGTHS for p in range(n)]]
    assert batch["seq_idx"].tolist() == [[i for i, n in enumerate(LENGTHS) for _ in range(n)]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 22, 31, 61, 64] and batch["max_length_q"] == 30
    assert batch["labels"].tolist() == LABELS
    # the padded batch's real tokens are exactly the row; nothing padded is computed
    reference = padded(rows, 0)
    assert reference["input_ids"][reference["attention_mask"].bool()].tolist() == batch["input_ids"][0].tolist()
    assert counts.samples == 5 and counts.real_tokens == counts.padded_tokens == sum(LENGTHS) == 64
    assert counts.lengths == LENGTHS


def test_repeated_samples_are_computed_but_counted_apart():
    rows = [dict(r, repeat=i == 4) for i, r in enumerate(features())]
    counts = PackingCollator()(rows)["counts"]
    assert counts.samples == 4 and counts.repeated_samples == 1
    assert counts.real_tokens == 61 and counts.padded_tokens == 64


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "model_type, config",
    [
        ("bert", {}),
        ("xlm-roberta", {"pad_token_id": 1, "max_position_embeddings": 64}),  # positions from pad id + 1
        ("modernbert", {"pad_token_id": 0, "local_attention": 8, "global_attn_every_n_layers": 2}),
        ("modernbert", {"pad_token_id": 0, "local_attention": 8, "classifier_pooling": "mean"}),
    ],
    ids=["bert", "xlm-roberta", "modernbert-cls", "modernbert-mean"],
)
def test_packed_logits_equal_the_padded_forward_per_sample(model_type, config, attn):
    model = tiny_model(model_type, attn, **config)
    rows = features()
    packed = PackingCollator(position_ids_start(model.config))([dict(r) for r in rows])
    packed.pop("counts")
    with torch.no_grad():
        reference = model(**padded(rows, model.config.pad_token_id))
        output = model(**packed)
    assert output.logits.shape == (5, 3)
    torch.testing.assert_close(output.logits, reference.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.loss, reference.loss, atol=1e-6, rtol=1e-6)


def test_without_boundaries_samples_would_mix():
    """The check above can fail: the same row attended as one sequence gives the second sample's [CLS] another
    hidden state than its padded forward. The mask of ones says "one sequence" on every transformers version:
    without any mask, 5.25 and later infer the samples from the restarting position ids (masking_utils'
    find_packed_sequence_indices) and would keep them apart themselves."""
    model = tiny_model("bert", "sdpa")
    packed = PackingCollator()([dict(r) for r in features()])
    one_sequence = torch.ones_like(packed["input_ids"])
    with torch.no_grad():
        mixed = model.base_model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], attention_mask=one_sequence
        ).last_hidden_state
        kept = model.base_model(**{k: v for k, v in padded(features(), 0).items() if k != "labels"}).last_hidden_state
    assert (mixed[0, 5] - kept[1, 0]).abs().max() > 100 * 1e-5  # far outside the tolerance of the test above


def test_a_packed_batch_trains_the_same_gradients():
    model = tiny_model("modernbert", "sdpa", pad_token_id=0, local_attention=8)
    rows = features()
    model(**padded(rows, 0)).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    packed = PackingCollator()([dict(r) for r in rows])
    packed.pop("counts")
    model(**packed).loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)


def synthetic(tmp_path, *overrides):
    return load_recipe("bert-shape-synthetic-cpu", [
        "model.config_overrides={num_hidden_layers: 1, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
        "data.synthetic.train_samples=64", "data.synthetic.eval_samples=16", "train.max_steps=4",
        "train.batch_size=16", "train.log_every_steps=1", "collector.warmup_steps=1",
        f"output.checkpoints_dir={tmp_path / 'ck'}", *overrides,
    ])  # fmt: skip


@pytest.mark.slow
def test_a_packed_run_matches_the_padded_run(tmp_path):
    """Without dropout a packed and a padded run see the same samples in the same order: equal losses at every
    step and equal validation metrics; the packed run computes real tokens only and records how."""
    from harness.launcher import launch
    from harness.plan import make_plan
    from harness.results import load_result

    def run(*overrides):
        recipe = synthetic(tmp_path, *overrides)
        return load_result(launch(make_plan(recipe, results_dir=str(tmp_path / "results"))))

    plain, packed = run(), run("data.packing=true")
    losses = [[entry["loss"] for entry in r["training"]["loss_history"]] for r in (plain, packed)]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert packed["training"]["evaluations"][-1]["f1_macro"] == pytest.approx(
        plain["training"]["evaluations"][-1]["f1_macro"]
    )
    log, plain_log = packed["training"]["step_log"], plain["training"]["step_log"]
    assert log["real_tokens"] == plain_log["real_tokens"] and log["padded_tokens"] == log["real_tokens"]
    assert sum(plain_log["padded_tokens"]) > sum(plain_log["real_tokens"])
    assert packed["speed"]["padding_efficiency"] == 1.0
    assert packed["ran"]["packing"]["attention"].startswith("block-diagonal mask")
    assert plain["ran"]["packing"] is None


def test_packing_contradicting_padding_settings_is_refused():
    with pytest.raises(RecipeError, match="data.padding: chunk"):
        load_recipe("bert-shape-synthetic-cpu", ["data.packing=true", "data.padding=chunk"])
    with pytest.raises(RecipeError, match="data.pad_to_multiple_of"):
        load_recipe("bert-shape-synthetic-cpu", ["data.packing=true", "data.pad_to_multiple_of=8"])


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["model.name=config:deberta-v3-base", "model.tokenizer=null"], "deberta-v2 is not among"),
        (["model.attn_implementation=flex_attention"], "attention 'flex_attention'"),
    ],
)
def test_packing_a_model_or_attention_that_would_mix_samples_is_refused(tmp_path, overrides, match):
    recipe = synthetic(tmp_path, "data.packing=true", f"output.results_dir={tmp_path}", *overrides)
    with pytest.raises(PreflightError, match=f"data.packing: {match}.*set data.packing: false"):
        preflight(recipe)


@pytest.mark.slow
def test_two_processes_train_packed_batches_as_they_train_padded_ones(tmp_path):
    """DDP reaches the packed forward: two gloo processes, each packing its own batches, give the padded
    two-process run's losses, and every sample is counted once."""
    from harness.launcher import launch
    from harness.plan import make_plan
    from harness.results import load_result

    def run(*overrides):
        recipe = synthetic(tmp_path, "hardware.num_processes=2", "train.batch_size=8", *overrides)
        return load_result(launch(make_plan(recipe, results_dir=str(tmp_path / "results"))))

    plain, packed = run(), run("data.packing=true")
    assert packed["ran"]["world_size"] == 2 and packed["ran"]["packing"]["train_batches"] == "packed"
    assert sum(packed["training"]["step_log"]["samples"]) == 4 * 8 * 2
    losses = [[entry["loss"] for entry in r["training"]["loss_history"]] for r in (plain, packed)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
