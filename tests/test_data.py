"""harness.data on the shipped banking77_10 subset: loading, checks, labels, splits, tokenising, batching.

Expected values are computed here a second way (pandas, the tokenizer called directly), never read back
from the code under test.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset, DatasetDict

from harness.data import (
    CLASSIC_CHUNK_ROWS,
    CountingCollator,
    DataError,
    LengthGroupedBatches,
    eval_loader,
    train_loader,
    load_labelled,
    tokenize,
)
from harness.recipe import DataSpec

BANKING = Path(__file__).resolve().parent / "data" / "banking77_10"
EXT = {"csv": "csv", "json": "jsonl", "parquet": "parquet"}


@pytest.fixture(scope="module")
def train_df() -> pd.DataFrame:
    return pd.read_csv(BANKING / "train.csv", keep_default_na=False)


@pytest.fixture(scope="module")
def test_df() -> pd.DataFrame:
    return pd.read_csv(BANKING / "test.csv", keep_default_na=False)


def write(df: pd.DataFrame, path: Path, source: str = "csv") -> str:
    if source == "csv":
        df.to_csv(path, index=False)
    elif source == "json":
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        df.to_parquet(path, index=False)
    return str(path)


def files(tmp_path: Path, source: str = "csv", **frames: pd.DataFrame) -> dict[str, str]:
    """Write frames (train=..., validation=..., test=...) and return DataSpec file fields for them."""
    return {f"{split}_file": write(df, tmp_path / f"{split}.{EXT[source]}", source) for split, df in frames.items()}


def spec(source: str = "csv", **fields) -> DataSpec:
    return DataSpec(source=source, **fields)


def expected_ids(labels: pd.Series, names: list[str]) -> list[int]:
    return pd.Categorical(labels, categories=names).codes.tolist()


def token_counts(tokenizer, texts: list[str], max_length: int = 512) -> list[int]:
    return [len(tokenizer(text, truncation=True, max_length=max_length)["input_ids"]) for text in texts]


# --------------------------------------------------------------------------- loading and labels


@pytest.mark.parametrize("source", ["csv", "json", "parquet"])
def test_each_file_type_loads_the_same_rows(tmp_path, train_df, test_df, source):
    if source == "parquet":
        pytest.importorskip("pyarrow")
    train, validation = train_df.iloc[:300], test_df.iloc[:100]
    data, labels = load_labelled(spec(source, **files(tmp_path, source, train=train, validation=validation)), seed=0)
    names = sorted(train_df["label"].unique())
    assert labels.names == names
    assert set(data) == {"train", "validation"}
    for split, df in (("train", train), ("validation", validation)):
        assert data[split]["text"] == df["text"].tolist()
        assert data[split]["labels"] == expected_ids(df["label"], names)


def test_label_encoding_sorted_names_and_consistent_maps(tmp_path, train_df, test_df):
    data, labels = load_labelled(spec(**files(tmp_path, train=train_df, test=test_df), validation_fraction=0.1), 0)
    names = sorted(set(train_df["label"]))
    assert len(names) == 10 and labels.names == names
    assert labels.id2label == {i: name for i, name in enumerate(names)}
    assert {name: i for i, name in labels.id2label.items()} == labels.label2id
    assert data["train"].features["labels"].names == names
    # the test split is not shuffled or carved: row i keeps its label, encoded by the sorted-name mapping
    mapping = {name: i for i, name in enumerate(sorted(test_df["label"].unique()))}
    assert data["test"]["labels"] == test_df["label"].map(mapping).tolist()
    assert data["test"]["text"] == test_df["text"].tolist()
    # every carved row's id decodes back to the label its text has in the file
    label_of = dict(zip(train_df["text"], train_df["label"]))
    for split in ("train", "validation"):
        decoded = [labels.id2label[i] for i in data[split]["labels"]]
        assert decoded == [label_of[text] for text in data[split]["text"]]


def test_integer_labels_are_named_as_text(tmp_path):
    df = pd.DataFrame({"text": [f"row {i}" for i in range(8)], "label": [0, 1, 2, 1, 0, 2, 1, 0]})
    data, labels = load_labelled(spec(**files(tmp_path, train=df, validation=df)), 0)
    assert labels.names == ["0", "1", "2"]
    assert data["train"]["labels"] == df["label"].tolist()


def test_custom_columns_are_renamed(tmp_path, train_df):
    df = train_df.iloc[:40].rename(columns={"text": "utterance", "label": "intent"})
    data, labels = load_labelled(
        spec(**files(tmp_path, train=df, validation=df), text_column="utterance", label_column="intent"), 0
    )
    assert data["train"]["text"] == df["utterance"].tolist()
    assert data["train"]["labels"] == expected_ids(df["intent"], sorted(df["intent"].unique()))
    assert "utterance" not in data["train"].column_names and "intent" not in data["train"].column_names


# --------------------------------------------------------------------------- bad data


def test_eval_label_absent_from_train_is_named(tmp_path, train_df, test_df):
    train = train_df[train_df["label"] != "card_arrival"]
    with pytest.raises(DataError) as info:
        load_labelled(spec(**files(tmp_path, train=train, test=test_df)), 0)
    assert "test split" in str(info.value) and "card_arrival" in str(info.value)


def test_single_class_in_train(tmp_path, train_df):
    train = train_df[train_df["label"] == "change_pin"]
    with pytest.raises(DataError) as info:
        load_labelled(spec(**files(tmp_path, train=train)), 0)
    assert "single class" in str(info.value) and "change_pin" in str(info.value)


@pytest.mark.parametrize(
    ("source", "split", "bad"),
    [("csv", "train", ""), ("csv", "validation", "   \t "), ("csv", "test", None), ("json", "validation", None)],
    ids=["empty", "whitespace", "missing-csv-cell", "missing-json-key"],
)
def test_empty_or_missing_text_names_split_and_row(tmp_path, train_df, source, split, bad):
    frames = {name: train_df.iloc[:30].copy() for name in ("train", "validation", "test")}
    frames[split].loc[7, "text"] = bad
    frame_files = files(tmp_path, source, **frames)
    if bad is None and source == "json":  # a JSON line with no text key at all, not "text": null
        path = Path(frame_files[f"{split}_file"])
        lines = path.read_text().splitlines()
        assert '"text":null' in lines[7]
        lines[7] = lines[7].replace('"text":null,', "")
        path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_labelled(spec(source, **frame_files), 0)
    message = str(info.value)
    assert message.startswith(f"{split} split:")
    assert "(rows 7)" in message and "'text'" in message


@pytest.mark.parametrize(("field", "value"), [("text_column", "utterance"), ("label_column", "intent")])
def test_missing_column_names_the_field_and_lists_columns(tmp_path, train_df, field, value):
    with pytest.raises(DataError) as info:
        load_labelled(spec(**files(tmp_path, train=train_df.iloc[:30]), **{field: value}), 0)
    message = str(info.value)
    assert message.startswith(f"data.{field}: column '{value}'")
    assert "columns: text, label" in message


def test_a_class_with_one_example_cannot_be_carved(tmp_path, train_df):
    train = pd.concat([train_df[train_df["label"] != "exchange_rate"], train_df[train_df["label"] == "exchange_rate"][:1]])
    with pytest.raises(DataError) as info:
        load_labelled(spec(**files(tmp_path, train=train), validation_fraction=0.1), 0)
    assert "exchange_rate" in str(info.value) and "data.validation_file" in str(info.value)


def test_a_validation_fraction_smaller_than_the_class_count(tmp_path, train_df):
    with pytest.raises(DataError) as info:
        load_labelled(spec(**files(tmp_path, train=train_df), validation_fraction=0.01), 0)
    assert "data.validation_fraction" in str(info.value) and "10 classes" in str(info.value)


# --------------------------------------------------------------------------- stratified split and subsets


def test_stratified_validation_split(tmp_path, train_df):
    data_spec = spec(**files(tmp_path, train=train_df), validation_fraction=0.1)
    data, labels = load_labelled(data_spec, seed=42)
    assert (len(data["train"]), len(data["validation"])) == (540, 60)
    assert Counter(data["validation"]["labels"]) == {i: 6 for i in range(10)}
    assert Counter(data["train"]["labels"]) == {i: 54 for i in range(10)}
    # a partition of the original rows
    assert sorted([*data["train"]["text"], *data["validation"]["text"]]) == sorted(train_df["text"])
    again, _ = load_labelled(data_spec, seed=42)
    assert again["validation"]["text"] == data["validation"]["text"]
    other, _ = load_labelled(data_spec, seed=7)
    assert set(other["validation"]["text"]) != set(data["validation"]["text"])
    assert Counter(other["validation"]["labels"]) == {i: 6 for i in range(10)}


def test_subsets_take_exactly_n_rows_deterministically(tmp_path, train_df, test_df):
    data_spec = spec(**files(tmp_path, train=train_df, test=test_df), validation_fraction=0.1,
                     max_train_samples=100, max_eval_samples=25)  # fmt: skip
    data, _ = load_labelled(data_spec, seed=3)
    assert {split: len(ds) for split, ds in data.items()} == {"train": 100, "validation": 25, "test": 25}
    again, _ = load_labelled(data_spec, seed=3)
    for split in data:
        assert again[split]["text"] == data[split]["text"]
    full, _ = load_labelled(spec(**files(tmp_path, train=train_df, test=test_df), validation_fraction=0.1), seed=3)
    for split in data:  # subsets of the very splits the full run uses
        assert set(data[split]["text"]) <= set(full[split]["text"])
        assert len(set(data[split]["text"])) == len(data[split]["text"])
    bigger, _ = load_labelled(
        spec(**files(tmp_path, train=train_df, test=test_df), validation_fraction=0.1, max_eval_samples=1000), 3
    )
    assert (len(bigger["validation"]), len(bigger["test"])) == (60, 200)


# --------------------------------------------------------------------------- tokenising


def as_dataset(texts: list[str]) -> DatasetDict:
    return DatasetDict({"train": Dataset.from_dict({"text": texts, "labels": [i % 3 for i in range(len(texts))],
                                                    "row": list(range(len(texts)))})})  # fmt: skip


def test_batch_mode_does_not_pad(minilm_tokenizer, train_df):
    texts = train_df["text"].tolist()
    tokenized = tokenize(as_dataset(texts), minilm_tokenizer, DataSpec(name="x", max_length=128))["train"]
    counts = token_counts(minilm_tokenizer, texts, 128)
    assert sorted(tokenized.column_names) == ["attention_mask", "input_ids", "labels", "length", "row", "token_type_ids"]
    assert [len(ids) for ids in tokenized["input_ids"]] == counts
    assert tokenized["length"] == counts == [sum(mask) for mask in tokenized["attention_mask"]]
    assert len(set(counts)) > 10  # lengths really vary
    assert tokenized["row"] == list(range(len(texts)))


def test_chunk_mode_pads_each_1000_row_chunk_to_its_longest(minilm_tokenizer, train_df):
    texts = train_df["text"].tolist()
    counts = token_counts(minilm_tokenizer, texts)
    shortest = texts[counts.index(min(counts))]
    rows = [texts[i % len(texts)] for i in range(CLASSIC_CHUNK_ROWS)] + [shortest] * 200
    tokenized = tokenize(as_dataset(rows), minilm_tokenizer, DataSpec(name="x", padding="chunk"))["train"]
    widths = [len(ids) for ids in tokenized["input_ids"]]
    assert set(widths[:CLASSIC_CHUNK_ROWS]) == {max(counts)}
    assert set(widths[CLASSIC_CHUNK_ROWS:]) == {min(counts)}
    assert tokenized["length"] == [counts[i % len(texts)] for i in range(CLASSIC_CHUNK_ROWS)] + [min(counts)] * 200
    assert tokenized["length"] == [sum(mask) for mask in tokenized["attention_mask"]]


def test_chunk_mode_on_the_600_row_split(minilm_tokenizer, train_df):
    texts = train_df["text"].tolist()
    tokenized = tokenize(as_dataset(texts), minilm_tokenizer, DataSpec(name="x", padding="chunk"))["train"]
    counts = token_counts(minilm_tokenizer, texts)
    assert {len(ids) for ids in tokenized["input_ids"]} == {max(counts)}
    assert tokenized["length"] == counts


def test_truncation_at_max_length(minilm_tokenizer, train_df):
    texts = train_df["text"].tolist()
    tokenized = tokenize(as_dataset(texts), minilm_tokenizer, DataSpec(name="x", max_length=12))["train"]
    full = token_counts(minilm_tokenizer, texts)
    assert tokenized["length"] == [min(n, 12) for n in full]
    assert any(n > 12 for n in full) and any(n < 12 for n in full)
    assert all(ids[-1] == minilm_tokenizer.sep_token_id for ids in tokenized["input_ids"])


# --------------------------------------------------------------------------- batching


def flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


def padding_of(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(batch) * max(lengths[i] for i in batch) - sum(lengths[i] for i in batch) for batch in batches)


@pytest.fixture(scope="module")
def banking_lengths(minilm_tokenizer, train_df) -> list[int]:
    return token_counts(minilm_tokenizer, train_df["text"].tolist(), 128)


@pytest.mark.parametrize("grouped", [True, False])
def test_batches_cover_every_index_once_per_epoch(banking_lengths, grouped):
    sampler = LengthGroupedBatches(banking_lengths, batch_size=32, seed=1, group_by_length=grouped)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 19
    assert [len(b) for b in batches] == [32] * 18 + [600 - 18 * 32]
    assert sorted(flat(batches)) == list(range(600))
    assert list(sampler) == batches  # same epoch, same order
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(flat(epoch1)) == list(range(600)) and flat(epoch1) != flat(batches)
    sampler.set_epoch(0)
    assert list(sampler) == batches
    other_seed = list(LengthGroupedBatches(banking_lengths, 32, seed=2, group_by_length=grouped))
    assert flat(other_seed) != flat(batches)


def test_length_grouping_cuts_padding_at_least_in_half(banking_lengths):
    def mean_padding(grouped: bool) -> float:
        sampler = LengthGroupedBatches(banking_lengths, batch_size=16, seed=0, group_by_length=grouped)
        totals = []
        for epoch in range(5):
            sampler.set_epoch(epoch)
            totals.append(padding_of(list(sampler), banking_lengths))
        return sum(totals) / len(totals)

    grouped, ungrouped = mean_padding(True), mean_padding(False)
    assert ungrouped > 0
    assert grouped * 2 <= ungrouped, (grouped, ungrouped)


def test_counting_collator_counts(minilm_tokenizer, train_df):
    texts = train_df["text"].tolist()[:40]
    counts = token_counts(minilm_tokenizer, texts)
    collate = CountingCollator(minilm_tokenizer)
    for padding in ("batch", "chunk"):
        ds = tokenize(as_dataset(texts), minilm_tokenizer, DataSpec(name="x", padding=padding))["train"]
        rows = [3, 17, 0, 25, 39, 8]
        batch = collate([ds[i] for i in rows])
        lengths = [counts[i] for i in rows]
        width = max(lengths) if padding == "batch" else max(counts)
        assert tuple(batch["input_ids"].shape) == (len(rows), width)
        assert batch["counts"].samples == len(rows)
        assert batch["counts"].real_tokens == int(batch["attention_mask"].sum()) == sum(lengths)
        assert batch["counts"].padded_tokens == batch["input_ids"].numel() == len(rows) * width
        assert batch["counts"].sum_len_sq == sum(n * n for n in lengths)
        assert batch["labels"].tolist() == [i % 3 for i in rows]
        assert "length" not in batch


def test_eval_loader_covers_every_row_once(minilm_tokenizer, train_df):
    texts = train_df["text"].tolist()[:150]
    counts = token_counts(minilm_tokenizer, texts)
    ds = tokenize(as_dataset(texts), minilm_tokenizer, DataSpec(name="x"))["train"]
    seen_rows, seen_lengths, samples = [], [], 0
    for batch in eval_loader(ds, minilm_tokenizer, batch_size=32):
        seen_rows += batch["row"].tolist()
        seen_lengths += batch["attention_mask"].sum(dim=1).tolist()
        samples += batch["counts"].samples
        assert batch["labels"].tolist() == [r % 3 for r in batch["row"].tolist()]  # labels travel with rows
    assert sorted(seen_rows) == list(range(150)) and samples == 150
    assert seen_lengths == [counts[r] for r in seen_rows]
    assert seen_lengths == sorted(seen_lengths, reverse=True)  # longest first


def test_train_loader_batches_count_every_real_token(minilm_tokenizer, train_df):
    texts = train_df["text"].tolist()[:100]
    counts = token_counts(minilm_tokenizer, texts)
    ds = tokenize(as_dataset(texts), minilm_tokenizer, DataSpec(name="x"))["train"]
    loader = train_loader(ds, minilm_tokenizer, batch_size=16, seed=0, grouped=True)
    assert isinstance(loader.batch_sampler.lengths, list)  # a plain list, not a slow datasets Column
    rows, real = [], 0
    for batch in loader:
        rows += batch["row"].tolist()
        real += batch["counts"].real_tokens
    assert sorted(rows) == list(range(100)) and real == sum(counts)
