"""Data: load (Hub or local files), validate, encode labels, split, subset, tokenise, batch.

Tokenisation truncates but does not pad (datasets caches the result by fingerprint); padding happens per
batch in the collator. Training batches are length-grouped by default: most classification texts are
short, and a batch padded to its own longest text wastes far less compute than one padded to a chunk's.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets import ClassLabel, Dataset, DatasetDict
from torch.utils.data import BatchSampler, DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import get_length_grouped_indices

from harness.collector import BatchCounts
from harness.errors import HarnessError
from harness.recipe import DataSpec

CLASSIC_CHUNK_ROWS = 1000  # datasets.map's default batch size: what "padding=True" scripts pad over
SPLITS = ("train", "validation", "test")


class DataError(HarnessError, ValueError):
    """Data that cannot be trained on; the message names the file or split and the fix."""


@dataclass
class LabelInfo:
    names: list[str]

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}


# --------------------------------------------------------------------------- loading


def load_raw(spec: DataSpec) -> tuple[DatasetDict, str | None]:
    """The splits the recipe names, as a DatasetDict with keys among train/validation/test, and the Hub commit
    of the data set (None for local files)."""
    if spec.source == "hub":
        wanted = {"train": spec.train_split, "validation": spec.validation_split, "test": spec.test_split}
        loaded, commit = load_hub_dataset(spec)
        missing = [f"{key}_split: '{name}'" for key, name in wanted.items() if name and name not in loaded]
        if missing:
            raise DataError(f"data.{missing[0]} is not in {spec.name} (it has: {', '.join(loaded)})")
        return DatasetDict({key: loaded[name] for key, name in wanted.items() if name}), commit
    files = {"train": spec.train_file, "validation": spec.validation_file, "test": spec.test_file}
    return load_files({key: path for key, path in files.items() if path}, spec.source), None


def load_hub_dataset(spec: DataSpec) -> tuple[DatasetDict, str | None]:
    """A Hub data set and the commit it resolved to: what `datasets.load_dataset` does, with the builder kept,
    whose hash is the repository commit for Hub data sets (also when read offline from the cache). A local
    folder has no commit (its builder hash only fingerprints its files)."""
    builder = datasets.load_dataset_builder(spec.name, spec.config_name, revision=spec.revision)
    builder.download_and_prepare()
    return builder.as_dataset(), None if Path(spec.name).exists() else builder.hash


def load_files(files: dict[str, str], source: str) -> DatasetDict:
    """Local CSV, JSON lines or Parquet files, one per split."""
    # keep_default_na=False: a CSV text "None" or "NA" stays text; truly empty cells are caught by check_texts.
    extra = {"keep_default_na": False} if source == "csv" else {}
    return datasets.load_dataset(source, data_files=files, **extra)


def source_of(path: str) -> str:
    """The datasets loader for a file, from its extension."""
    suffix = path.rsplit(".", 1)[-1].lower()
    loaders = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
    if suffix not in loaders:
        raise DataError(f"{path}: unknown file type; use .csv, .json/.jsonl (JSON lines) or .parquet")
    return loaders[suffix]


def check_columns(data: DatasetDict, spec: DataSpec) -> None:
    for split, ds in data.items():
        for key in ("text_column", "label_column"):
            column = getattr(spec, key)
            if column not in ds.column_names:
                raise DataError(
                    f"data.{key}: column '{column}' is not in the {split} split "
                    f"(columns: {', '.join(ds.column_names)}); set data.{key} to one of them"
                )


def check_texts(data: DatasetDict, column: str) -> None:
    """Empty, blank or missing texts are an error: they would train on nothing but the special tokens."""
    for split, ds in data.items():
        bad = [i for i, text in enumerate(ds[column]) if not isinstance(text, str) or not text.strip()]
        if bad:
            rows = ", ".join(str(i) for i in bad[:5])
            raise DataError(
                f"{split} split: {len(bad)} empty or missing text(s) in column '{column}' (rows {rows}); "
                "remove or fill them"
            )


def label_names_from_train(train: Dataset, column: str) -> list[str]:
    """Train's ClassLabel names, or its sorted distinct values; at least two classes."""
    feature = train.features[column]
    if isinstance(feature, ClassLabel):
        names, present = list(feature.names), set(train[column])
    else:
        values = set(train[column])
        numeric = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        present = {str(v) for v in values}
        names = [str(v) for v in sorted(values)] if numeric else sorted(present)  # 2 before 10
    if len(present) < 2:
        raise DataError(
            f"train split: column '{column}' holds a single class ({', '.join(map(str, present))}); "
            "classification needs at least two"
        )
    return names


