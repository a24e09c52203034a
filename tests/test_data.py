"""harness.data on the shipped banking77_10 subset: loading, checks, labels, splits, tokenising, batching.

Expected values are computed here a second way (pandas, the tokenizer called directly), never read back
from the code under test.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from accelerate.data_loader import prepare_data_loader
from conftest import EXTENSIONS, write_frame
from datasets import Dataset, DatasetDict
from torch.utils.data import BatchSampler

from harness.data import (
    CLASSIC_CHUNK_ROWS,
    CountingCollator,
    DataError,
    EpochOrder,
    LoaderOptions,
    eval_loader,
    fingerprint,
    load_labelled,
    tokenize,
    train_loader,
)
from harness.recipe import DataSpec

BANKING = Path(__file__).resolve().parent / "data" / "banking77_10"
@pytest.fixture(scope="module")
def train_df() -> pd.DataFrame:
    return pd.read_csv(BANKING / "train.csv", keep_default_na=False)


@pytest.fixture(scope="module")
def test_df() -> pd.DataFrame:
    return pd.read_csv(BANKING / "test.csv", keep_default_na=False)




def files(tmp_path: Path, source: str = "csv", **frames: pd.DataFrame) -> dict[str, str]:
    """Write frames (train=..., validation=..., test=...) and return DataSpec file fields for them."""
    return {f"{split}_file": str(write_frame(df, tmp_path / f"{split}.{EXTENSIONS[source]}", source))
            for split, df in frames.items()}


def spec(source: str = "csv", **fields) -> DataSpec:
    return DataSpec(source=source, **fields)


def load(data_spec: DataSpec, seed: int = 0):
    """The labelled splits and label info, drawn with data.seed = seed."""
    labelled = load_labelled(dataclasses.replace(data_spec, seed=seed))
    return labelled.splits, labelled.labels


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
    data, labels = load(spec(source, **files(tmp_path, source, train=train, validation=validation)), seed=0)
    names = sorted(train_df["label"].unique())
    assert labels.names == names
    assert set(data) == {"train", "validation"}
    for split, df in (("train", train), ("validation", validation)):
        assert data[split]["text"] == df["text"].tolist()
        assert data[split]["labels"] == expected_ids(df["label"], names)


def test_label_encoding_sorted_names_and_consistent_maps(tmp_path, train_df, test_df):
    data, labels = load(spec(**files(tmp_path, train=train_df, test=test_df), validation_fraction=0.1), 0)
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
    data, labels = load(spec(**files(tmp_path, train=df, validation=df)), 0)
    assert labels.names == ["0", "1", "2"]
    assert data["train"]["labels"] == df["label"].tolist()


def test_custom_columns_are_renamed(tmp_path, train_df):
    df = train_df.iloc[:40].rename(columns={"text": "utterance", "label": "intent"})
    data, labels = load(
        spec(**files(tmp_path, train=df, validation=df), text_column="utterance", label_column="intent"), 0
    )
    assert data["train"]["text"] == df["utterance"].tolist()
    assert data["train"]["labels"] == expected_ids(df["intent"], sorted(df["intent"].unique()))
    assert "utterance" not in data["train"].column_names and "intent" not in data["train"].column_names


# --------------------------------------------------------------------------- bad data


def test_eval_label_absent_from_train_is_named(tmp_path, train_df, test_df):
    train = train_df[train_df["label"] != "card_arrival"]
    with pytest.raises(DataError) as info:
        load(spec(**files(tmp_path, train=train, test=test_df)), 0)
    assert "test split" in str(info.value) and "card_arrival" in str(info.value)


def test_single_class_in_train(tmp_path, train_df):
    train = train_df[train_df["label"] == "change_pin"]
    with pytest.raises(DataError) as info:
        load(spec(**files(tmp_path, train=train)), 0)
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
        load(spec(source, **frame_files), 0)
    message = str(info.value)
    assert message.startswith(f"{split} split ({frame_files[f'{split}_file']}): 1 empty or missing text(s)")
    assert "(rows 7)" in message and "'text'" in message and message.endswith("remove or fill them")


@pytest.mark.parametrize(("field", "value"), [("text_column", "utterance"), ("label_column", "intent")])
def test_missing_column_names_the_field_and_lists_columns(tmp_path, train_df, field, value):
    with pytest.raises(DataError) as info:
        load(spec(**files(tmp_path, train=train_df.iloc[:30]), **{field: value}), 0)
    message = str(info.value)
    assert message.startswith(f"data.{field}: column '{value}'")
    assert "columns: text, label" in message


def test_a_class_with_one_example_cannot_be_carved(tmp_path, train_df):
    train = pd.concat([train_df[train_df["label"] != "exchange_rate"], train_df[train_df["label"] == "exchange_rate"][:1]])
    with pytest.raises(DataError) as info:
        load(spec(**files(tmp_path, train=train), validation_fraction=0.1), 0)
    assert "exchange_rate" in str(info.value) and "data.validation_file" in str(info.value)


def test_a_validation_fraction_smaller_than_the_class_count(tmp_path, train_df):
    with pytest.raises(DataError) as info:
        load(spec(**files(tmp_path, train=train_df), validation_fraction=0.01), 0)
    assert "data.validation_fraction" in str(info.value) and "10 classes" in str(info.value)


# --------------------------------------------------------------------------- stratified split and subsets


def test_stratified_validation_split(tmp_path, train_df):
    data_spec = spec(**files(tmp_path, train=train_df), validation_fraction=0.1)
    data, labels = load(data_spec, seed=42)
    assert (len(data["train"]), len(data["validation"])) == (540, 60)
    assert Counter(data["validation"]["labels"]) == {i: 6 for i in range(10)}
    assert Counter(data["train"]["labels"]) == {i: 54 for i in range(10)}
    # a partition of the original rows
    assert sorted([*data["train"]["text"], *data["validation"]["text"]]) == sorted(train_df["text"])
    again, _ = load(data_spec, seed=42)
    assert again["validation"]["text"] == data["validation"]["text"]
    other, _ = load(data_spec, seed=7)
    assert set(other["validation"]["text"]) != set(data["validation"]["text"])
    assert Counter(other["validation"]["labels"]) == {i: 6 for i in range(10)}


def test_subsets_take_exactly_n_rows_deterministically(tmp_path, train_df, test_df):
    data_spec = spec(**files(tmp_path, train=train_df, test=test_df), validation_fraction=0.1,
                     max_train_samples=100, max_eval_samples=25)  # fmt: skip
    data, _ = load(data_spec, seed=3)
    assert {split: len(ds) for split, ds in data.items()} == {"train": 100, "validation": 25, "test": 25}
    again, _ = load(data_spec, seed=3)
    for split in data:
        assert again[split]["text"] == data[split]["text"]
    full, _ = load(spec(**files(tmp_path, train=train_df, test=test_df), validation_fraction=0.1), seed=3)
    for split in data:  # subsets of the very splits the full run uses
        assert set(data[split]["text"]) <= set(full[split]["text"])
        assert len(set(data[split]["text"])) == len(data[split]["text"])
    bigger, _ = load(
        spec(**files(tmp_path, train=train_df, test=test_df), validation_fraction=0.1, max_eval_samples=1000), 3
    )
    assert (len(bigger["validation"]), len(bigger["test"])) == (60, 200)


# --------------------------------------------------------------------------- tokenising


def as_dataset(texts: list[str]) -> DatasetDict:
    return DatasetDict({"train": Dataset.from_dict({"text": texts, "labels": [i % 3 for i in range(len(texts))],
                                                    "row": list(range(len(texts)))})})  # fmt: skip


@pytest.mark.stack
def test_batch_mode_does_not_pad(minilm_tokenizer, train_df):
    texts = train_df["text"].tolist()
    tokenized = tokenize(as_dataset(texts), minilm_tokenizer, DataSpec(name="x", max_length=128))["train"]
    counts = token_counts(minilm_tokenizer, texts, 128)
    assert sorted(tokenized.column_names) == ["attention_mask", "input_ids", "labels", "length", "row", "token_type_ids"]
    assert [len(ids) for ids in tokenized["input_ids"]] == counts
    assert tokenized["length"] == counts == [sum(mask) for mask in tokenized["attention_mask"]]
    assert len(set(counts)) > 10  # lengths really vary
    assert tokenized["row"] == list(range(len(texts)))


@pytest.mark.stack
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


def epoch_batches(order: EpochOrder, epoch: int = 0) -> list[list[int]]:
    order.set_epoch(epoch)
    return list(BatchSampler(order, order.batch_size, drop_last=False))


@pytest.mark.parametrize("grouped", [True, False])
def test_batches_cover_every_index_once_per_epoch(banking_lengths, grouped):
    order = EpochOrder(banking_lengths, batch_size=32, seed=1, group_by_length=grouped, num_processes=1)
    batches = epoch_batches(order)
    assert len(batches) == 19 and len(order) == 600
    assert [len(b) for b in batches] == [32] * 18 + [600 - 18 * 32]
    assert sorted(flat(batches)) == list(range(600))
    assert epoch_batches(order) == batches  # same epoch, same order
    epoch1 = epoch_batches(order, 1)
    assert sorted(flat(epoch1)) == list(range(600)) and flat(epoch1) != flat(batches)
    assert epoch_batches(order, 0) == batches
    other_seed = EpochOrder(banking_lengths, 32, seed=2, group_by_length=grouped, num_processes=1)
    assert flat(epoch_batches(other_seed)) != flat(batches)


def test_length_grouping_cuts_padding_at_least_in_half(banking_lengths):
    def mean_padding(grouped: bool) -> float:
        order = EpochOrder(banking_lengths, batch_size=16, seed=0, group_by_length=grouped, num_processes=1)
        return sum(padding_of(epoch_batches(order, epoch), banking_lengths) for epoch in range(5)) / 5

    grouped, ungrouped = mean_padding(True), mean_padding(False)
    assert ungrouped > 0
    assert grouped * 2 <= ungrouped, (grouped, ungrouped)


def rank_epochs(ds, tokenizer, rank: int, epochs: int = 2) -> list[list[dict]]:
    """Rank `rank` of 2 processes: per epoch, each batch's rows and counts, through accelerate's own sharding."""
    loader = train_loader(ds, tokenizer, batch_size=16, seed=0, grouped=True, num_processes=2)
    shard = prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False)
    seen = []
    for epoch in range(epochs):
        shard.set_epoch(epoch)
        seen.append([{"rows": batch["row"].tolist(), "counts": batch["counts"]} for batch in shard])
    return seen


def test_two_processes_reshuffle_each_epoch_into_disjoint_equal_shards(minilm_tokenizer, train_df):
    texts = train_df["text"].tolist()[:150]  # 150 = 4 rounds of 2 x 16 + 22: the last round needs 10 repeats
    ds = tokenize(as_dataset(texts), minilm_tokenizer, DataSpec(name="x"))["train"]
    ranks = [rank_epochs(ds, minilm_tokenizer, rank) for rank in (0, 1)]
    for epoch in (0, 1):
        batches = [ranks[r][epoch] for r in (0, 1)]
        assert len(batches[0]) == len(batches[1]) == 5  # equal batch counts: no rank waits on a collective
        assert all(len(b["rows"]) == 16 for rank in batches for b in rank)  # full batches everywhere
        first_time = [set(), set()]
        for r in (0, 1):
            for b in batches[r]:
                assert b["counts"].samples + b["counts"].repeated_samples == 16
                first_time[r] |= set(b["rows"][: b["counts"].samples]) if b["counts"].repeated_samples else set(b["rows"])
        assert not first_time[0] & first_time[1]  # disjoint shards
        assert first_time[0] | first_time[1] == set(range(150))  # every sample once
        assert sum(b["counts"].samples for rank in batches for b in rank) == 150
        assert sum(b["counts"].repeated_samples for rank in batches for b in rank) == 160 - 150
    for r in (0, 1):  # set_epoch reaches the sampler through accelerate's wrappers: a new order each epoch
        assert [b["rows"] for b in ranks[r][0]] != [b["rows"] for b in ranks[r][1]]


def test_rounded_batch_lengths_count_the_rounding_as_padding(minilm_tokenizer, train_df):
    """pad_to_multiple_of=8: every batch is as wide as its longest text rounded up to a multiple of 8; the
    rounding is computed, so it counts as padded tokens and never as real ones."""
    texts = train_df["text"].tolist()[:40]
    counts = token_counts(minilm_tokenizer, texts)
    ds = tokenize(as_dataset(texts), minilm_tokenizer, DataSpec(name="x"))["train"]
    rows = [3, 17, 0, 25]
    batch = CountingCollator(minilm_tokenizer, pad_to_multiple_of=8)([ds[i] for i in rows])
    width = -(-max(counts[i] for i in rows) // 8) * 8
    assert tuple(batch["input_ids"].shape) == (4, width) and width % 8 == 0
    assert batch["counts"].padded_tokens == 4 * width
    assert batch["counts"].real_tokens == sum(counts[i] for i in rows) == int(batch["attention_mask"].sum())


@pytest.mark.stack
def test_bucketed_batch_lengths_are_the_next_bucket(minilm_tokenizer, train_df):
    """With length buckets, a batch is as wide as the smallest bucket that holds its longest text: a compiled
    model sees a few shapes. The widening counts as padding."""
    texts = train_df["text"].tolist()[:40]
    counts = token_counts(minilm_tokenizer, texts)
    ds = tokenize(as_dataset(texts), minilm_tokenizer, DataSpec(name="x"))["train"]
    collate = CountingCollator(minilm_tokenizer, length_buckets=(16, 24, 512))
    for rows in ([3, 17], [0, 25, 39], [8]):
        longest = max(counts[i] for i in rows)
        width = 16 if longest <= 16 else 24 if longest <= 24 else 512
        batch = collate([ds[i] for i in rows])
        assert tuple(batch["input_ids"].shape) == (len(rows), width)
        assert batch["counts"].padded_tokens == len(rows) * width
        assert batch["counts"].real_tokens == sum(counts[i] for i in rows) == int(batch["attention_mask"].sum())


def test_a_compiled_run_gets_length_buckets_unless_it_packs():
    spec = DataSpec(name="x", max_length=100)
    assert LoaderOptions.for_run(spec, "cuda", compiled=True).length_buckets == (32, 64, 100)
    assert LoaderOptions.for_run(spec, "cuda", compiled=True).pad_to_multiple_of is None
    assert LoaderOptions.for_run(spec, "cuda").length_buckets is None
    chosen = DataSpec(name="x", max_length=100, length_buckets=[50, 100])
    assert LoaderOptions.for_run(chosen, "cpu").length_buckets == (50, 100)  # the recipe's, compiled or not
    assert LoaderOptions.for_run(DataSpec(name="x", packing=True), "cuda", compiled=True).length_buckets is None


def test_loader_options_follow_the_device_unless_the_recipe_says():
    cpu, cuda = LoaderOptions.for_run(DataSpec(name="x"), "cpu"), LoaderOptions.for_run(DataSpec(name="x"), "cuda")
    assert (cpu.pin_memory, cpu.pad_to_multiple_of) == (False, None)
    assert (cuda.pin_memory, cuda.pad_to_multiple_of) == (True, 8)  # whole tensor-core tiles
    chosen = LoaderOptions.for_run(DataSpec(name="x", num_workers=2, pin_memory=False, pad_to_multiple_of=1), "cuda")
    assert chosen == LoaderOptions(num_workers=2, pin_memory=False, pad_to_multiple_of=None)  # 1: no rounding
    assert chosen.loader_arguments()["persistent_workers"] is True


@pytest.mark.stack
def test_counting_collator_counts(minilm_tokenizer, train_df):
    texts = train_df["text"].tolist()[:40]
    counts = token_counts(minilm_tokenizer, texts)
    collate = CountingCollator(minilm_tokenizer)
    for padding in ("batch", "chunk"):
        ds = tokenize(as_dataset(texts), minilm_tokenizer, DataSpec(name="x", padding=padding))["train"]
        rows = [3, 17, 0, 25, 39, 8]
        batch = collate([{**ds[i], "repeat": i == 25} for i in rows])  # row 25 comes again to even out a round
        lengths = [counts[i] for i in rows]
        first_time = [counts[i] for i in rows if i != 25]
        width = max(lengths) if padding == "batch" else max(counts)
        assert tuple(batch["input_ids"].shape) == (len(rows), width)
        assert (batch["counts"].samples, batch["counts"].repeated_samples) == (5, 1)
        assert batch["counts"].real_tokens == sum(first_time) == int(batch["attention_mask"].sum()) - counts[25]
        assert batch["counts"].padded_tokens == batch["input_ids"].numel() == len(rows) * width  # repeats computed
        assert batch["counts"].lengths == first_time
        assert batch["labels"].tolist() == [i % 3 for i in rows]
        assert "length" not in batch and "repeat" not in batch


@pytest.mark.stack
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


@pytest.mark.stack
def test_train_loader_batches_count_every_real_token(minilm_tokenizer, train_df):
    texts = train_df["text"].tolist()[:100]
    counts = token_counts(minilm_tokenizer, texts)
    ds = tokenize(as_dataset(texts), minilm_tokenizer, DataSpec(name="x"))["train"]
    loader = train_loader(ds, minilm_tokenizer, batch_size=16, seed=0, grouped=True, num_processes=1)
    assert isinstance(loader.batch_sampler.sampler.lengths, list)  # a plain list, not a slow datasets Column
    rows, real = [], 0
    for batch in loader:
        rows += batch["row"].tolist()
        real += batch["counts"].real_tokens
    assert sorted(rows) == list(range(100)) and real == sum(counts)


def test_fingerprint_follows_the_examples_not_the_file(tmp_path, train_df):
    data, _ = load(spec(**files(tmp_path, train=train_df, validation=train_df.iloc[:50])))
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    again, _ = load(spec("json", **files(copy_dir, "json", train=train_df, validation=train_df.iloc[:50])))
    assert fingerprint(again["validation"]) == fingerprint(data["validation"])  # same rows, other file and format
    assert fingerprint(data["validation"]) != fingerprint(data["validation"].select(range(49)))
    relabelled = data["validation"].map(lambda row: {"labels": (row["labels"] + 1) % 10})
    assert fingerprint(relabelled) != fingerprint(data["validation"])


def test_a_hub_style_folder_loads_through_the_builder_and_has_no_commit(tmp_path, train_df, test_df):
    """data.source: hub goes through datasets' builder (whose hash is the commit of a Hub repository); a local
    folder given as the name has no commit to record, and its splits equal the same files read as CSV."""
    paths = files(tmp_path, train=train_df, test=test_df)
    hub = load_labelled(DataSpec(source="hub", name=str(tmp_path), validation_split=None, test_split="test"))
    csv = load_labelled(spec(**paths))
    assert hub.commit is None and csv.commit is None
    assert hub.fingerprints() == csv.fingerprints()
