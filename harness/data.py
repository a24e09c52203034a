"""Data: load (Hub or local files), validate, encode labels, split, subset, tokenise, batch.

Tokenisation truncates but does not pad (datasets caches the result by fingerprint); padding happens per
batch in the collator. Training batches are length-grouped by default: most classification texts are
short, and a batch padded to its own longest text wastes far less compute than one padded to a chunk's.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets import ClassLabel, Dataset, DatasetDict
from datasets.exceptions import DatasetGenerationError
from torch.utils.data import BatchSampler, DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import get_length_grouped_indices

from harness.collector import BatchCounts
from harness.compiling import bucket_length, default_buckets
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
    if spec.source == "synthetic":
        return load_synthetic(spec).splits, None
    if spec.source == "hub":
        wanted = {"train": spec.train_split, "validation": spec.validation_split, "test": spec.test_split}
        loaded, commit = load_hub_dataset(spec)
        missing = [f"{key}_split: '{name}'" for key, name in wanted.items() if name and name not in loaded]
        if missing:
            raise DataError(f"data.{missing[0]} is not in {spec.name} (it has: {', '.join(loaded)})")
        return DatasetDict({key: loaded[name] for key, name in wanted.items() if name}), commit
    return load_files(split_files(spec), spec.source), None


def split_files(spec: DataSpec) -> dict[str, str]:
    """The recipe's file of each split it has (none for Hub data), so that errors can name the file."""
    if spec.source == "hub":
        return {}
    files = {"train": spec.train_file, "validation": spec.validation_file, "test": spec.test_file}
    return {split: path for split, path in files.items() if path}


def where(split: str, files: dict[str, str]) -> str:
    """How an error names a split: with its file when it came from one."""
    return f"{split} split ({files[split]})" if split in files else f"{split} split"


def load_hub_dataset(spec: DataSpec) -> tuple[DatasetDict, str | None]:
    """A Hub data set and the commit it resolved to: what `datasets.load_dataset` does, with the builder kept,
    whose hash is the repository commit for Hub data sets (also when read offline from the cache). A local
    folder has no commit (its builder hash only fingerprints its files)."""
    builder = datasets.load_dataset_builder(spec.name, spec.config_name, revision=spec.revision)
    builder.download_and_prepare()
    return builder.as_dataset(), None if Path(spec.name).exists() else builder.hash


# keep_default_na=False: a CSV text "None" or "NA" stays text; truly empty cells are caught by check_texts.
# batch_size: datasets reads Parquet in batches of the first row group's size, 0 in a file without rows, which
# fails with a Parquet error instead of reaching the "no rows" check.
READ_OPTIONS = {"csv": {"keep_default_na": False}, "parquet": {"batch_size": 10_000}}
FORMATS = {
    "csv": "CSV (a header row, then one row per example)",
    "json": "JSON lines (one JSON object per line)",
    "parquet": "Parquet",
}
OPEN_FIXES = {
    FileNotFoundError: "fix the path",
    IsADirectoryError: "give the path of a data file, not of a folder",
    PermissionError: "make it readable (chmod a+r) or copy it somewhere readable",
}


def load_files(files: dict[str, str], source: str) -> DatasetDict:
    """Local CSV, JSON lines or Parquet files, one per split."""
    return DatasetDict({split: load_file(path, source, where(split, files)) for split, path in files.items()})


def load_file(path: str, source: str, named: str) -> Dataset:
    """One split's file, read on its own so that its columns cannot break another file's read (datasets
    caches each). Every way a file can fail to read is an input error naming it (`named`: the split and the
    file), raised before any model loads; datasets would report most as a generic generation error."""
    check_readable(path, named)
    if source != "parquet":
        check_utf8(path, named)
    split = "data"  # the builder's name for the file's one split
    builder = datasets.load_dataset_builder(source, data_files={split: path}, **READ_OPTIONS.get(source, {}))
    try:
        builder.download_and_prepare()
    except (DatasetGenerationError, ValueError) as error:  # pyarrow's and pandas' parse errors are ValueErrors
        cause = error.__cause__ or error
        raise DataError(
            f"{named}: cannot be read as {FORMATS[source]} ({type(cause).__name__}: {cause}); "
            "fix the file or convert it to that format"
        ) from error
    if not builder.info.splits[split].num_examples:
        raise DataError(f"{named}: the file has no data rows (a header at most); add rows or use another file")
    return builder.as_dataset(split)


def check_readable(path: str, named: str) -> None:
    """A file that is missing, a folder, unreadable or empty is said to be so, with the fix."""
    try:
        with open(path, "rb") as handle:
            empty = not handle.read(1)
    except OSError as error:
        fix = OPEN_FIXES.get(type(error), "check the path")
        raise DataError(f"{named}: cannot be read ({error.strerror}); {fix}") from None
    if empty:
        raise DataError(f"{named}: the file is empty (0 bytes); write the data into it or use another file")


