"""Bundled model shapes (`config:<shape>`) and synthetic workloads (`data.source: synthetic`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from harness.data import DataError, LabelInfo, load_labelled
from harness.preflight import PreflightError, model_config, resolve_model_source
from harness.recipe import LengthsSpec, ModelSpec, RecipeError, load_recipe, recipe_from_dict
from harness.shapes import DEFAULT_TOKENIZER, shape_names, shape_source
from harness.synthetic import SPLIT_SEED_OFFSETS, draw_lengths

# --------------------------------------------------------------------------- shapes: parameter counts by hand


def bert_like(vocab, hidden, layers, inter, positions, types, pooler=True):
    """BERT / RoBERTa encoder: embeddings (+LayerNorm), per layer Q/K/V/O and the MLP with biases, two
    LayerNorms, and the pooler."""
    embeddings = (vocab + positions + types) * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + (hidden * inter + inter) + (inter * hidden + hidden) + 4 * hidden
    return embeddings + layers * layer + (hidden * hidden + hidden if pooler else 0)


def modernbert(vocab, hidden, layers, inter):
    """ModernBERT: no biases, bias-free LayerNorms; fused Wqkv, Wo, GLU Wi (2 x inter), Wo; the first layer
    has no attention norm; an embedding norm and a final norm."""
    layer = 3 * hidden * hidden + hidden * hidden + hidden * 2 * inter + inter * hidden + 2 * hidden
    return vocab * hidden + hidden + layers * layer - hidden + hidden


def deberta_v3(vocab, hidden, layers, inter, buckets):
    """DeBERTa-v3: word embeddings and a LayerNorm (no absolute positions, no token types), BERT-like layers
    (shared attention keys: no extra position projections), relative embeddings (2 x buckets) and their norm."""
    layer = 4 * (hidden * hidden + hidden) + (hidden * inter + inter) + (inter * hidden + hidden) + 4 * hidden
    return vocab * hidden + 2 * hidden + layers * layer + 2 * buckets * hidden + 2 * hidden


# shape -> (count from the public model's config, by hand; the public model's stated size)
EXPECTED = {
    "modernbert-base": (modernbert(50368, 768, 22, 1152), 149e6),
    "modernbert-large": (modernbert(50368, 1024, 28, 2624), 395e6),
    "bert-base": (bert_like(30522, 768, 12, 3072, 512, 2), 110e6),
    "bert-large": (bert_like(30522, 1024, 24, 4096, 512, 2), 335e6),
    "mbert-base": (bert_like(119547, 768, 12, 3072, 512, 2), 178e6),
    "xlm-roberta-base": (bert_like(250002, 768, 12, 3072, 514, 1), 278e6),
    "deberta-v3-base": (deberta_v3(128100, 768, 12, 3072, 256), 184e6),
    "minilm-l6": (bert_like(30522, 384, 6, 1536, 512, 2), 22.7e6),
}


def test_every_bundled_shape_is_expected():
    assert sorted(EXPECTED) == shape_names()


@pytest.mark.stack
@pytest.mark.parametrize("shape", sorted(EXPECTED))
def test_a_shape_builds_the_public_models_size(shape):
    from transformers import AutoModelForSequenceClassification

    from harness.modeling import load_config

    spec = ModelSpec(name=f"config:{shape}", random_init=True)
    spec.check()
    assert resolve_model_source(spec.name) == spec.name
    assert spec.tokenizer == DEFAULT_TOKENIZER  # every bundled shape's vocabulary takes MiniLM's ids
    assert shape_source(shape)
    config = load_config(spec, LabelInfo(["a", "b", "c"]))
    assert config.num_labels == 3
    with torch.device("meta"):  # sizes without allocating the weights
        model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    counted = sum(p.numel() for p in model.base_model.parameters())
    by_hand, stated = EXPECTED[shape]
    assert counted == pytest.approx(by_hand, rel=0.01)
    assert by_hand == pytest.approx(stated, rel=0.01)


def test_modernbert_shapes_alternate_global_and_local_attention():
    config = model_config(ModelSpec(name="config:modernbert-large", random_init=True, tokenizer="x"))
    assert config.num_hidden_layers == 28 and config.local_attention == 128
    assert config.layer_types[:4] == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]


def test_overrides_apply_to_a_shape_and_model_types_still_resolve():
    config = model_config(ModelSpec(name="config:bert-base", random_init=True, config_overrides={"num_hidden_layers": 2}))
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("bert", 2, 768)
    default = model_config(ModelSpec(name="config:bert", random_init=True, tokenizer=DEFAULT_TOKENIZER))
    assert default.model_type == "bert"


def test_an_unknown_shape_lists_the_bundled_ones():
    with pytest.raises(PreflightError, match=r"did you mean 'config:bert-large'\?.*Bundled shapes: bert-base"):
        resolve_model_source("config:bert-lage")


def test_the_default_tokenizer_needs_a_vocabulary_that_takes_its_ids():
    small = ModelSpec(name="config:bert-base", random_init=True, config_overrides={"vocab_size": 1000})
    with pytest.raises(RecipeError, match="vocab_size 1000 cannot take the ids.*set model.tokenizer"):
        small.check()
    with pytest.raises(RecipeError, match="not a bundled shape.*set model.tokenizer"):
        ModelSpec(name="config:bert", random_init=True).check()
    with pytest.raises(RecipeError, match="random_init: true"):
        ModelSpec(name="config:bert-base").check()
    given = ModelSpec(name="config:bert-base", random_init=True, tokenizer="org/tok")
    given.check()
    assert given.tokenizer == "org/tok"


# --------------------------------------------------------------------------- synthetic workloads


def synthetic_recipe(lengths: dict, **synthetic):
    return recipe_from_dict({
        "name": "synthetic",
        "model": {"name": "config:minilm-l6", "random_init": True},
        "data": {"source": "synthetic", "max_length": 256, "synthetic": {"lengths": lengths, **synthetic}},
    })  # fmt: skip


def draws(lengths: dict, n: int = 2000) -> np.ndarray:
    spec = synthetic_recipe(lengths).data.synthetic.lengths
    return draw_lengths(spec, n, np.random.default_rng(0))


def test_fixed_lengths_are_all_equal():
    assert set(draws({"distribution": "fixed", "length": 77}).tolist()) == {77}


def test_uniform_lengths_cover_min_to_max():
    drawn = draws({"distribution": "uniform", "min": 10, "max": 90})
    assert drawn.min() == 10 and drawn.max() == 90
    assert drawn.mean() == pytest.approx(50, abs=2)


def test_normal_lengths_are_clipped():
    drawn = draws({"distribution": "normal", "mean": 64, "std": 16, "min": 8, "max": 128})
    assert drawn.mean() == pytest.approx(64, abs=1.5) and drawn.std() == pytest.approx(16, abs=1.0)
    clipped = draws({"distribution": "normal", "mean": 64, "std": 32, "min": 40, "max": 80})
    assert clipped.min() == 40 and clipped.max() == 80
    assert (clipped == 40).sum() > 100 and (clipped == 80).sum() > 100  # the tails pile up at the bounds


def tokenised_lengths(texts, tokenizer) -> np.ndarray:
    return np.array([len(ids) for ids in tokenizer(list(texts))["input_ids"]])


@pytest.mark.stack
def test_texts_tokenise_to_exactly_the_drawn_lengths(minilm_tokenizer):
    recipe = synthetic_recipe({"distribution": "uniform", "min": 3, "max": 200}, train_samples=300, eval_samples=40,
                              num_labels=3)  # fmt: skip
    labelled = load_labelled(recipe.data)
    synthetic = recipe.data.synthetic
    for split, ds in labelled.splits.items():
        rng = np.random.default_rng(synthetic.seed + SPLIT_SEED_OFFSETS[split])
        drawn = draw_lengths(synthetic.lengths, len(ds), rng)
        assert tokenised_lengths(ds["text"], minilm_tokenizer).tolist() == drawn.tolist()
        assert labelled.synthetic["lengths"][split]["max"] == drawn.max()
    assert [len(labelled.splits[s]) for s in ("train", "validation", "test")] == [300, 40, 40]
    assert labelled.labels.names == ["class_0", "class_1", "class_2"]
    assert set(labelled.splits["train"]["labels"]) == {0, 1, 2}
    assert labelled.synthetic["seed"] == recipe.data.seed == 42  # data.seed by default, recorded in the recipe
    prints = labelled.fingerprints()
    assert len(set(prints.values())) == 3  # each split drawn with its own seed offset
    assert load_labelled(recipe.data).fingerprints() == prints  # seeded


def test_a_histogram_follows_the_lengths_of_a_real_file(tmp_path, minilm_tokenizer):
    rng = np.random.default_rng(1)
    words = ["bank", "card", "transfer", "money", "account", "payment", "fee"]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.gamma(2.0, 15.0, size=400).clip(1, 200)]
    path = tmp_path / "real.csv"
    pd.DataFrame({"sentence": texts}).to_csv(path, index=False)
    recipe = synthetic_recipe({"distribution": "histogram", "file": str(path), "column": "sentence"},
                              train_samples=2000, eval_samples=10)  # fmt: skip
    labelled = load_labelled(recipe.data)
    source = tokenised_lengths(texts, minilm_tokenizer).clip(max=256)
    made = tokenised_lengths(labelled.splits["train"]["text"], minilm_tokenizer)
    for q in (10, 50, 90):
        assert np.percentile(made, q) == pytest.approx(np.percentile(source, q), rel=0.1, abs=2)
    assert set(made.tolist()) <= set(source.tolist())
    assert labelled.synthetic["source_lengths"]["max"] == source.max()


@pytest.mark.parametrize(
    ("lengths", "synthetic", "match"),
    [
        ({"distribution": "normall", "mean": 5}, {}, "did you mean 'normal'"),
        ({"distribution": "uniform", "min": 90, "max": 10}, {}, "min 90 is more than max 10"),
        ({"distribution": "uniform", "min": 10, "max": 300}, {}, "longer than data.max_length .256.*raise data.max_length"),
        ({"distribution": "fixed", "length": 1000}, {}, "longer than data.max_length"),
        ({"distribution": "fixed", "length": 64}, {"num_labels": 1}, "num_labels: got 1; classification needs at least 2"),
        ({"distribution": "normal", "mean": 64, "min": 8, "max": 128}, {}, "std is missing"),
        ({"distribution": "fixed", "length": 64, "min": 3}, {}, "takes length, not min"),
    ],
)
def test_bad_synthetic_settings_are_refused(lengths, synthetic, match):
    with pytest.raises(RecipeError, match=match):
        synthetic_recipe(lengths, **synthetic)


def test_synthetic_needs_its_section_and_no_files():
    base = {"name": "s", "model": {"name": "config:bert-base", "random_init": True}}
    with pytest.raises(RecipeError, match="data.synthetic: required"):
        recipe_from_dict({**base, "data": {"source": "synthetic"}})
    with pytest.raises(RecipeError, match="data.train_file: not for data.source 'synthetic'"):
        recipe_from_dict({**base, "data": {"source": "synthetic", "train_file": "a.csv",
                                           "synthetic": {"lengths": {"distribution": "fixed", "length": 8}}}})  # fmt: skip


def test_a_missing_histogram_file_is_a_data_error(tmp_path):
    recipe = synthetic_recipe({"distribution": "histogram", "file": str(tmp_path / "nope.csv")})
    with pytest.raises(DataError, match="nope.csv.*fix the path"):
        load_labelled(recipe.data)


def test_a_histogram_column_that_is_not_there_is_a_data_error(tmp_path):
    path = tmp_path / "real.csv"
    pd.DataFrame({"sentence": ["a b", "c d e"]}).to_csv(path, index=False)
    recipe = synthetic_recipe({"distribution": "histogram", "file": str(path)})
    with pytest.raises(DataError, match="no column 'text'.*sentence"):
        load_labelled(recipe.data)


def test_lengths_spec_is_checked_against_max_length():
    spec = LengthsSpec(distribution="normal", mean=64, std=16, min=8, max=128)
    spec.check(128)
    with pytest.raises(RecipeError, match="raise data.max_length to 128"):
        dataclasses.replace(spec).check(64)


def test_the_shipped_synthetic_recipe_uses_a_bundled_shape():
    from harness.recipe import load_recipe

    recipe = load_recipe("bert-shape-synthetic-cpu")
    assert recipe.model.name == "config:bert-base" and recipe.model.tokenizer == DEFAULT_TOKENIZER
    assert recipe.data.synthetic.tokenizer == DEFAULT_TOKENIZER and recipe.data.synthetic.seed == recipe.data.seed


@pytest.mark.slow
def test_the_shipped_synthetic_run_trains_on_the_lengths_it_records(tmp_path):
    """One epoch of the shipped recipe: the training texts' real tokens per sample, counted by the collator at
    every step, equal the mean of the drawn lengths that the result records."""
    from harness.launcher import launch
    from harness.plan import make_plan
    from harness.results import load_result

    recipe = load_recipe("bert-shape-synthetic-cpu", [f"output.checkpoints_dir={tmp_path / 'ck'}"])
    result = load_result(launch(make_plan(recipe, results_dir=str(tmp_path / "results"))))
    log, recorded = result["training"]["step_log"], result["training"]["data"]["synthetic"]
    assert sum(log["samples"]) == 256 == result["training"]["num_samples"]["train"]  # 8 steps of 32: one epoch
    assert recorded["lengths"]["train"]["mean"] == pytest.approx(sum(log["real_tokens"]) / sum(log["samples"]), abs=1e-3)
    assert recorded["distribution"] == "normal" and result["ran"]["num_layers"] == 2