def encode_labels(data: DatasetDict, column: str, names: list[str]) -> DatasetDict:
    """A ClassLabel 'labels' column in every split, ids in the order of names; unknown labels fail."""
    label2id = {name: i for i, name in enumerate(names)}
    for split, ds in data.items():
        if isinstance(ds.features[column], ClassLabel):
            if ds.features[column].names != names:
                raise DataError(f"{split} split: its label names differ from the model's: {names}")
            if min(ds[column]) < 0:
                raise DataError(f"{split} split: has unlabelled rows (label -1); choose a labelled split")
            continue
        unknown = sorted({str(v) for v in ds[column]} - set(names))
        if unknown:
            raise DataError(
                f"{split} split: label(s) {', '.join(unknown[:5])} do not occur in the training labels; "
                "the model cannot learn them: add training examples or drop those rows"
            )
    feature = ClassLabel(names=names)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return {"labels": [label2id[str(v)] for v in batch[column]]}

    encoded = DatasetDict()
    for split, ds in data.items():
        if isinstance(ds.features[column], ClassLabel):
            ds = ds.rename_column(column, "labels") if column != "labels" else ds
        else:
            ds = ds.map(encode, batched=True, remove_columns=[column] if column != "labels" else [])
        encoded[split] = ds.cast_column("labels", feature)
    return encoded


def carve_validation(data: DatasetDict, fraction: float, seed: int) -> DatasetDict:
    """A stratified validation split from train, as the recipe's validation_fraction says."""
    counts = data["train"].to_pandas()["labels"].value_counts()
    if counts.min() < 2:
        rare = counts[counts < 2].index.tolist()
        names = data["train"].features["labels"].int2str(rare[:5])
        raise DataError(
            f"train split: class(es) {', '.join(names)} have a single example: a stratified validation split "
            "needs two per class; add examples or provide data.validation_file"
        )
    size = math.ceil(fraction * len(data["train"]))  # datasets' own rounding of test_size
    if size < len(counts):
        raise DataError(
            f"data.validation_fraction: {fraction} of {len(data['train'])} train rows gives {size} validation "
            f"rows, fewer than the {len(counts)} classes a stratified split needs; raise it or provide "
            "data.validation_file"
        )
    parts = data["train"].train_test_split(test_size=fraction, seed=seed, stratify_by_column="labels")
    result = DatasetDict(data)
    result["train"], result["validation"] = parts["train"], parts["test"]
    return result


def take_subsets(data: DatasetDict, max_train: int | None, max_eval: int | None, seed: int) -> DatasetDict:
    """Deterministic subsets: the first n rows after a seeded shuffle."""
    result = DatasetDict()
    for split, ds in data.items():
        limit = max_train if split == "train" else max_eval
        result[split] = ds.shuffle(seed=seed).select(range(limit)) if limit and limit < len(ds) else ds
    return result


@dataclass
class Labelled:
    """Checked, label-encoded splits with what identifies them: the label names, the Hub commit of the data set
    (None for local files) and a content fingerprint of each split."""

    splits: DatasetDict
    labels: LabelInfo
    commit: str | None

    def fingerprints(self) -> dict[str, str]:
        return {split: fingerprint(ds) for split, ds in self.splits.items()}