def check_utf8(path: str, named: str) -> None:
    """CSV and JSON lines are read as UTF-8: pandas stops at other bytes with a bare decoding error, and
    pyarrow's JSON reader keeps them, to fail later wherever the text is read. Line by line: a newline byte
    never occurs inside a UTF-8 character, so each line decodes on its own."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                utf8 = Path(path).with_stem(f"{Path(path).stem}-utf8")
                raise DataError(
                    f"{named}: not UTF-8 text (line {number} holds the byte 0x{line[error.start]:02x}); "
                    f"re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > {utf8}"
                ) from None


def source_of(path: str) -> str:
    """The datasets loader for a file, from its extension."""
    suffix = path.rsplit(".", 1)[-1].lower()
    loaders = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
    if suffix not in loaders:
        raise DataError(f"{path}: unknown file type; use .csv, .json/.jsonl (JSON lines) or .parquet")
    return loaders[suffix]


def check_columns(data: DatasetDict, spec: DataSpec, files: dict[str, str]) -> None:
    """The text and label columns in every split; a column only some files lack is a fault of those files."""
    for key in ("text_column", "label_column"):
        column = getattr(spec, key)
        lacking = [split for split, ds in data.items() if column not in ds.column_names]
        if not lacking:
            continue
        having = [split for split in data if split not in lacking]
        fix = (
            f"name that column '{column}' in the file, as the {', '.join(having)} split's file does"
            if having
            else f"set data.{key} to one of them"
        )
        raise DataError(
            f"data.{key}: column '{column}' is not in the {where(lacking[0], files)} "
            f"(columns: {', '.join(data[lacking[0]].column_names)}); {fix}"
        )


def check_texts(data: DatasetDict, column: str, files: dict[str, str]) -> None:
    """Empty, blank or missing texts are an error: they would train on nothing but the special tokens."""
    check_filled(data, column, files, is_empty_text, "empty or missing text(s)", "remove or fill them")


def check_labels(data: DatasetDict, column: str, files: dict[str, str]) -> None:
    """Missing labels are an error: a blank label would become a class of its own, never predicted, and
    deflate every macro average."""
    check_filled(data, column, files, is_missing, "missing label(s)", "label those rows or remove them")


def is_missing(value: Any) -> bool:
    """None, NaN, or a string of nothing but whitespace."""
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def is_empty_text(value: Any) -> bool:
    """Missing, or not text at all."""
    return not isinstance(value, str) or is_missing(value)


def check_filled(data: DatasetDict, column: str, files: dict[str, str], is_bad: Callable[[Any], bool],
                 what: str, fix: str) -> None:  # fmt: skip
    """Raise naming the split, its file, the column and the first bad rows (0-based, header excluded)."""
    for split, ds in data.items():
        bad = [i for i, value in enumerate(ds[column]) if is_bad(value)]
        if bad:
            rows = ", ".join(str(i) for i in bad[:5])
            raise DataError(f"{where(split, files)}: {len(bad)} {what} in column '{column}' (rows {rows}); {fix}")


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
    # data.source synthetic: its seed, tokenizer, distribution and each split's drawn lengths (mean, p50, p90, max)
    synthetic: dict[str, Any] | None = None

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
    if spec.source == "synthetic":
        return load_synthetic(spec)
    data, commit = load_raw(spec)
    files = split_files(spec)
    check_columns(data, spec, files)
    check_texts(data, spec.text_column, files)
    check_labels(data, spec.label_column, files)
    labels = LabelInfo(label_names_from_train(data["train"], spec.label_column))
    data = encode_labels(data, spec.label_column, labels.names)
    if "validation" not in data:
        data = carve_validation(data, spec.validation_fraction, spec.seed)
    data = take_subsets(data, spec.max_train_samples, spec.max_eval_samples, spec.seed)
    if spec.text_column != "text":
        data = data.rename_column(spec.text_column, "text")
    return Labelled(data, labels, commit)


def load_synthetic(spec: DataSpec, tokenizer: PreTrainedTokenizerBase | None = None) -> Labelled:
    """data.source: synthetic: random texts of drawn token lengths made with the run's tokenizer (harness.synthetic),
    labels uniform over num_labels; train_samples rows, validation and test eval_samples rows each."""
    from harness.synthetic import SyntheticError, label_names, make_splits

    assert spec.synthetic is not None  # DataSpec.check
    try:
        columns, record = make_splits(spec, tokenizer)
    except SyntheticError as error:
        raise DataError(str(error)) from None
    names = label_names(spec.synthetic.num_labels)
    features = datasets.Features({"text": datasets.Value("string"), "labels": ClassLabel(names=names)})
    data = DatasetDict({split: Dataset.from_dict(rows, features=features) for split, rows in columns.items()})
    data = take_subsets(data, spec.max_train_samples, spec.max_eval_samples, spec.seed)
    return Labelled(data, LabelInfo(names), None, synthetic=record)


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


@dataclass(frozen=True)
class LoaderOptions:
    """How batches are made and moved: worker processes, page-locked memory, length rounding or buckets."""

    num_workers: int = 0
    pin_memory: bool = False
    pad_to_multiple_of: int | None = None  # None or 1: each batch padded to its longest sequence exactly
    length_buckets: tuple[int, ...] | None = None  # each padded batch's length rounded up to one of these

    @classmethod
    def for_run(cls, spec: DataSpec, device: str, compiled: bool = False) -> LoaderOptions:
        """The recipe's settings, with its nulls resolved for the device: on CUDA, pinned memory and lengths
        rounded up to a multiple of 8 (whole tensor-core tiles); on CPU neither helps. A compiled model gets
        length buckets (default: powers of two), so that it compiles once per bucket, not once per length."""
        cuda = device == "cuda"
        pin = spec.pin_memory if spec.pin_memory is not None else cuda
        buckets = spec.length_buckets or (default_buckets(spec.max_length) if compiled else None)
        if buckets and not spec.packing:
            return cls(spec.num_workers, pin, None, tuple(buckets))
        multiple = spec.pad_to_multiple_of if spec.pad_to_multiple_of is not None else (8 if cuda else 1)
        return cls(spec.num_workers, pin, multiple if multiple > 1 else None)

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> CountingCollator:
        return CountingCollator(tokenizer, self.pad_to_multiple_of, self.length_buckets)

    def loader_arguments(self) -> dict[str, Any]:
        workers = {"persistent_workers": True, "prefetch_factor": 2} if self.num_workers else {}
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory, **workers}


class CountingCollator:
    """Pads a batch to its longest sequence (rounded up to pad_to_multiple_of, or to the next length bucket) and
    counts, on the host, what it holds: samples and real tokens of first-time samples, repeats apart, and every
    position the model will compute (padded tokens, the rounding included)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None,
                 length_buckets: tuple[int, ...] | None = None):  # fmt: skip
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")
        self.buckets = length_buckets
        self.pad_to = {n: DataCollatorWithPadding(tokenizer, padding="max_length", max_length=n, return_tensors="pt")
                       for n in length_buckets or ()}  # fmt: skip

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [f.pop("length") for f in features]
        repeats = [f.pop("repeat", False) for f in features]
        batch = self.pad_to[bucket_length(max(lengths), self.buckets)](features) if self.buckets else self.pad(features)
        batch["counts"] = count_batch(lengths, repeats, computed=int(batch["input_ids"].numel()))
        return batch


