"""Benchmarks of the training paths on the shipped banking77 subset: one optimizer step of a small random BERT,
the collation of a batch, and an epoch of forward and backward passes under the harness's batching and under
classic chunk padding, timed round by round in the same run.

Run by .ci/run after the test suite (pytest's collection skips this folder otherwise); bench/check_ci.py gates
the padding numbers against bench/ci-baseline.json. Absolute times are recorded, not gated.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
import torch
from conftest import BANKING
from transformers import AutoModelForSequenceClassification, BertConfig

from harness.data import CountingCollator, RepeatMarked, load_labelled, tokenize, train_loader
from harness.recipe import load_recipe

ARMS = {"harness": "minilm-banking77-cpu", "classic": "minilm-banking77-cpu-classic-padding"}  # the shipped recipes
TINY_BERT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256}
PADDING_ROUNDS = 5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared CPU, torch's threads wait on each other whenever another process holds a
    core, and step times swing tenfold; one thread measures the code, not the neighbours."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def arms(minilm_tokenizer) -> dict[str, dict[str, Any]]:
    """Per arm, the tokenised training split and one epoch's collated batches, as the shipped recipe makes them
    (its padding, grouping, batch size and seed), with the subset's files."""
    files = [f"data.train_file={BANKING / 'train.csv'}", f"data.test_file={BANKING / 'test.csv'}"]
    made = {}
    for arm, name in ARMS.items():
        recipe = load_recipe(name, files)
        labelled = load_labelled(recipe.data)
        train = tokenize(labelled.splits, minilm_tokenizer, recipe.data)["train"]
        loader = train_loader(train, minilm_tokenizer, recipe.train.batch_size, recipe.train.seed,
                              recipe.data.group_by_length, num_processes=1)  # fmt: skip
        made[arm] = {"train": train, "batches": list(loader), "num_labels": len(labelled.labels.names),
                     "batch_size": recipe.train.batch_size}  # fmt: skip
    return made


def tiny_bert(vocab_size: int, num_labels: int) -> torch.nn.Module:
    """A 2-layer BERT of hidden size 64 with random (seeded) weights: the real architecture, at a size where a
    training step takes a tenth of a second on one CPU thread."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, num_labels=num_labels, **TINY_BERT)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A collated batch without the collator's counts."""
    return {key: value for key, value in batch.items() if key != "counts"}


def test_one_training_step(benchmark, minilm_tokenizer, arms):
    """Forward, backward and AdamW step on the first batch of the harness's epoch (length-grouped: its longest)."""
    harness = arms["harness"]
    model = tiny_bert(len(minilm_tokenizer), harness["num_labels"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = model_inputs(harness["batches"][0])

    def step() -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    benchmark(step)
    benchmark.extra_info["batch_shape"] = list(batch["input_ids"].shape)


def test_collate_a_batch(benchmark, minilm_tokenizer, arms):
    """What the training loader does per batch: read the rows from the tokenised split and pad them."""
    harness = arms["harness"]
    rows, collate = RepeatMarked(harness["train"]), CountingCollator(minilm_tokenizer)
    indices = list(range(harness["batch_size"]))
    batch = benchmark(lambda: collate(rows.__getitems__(indices)))
    assert batch["counts"].samples == harness["batch_size"]


def epoch_seconds(model: torch.nn.Module, batches: list[dict[str, Any]]) -> float:
    """Forward and backward over every batch of an epoch (no optimizer: the padding is what differs)."""
    start = time.perf_counter()
    for batch in batches:
        model(**model_inputs(batch)).loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def token_counts(batches: list[dict[str, Any]]) -> tuple[int, int]:
    """(real, padded) tokens of an epoch, as the collator counted them."""
    return sum(b["counts"].real_tokens for b in batches), sum(b["counts"].padded_tokens for b in batches)


def test_padding_harness_vs_classic(benchmark, minilm_tokenizer, arms):
    """Both arms in every round, one after the other on the same model, so machine noise reaches both alike;
    the ratio is the median over rounds of classic seconds / harness seconds (the harness's speed-up)."""
    model = tiny_bert(len(minilm_tokenizer), arms["harness"]["num_labels"])
    for arm in ARMS:  # warm-up: allocator and kernels for both shapes, not timed
        epoch_seconds(model, arms[arm]["batches"])
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}

    def both_arms() -> None:
        for arm in ARMS:
            seconds[arm].append(epoch_seconds(model, arms[arm]["batches"]))

    benchmark.pedantic(both_arms, rounds=PADDING_ROUNDS)
    counts = {arm: token_counts(arms[arm]["batches"]) for arm in ARMS}
    assert counts["harness"][0] == counts["classic"][0]  # the same real tokens: only the padding differs
    for arm in ARMS:
        real, padded = counts[arm]
        benchmark.extra_info.update({f"{arm}_epoch_s": statistics.median(seconds[arm]), f"{arm}_padded_tokens": padded,
                                     f"{arm}_padding_efficiency": real / padded})  # fmt: skip
    ratios = [classic / harness for classic, harness in zip(seconds["classic"], seconds["harness"])]
    benchmark.extra_info["harness_over_classic_speed"] = statistics.median(ratios)
    benchmark.extra_info["real_tokens"] = counts["harness"][0]