def fingerprint(ds: Dataset) -> str:
    """SHA-256 of a split's texts and labels in order: equal fingerprints, the same examples (whatever the
    file or cache they came from), so two runs' predictions can be compared row by row."""
    columns = ds.select_columns(["text", "labels"]).to_dict()  # plain lists
    content = json.dumps([columns["text"], columns["labels"]], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(content.encode()).hexdigest()


def load_labelled(spec: DataSpec) -> Labelled:
    """Raw splits → checked, label-encoded train/validation(/test), subsets applied. No tokenising yet.
    The validation split and the subsets are drawn with data.seed, never with the training seed."""
    data, commit = load_raw(spec)
    check_columns(data, spec)
    check_texts(data, spec.text_column)
    labels = LabelInfo(label_names_from_train(data["train"], spec.label_column))
    data = encode_labels(data, spec.label_column, labels.names)
    if "validation" not in data:
        data = carve_validation(data, spec.validation_fraction, spec.seed)
    data = take_subsets(data, spec.max_train_samples, spec.max_eval_samples, spec.seed)
    if spec.text_column != "text":
        data = data.rename_column(spec.text_column, "text")
    return Labelled(data, labels, commit)


# --------------------------------------------------------------------------- tokenising


def tokenize(data: DatasetDict, tokenizer: PreTrainedTokenizerBase, spec: DataSpec) -> DatasetDict:
    """Token ids with truncation; pads only in 'chunk' mode (the classic-script baseline)."""
    chunk = spec.padding == "chunk"

    def encode(batch: dict[str, list]) -> dict[str, Any]:
        encoded = tokenizer(batch["text"], truncation=True, max_length=spec.max_length, padding=chunk)
        encoded["length"] = [sum(mask) for mask in encoded["attention_mask"]]
        return encoded

    keep = {"labels", "row"}  # "row": original row numbers, carried by `harness predict`
    return DatasetDict(
        {
            split: ds.map(
                encode,
                batched=True,
                batch_size=CLASSIC_CHUNK_ROWS,
                remove_columns=[c for c in ds.column_names if c not in keep],
                desc=f"tokenising {split}",
            )
            for split, ds in data.items()
        }
    )


# --------------------------------------------------------------------------- batching


class EpochOrder(Sampler[int]):
    """The order of one epoch's training samples, drawn anew for each epoch from the seed and the epoch.

    Length-grouped (transformers' get_length_grouped_indices: shuffled mega-batches of 50 batches, each sorted
    by length, the longest batch first so that running out of memory shows at once) or plainly shuffled. A
    torch BatchSampler cuts the order into batches and accelerate deals them out to the processes in turn;
    accelerate passes set_epoch on to this sampler through both wrappers.

    With several processes every process must take the same number of full batches, so the order is evened
    out to whole rounds of batch_size x num_processes samples by repeating its first samples (what accelerate's
    even_batches would do). A repeat is yielded as index + len(dataset): RepeatMarked reads it as that sample,
    marked, and the collator counts it apart, so a sample is never counted twice in the training numbers.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool, num_processes: int):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.num_processes = num_processes
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_repeats(self) -> int:
        if self.num_processes == 1:
            return 0  # one process: the last batch may simply be short
        round_size = self.batch_size * self.num_processes
        return -len(self.lengths) % round_size

    def __len__(self) -> int:
        return len(self.lengths) + self.num_repeats

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.group_by_length:
            order = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        else:
            order = torch.randperm(len(self.lengths), generator=generator).tolist()
        n = len(order)
        yield from order
        yield from (order[i % n] + n for i in range(self.num_repeats))


class RepeatMarked(TorchDataset):
    """A tokenised split read by index; an index >= len(split) is a repeat of sample index - len(split)."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        n = len(self.ds)
        rows = self.ds.__getitems__([i % n for i in indices])  # one read for the whole batch
        return [{**row, "repeat": i >= n} for row, i in zip(rows, indices)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]


class CountingCollator:
    """Pads a batch to its longest sequence and counts, on the host, what it holds: samples and real tokens
    of first-time samples, repeats apart, and every position the model will compute (padded tokens)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [f.pop("length") for f in features]
        repeats = [f.pop("repeat", False) for f in features]
        batch = self.pad(features)
        first_time = [n for n, repeat in zip(lengths, repeats) if not repeat]
        batch["counts"] = BatchCounts(
            samples=len(first_time),
            real_tokens=sum(first_time),
            padded_tokens=int(batch["input_ids"].numel()),
            repeated_samples=sum(repeats),
            lengths=first_time,
        )
        return batch


def train_loader(ds: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, seed: int, grouped: bool,
                 num_processes: int) -> DataLoader:  # fmt: skip
    order = EpochOrder(list(ds["length"]), batch_size, seed, grouped, num_processes)  # a list: Column reads are slow
    batches = BatchSampler(order, batch_size, drop_last=False)
    return DataLoader(RepeatMarked(ds), batch_sampler=batches, collate_fn=CountingCollator(tokenizer))


def eval_loader(ds: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int) -> DataLoader:
    """Evaluation in order of length (longest first) so batches carry little padding. Each sample carries its
    row number in the split, so predictions can be put back in the split's order."""
    if "row" not in ds.column_names:
        ds = ds.add_column("row", list(range(len(ds))))
    lengths = list(ds["length"])
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    return DataLoader(ds.select(order), batch_size=batch_size, collate_fn=CountingCollator(tokenizer))
