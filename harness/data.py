"""Data: load (Hub or local files), validate, encode labels, split, subset, tokenise, batch.

Tokenisation truncates but does not pad (datasets caches the result by fingerprint); padding happens per
batch in the collator. Training batches are length-grouped by default: most classification texts are
short, and a batch padded to its own longest text wastes far less compute than one padded to a chunk's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from datasets import ClassLabel, Dataset, DatasetDict
from torch.utils.data import DataLoader, Sampler
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


def load_raw(spec: DataSpec) -> DatasetDict:
    """The splits the recipe names, as a DatasetDict with keys among train/validation/test."""
    if spec.source == "hub":
        wanted = {"train": spec.train_split, "validation": spec.validation_split, "test": spec.test_split}
        loaded = datasets.load_dataset(spec.name, spec.config_name)
        missing = [f"{key}_split: '{name}'" for key, name in wanted.items() if name and name not in loaded]
        if missing:
            raise DataError(f"data.{missing[0]} is not in {spec.name} (it has: {', '.join(loaded)})")
        return DatasetDict({key: loaded[name] for key, name in wanted.items() if name})
    files = {"train": spec.train_file, "validation": spec.validation_file, "test": spec.test_file}
    return load_files({key: path for key, path in files.items() if path}, spec.source)


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


def load_labelled(spec: DataSpec, seed: int) -> tuple[DatasetDict, LabelInfo]:
    """Raw splits → checked, label-encoded train/validation(/test), subsets applied. No tokenising yet."""
    data = load_raw(spec)
    check_columns(data, spec)
    check_texts(data, spec.text_column)
    labels = LabelInfo(label_names_from_train(data["train"], spec.label_column))
    data = encode_labels(data, spec.label_column, labels.names)
    if "validation" not in data:
        data = carve_validation(data, spec.validation_fraction, seed)
    data = take_subsets(data, spec.max_train_samples, spec.max_eval_samples, seed)
    if spec.text_column != "text":
        data = data.rename_column(spec.text_column, "text")
    return data, labels


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


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of similar length, re-shuffled each epoch (transformers' length grouping, as batches).

    Indices are shuffled, cut into mega-batches of ~50 batches, each mega-batch sorted by length, then cut
    into batches. Accelerate shards these batches across processes; set_epoch re-seeds the shuffle.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.group_by_length:
            order = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        else:
            order = torch.randperm(len(self.lengths), generator=generator).tolist()
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]


class CountingCollator:
    """Pads a batch to its longest sequence and counts real and padded tokens on the host."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [f.pop("length") for f in features]
        batch = self.pad(features)
        batch["counts"] = BatchCounts(
            samples=len(lengths),
            real_tokens=sum(lengths),
            padded_tokens=int(batch["input_ids"].numel()),
            sum_len_sq=sum(n * n for n in lengths),
        )
        return batch


def train_loader(ds: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, seed: int, grouped: bool):
    sampler = LengthGroupedBatches(list(ds["length"]), batch_size, seed, grouped)  # a list: Column reads are slow
    return DataLoader(ds, batch_sampler=sampler, collate_fn=CountingCollator(tokenizer))


def eval_loader(ds: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int) -> DataLoader:
    """Evaluation in order of length (longest first) so batches carry little padding; order is irrelevant
    to the metrics because labels travel with their predictions."""
    lengths = list(ds["length"])
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    return DataLoader(ds.select(order), batch_size=batch_size, collate_fn=CountingCollator(tokenizer))