def count_batch(lengths: list[int], repeats: list[bool], computed: int) -> BatchCounts:
    """What a batch holds: first-time samples and their real tokens, repeats apart, and every position computed."""
    first_time = [n for n, repeat in zip(lengths, repeats) if not repeat]
    return BatchCounts(samples=len(first_time), real_tokens=sum(first_time), padded_tokens=computed,
                       repeated_samples=sum(repeats), lengths=first_time)  # fmt: skip


def train_loader(ds: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, seed: int, grouped: bool,
                 num_processes: int, options: LoaderOptions = LoaderOptions(),
                 collate: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None) -> DataLoader:  # fmt: skip
    """Training batches in EpochOrder, padded by CountingCollator unless another collate (packing) is given."""
    order = EpochOrder(list(ds["length"]), batch_size, seed, grouped, num_processes)  # a list: Column reads are slow
    batches = BatchSampler(order, batch_size, drop_last=False)
    return DataLoader(RepeatMarked(ds), batch_sampler=batches, **options.loader_arguments(),
                      collate_fn=collate or options.collator(tokenizer))  # fmt: skip


def eval_loader(ds: Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int,
                options: LoaderOptions = LoaderOptions()) -> DataLoader:  # fmt: skip
    """Evaluation in order of length (longest first) so batches carry little padding. Each sample carries its
    row number in the split, so predictions can be put back in the split's order."""
    if "row" not in ds.column_names:
        ds = ds.add_column("row", list(range(len(ds))))
    lengths = list(ds["length"])
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    return DataLoader(ds.select(order), batch_size=batch_size, **options.loader_arguments(),
                      collate_fn=options.collator(tokenizer))  # fmt: skip
