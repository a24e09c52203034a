"""Recipes: the typed schema, loading, dotted overrides, sweeps (`sweep:` axes) and validation.

A recipe is one YAML file under ``recipes/``. This module imports no torch, so
``harness list`` and ``harness validate`` answer instantly; checks that need the
installed stack (is flash-attn there? can this GPU run bf16?) live in
``harness.preflight`` and run before any model or data is loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.errors import HarnessError

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_RECIPES = PACKAGE_ROOT.parent / "recipes"

AttnImpl = Literal["eager", "sdpa", "flash_attention_2", "flex_attention"]
Dtype = Literal["fp32", "fp16", "bf16"]
MIXED_PRECISION = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}  # precision.dtype -> accelerate's autocast mode


YAML_BOOL_WORDS = {False: ("no", "off"), True: ("yes", "on")}

# a recipe's name is a folder under output.results_dir and output.checkpoints_dir: nothing that climbs out of them
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX = 100
NAME_RULE = f"letters, digits, '.', '_' and '-', starting with a letter or digit, at most {NAME_MAX} characters"


class RecipeError(HarnessError, ValueError):
    """A recipe that cannot run; the message names the field and the fix."""


def is_valid_name(name: str) -> bool:
    """True when name can be a recipe's name (see NAME_RULE)."""
    return len(name) <= NAME_MAX and NAME.fullmatch(name) is not None


def suggested_name(text: str) -> str:
    """A valid name close to text: other characters become '-', leading '.', '_' and '-' go."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).lstrip("._-")[:NAME_MAX]
    return cleaned or "my-recipe"


@dataclass
class ModelSpec:
    name: str  # Hub id, local folder, "package:<python package>/<folder>", or "config:<model type>"
    tokenizer: str | None = None  # where the tokenizer comes from, when not from `name` (same forms)
    revision: str | None = None
    attn_implementation: AttnImpl = "sdpa"
    attn_fallback: Literal["eager", "sdpa"] | None = None  # allowed fallback, recorded when used
    trust_remote_code: bool = False
    random_init: bool = False  # weights drawn from the config (speed benchmarks only)
    config_overrides: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.name.startswith("config:"):
            self.check_config_model()
        if self.attn_fallback is not None and self.attn_fallback == self.attn_implementation:
            raise RecipeError("model.attn_fallback: equals model.attn_implementation; set it to null")

    def check_config_model(self) -> None:
        """'config:<shape>' (harness/shapes/) or 'config:<type>' has random weights; a bundled shape without
        model.tokenizer gets the packaged MiniLM tokenizer, filled in here so that the recipe records it, where
        the shape's vocabulary can take its ids."""
        from harness.shapes import default_tokenizer, shape_names

        if not self.random_init:
            raise RecipeError(
                "model.name: 'config:<shape or type>' builds an architecture with random weights: "
                "set model.random_init: true"
            )
        if self.tokenizer:
            return
        kind = self.name.removeprefix("config:")
        tokenizer, why_not = default_tokenizer(kind, self.config_overrides)
        if tokenizer is None:
            shapes = "" if kind in shape_names() else f" (bundled shapes: {', '.join(shape_names())})"
            raise RecipeError(
                f"model.tokenizer: required here: {why_not}; set model.tokenizer (a Hub id, local folder or "
                f"package:<python package>/<folder> whose vocabulary fits the model){shapes}"
            )
        self.tokenizer = tokenizer


LengthDistribution = Literal["fixed", "uniform", "normal", "histogram"]
LENGTH_KEYS = {  # the keys each distribution takes (besides `distribution`), required ones first
    "fixed": (("length",), ()),
    "uniform": (("min", "max"), ()),
    "normal": (("mean", "std", "min", "max"), ()),
    "histogram": (("file",), ("column",)),
}
MIN_SYNTHETIC_LENGTH = 3  # tokens of a text: the special tokens ([CLS], [SEP]) and at least one word


@dataclass
class LengthsSpec:
    """Token lengths of synthetic texts (special tokens included, as the collator counts them)."""

    distribution: LengthDistribution
    length: int | None = None  # fixed
    min: int | None = None  # uniform, normal (clipped to [min, max])
    max: int | None = None
    mean: float | None = None  # normal
    std: float | None = None
    file: str | None = None  # histogram: a CSV / JSON lines / Parquet file whose token lengths are sampled
    column: str = "text"  # histogram: its text column

    def check(self, max_length: int) -> None:
        where = f"data.synthetic.lengths ({self.distribution})"
        required, optional = LENGTH_KEYS[self.distribution]
        given = {f.name for f in dataclasses.fields(self) if f.name not in ("distribution", "column")
                 and getattr(self, f.name) is not None}  # fmt: skip
        if self.column != "text":
            given.add("column")
        missing = [key for key in required if key not in given]
        if missing:
            raise RecipeError(f"{where}: needs {', '.join(required)}; {missing[0]} is missing")
        extra = sorted(given - set(required) - set(optional))
        if extra:
            raise RecipeError(f"{where}: takes {', '.join(required + optional)}, not {', '.join(extra)}")
        if self.distribution == "histogram":
            return
        low, high = (self.length, self.length) if self.distribution == "fixed" else (self.min, self.max)
        if low > high:
            raise RecipeError(f"{where}: min {low} is more than max {high}; swap them")
        if low < MIN_SYNTHETIC_LENGTH:
            raise RecipeError(
                f"{where}: lengths count the special tokens, so each must be at least {MIN_SYNTHETIC_LENGTH}; "
                f"got {low}"
            )
        if high > max_length:
            raise RecipeError(
                f"{where}: lengths up to {high} tokens are longer than data.max_length ({max_length}), so "
                f"truncation would change them; lower the lengths or raise data.max_length to {high}"
            )
        if self.distribution == "normal" and not self.std > 0:
            raise RecipeError(f"{where}: std must be positive, got {self.std}; for one length use fixed")


@dataclass
class SyntheticSpec:
    """data.source: synthetic: random texts of drawn token lengths, labels uniform over num_labels (speed runs)."""

    lengths: LengthsSpec
    num_labels: int = 4
    train_samples: int = 256
    eval_samples: int = 64  # validation and test each
    seed: int | None = None  # default: data.seed (filled in, so the recipe records it)
    tokenizer: str | None = None  # builds and measures the texts; default: the run's (filled in from model)

    def check(self, max_length: int) -> None:
        if self.num_labels < 2:
            raise RecipeError(f"data.synthetic.num_labels: got {self.num_labels}; classification needs at least 2")
        for name in ("train_samples", "eval_samples"):
            if getattr(self, name) < 1:
                raise RecipeError(f"data.synthetic.{name}: must be at least 1")
        self.lengths.check(max_length)


@dataclass
class DataSpec:
    source: Literal["hub", "csv", "json", "parquet", "synthetic"] = "hub"
    name: str | None = None  # Hub dataset id (source: hub)
    config_name: str | None = None
    revision: str | None = None  # Hub branch, tag or commit; the commit that ran is recorded either way
    train_split: str = "train"
    validation_split: str | None = "validation"  # null: carve a stratified split from train
    test_split: str | None = None
    train_file: str | None = None  # local files (source: csv, json, parquet)
    validation_file: str | None = None
    test_file: str | None = None
    validation_fraction: float = 0.05
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 512
    clamp_max_length: bool = False  # above the model's position limit: clamp to it (recorded), else an error
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    group_by_length: bool = True
    num_workers: int = 0  # DataLoader worker processes per rank (0: batches are made in the training process)
    pin_memory: bool | None = None  # page-locked host batches for asynchronous copies; null: on for CUDA
    pad_to_multiple_of: int | None = None  # batch lengths rounded up (tensor-core tiles); null: 8 on CUDA, 1 on CPU
    # "batch": pad each batch to its own longest text (the harness default).
    # "chunk": pad at tokenisation time to the longest text of each 1000-row chunk,
    # as `dataset.map(tokenizer(padding=True), batched=True)` scripts do (a baseline).
    padding: Literal["batch", "chunk"] = "batch"
    # training batches flattened into one row without padding (harness/packing.py); evaluation stays padded
    packing: bool = False
    # padded batch lengths rounded up to one of these, so a compiled model sees few shapes; null: with
    # train.compile, powers of two up to max_length (harness/compiling.py), else no buckets
    length_buckets: list[int] | None = None
    # the validation split carved from train and the subsets: fixed, so that runs with other train.seed values
    # (repeats) are evaluated on the same data
    seed: int = 42
    synthetic: SyntheticSpec | None = None  # data.source: synthetic

    def check(self) -> None:
        if self.source == "synthetic":
            self.check_synthetic()
        elif self.synthetic is not None:
            raise RecipeError("data.synthetic: only for data.source: synthetic; remove it or set the source")
        if self.source == "hub" and not self.name:
            raise RecipeError("data.name: required when data.source is 'hub' (a Hub dataset id)")
        if self.source not in ("hub", "synthetic"):
            if not self.train_file:
                raise RecipeError(f"data.train_file: required when data.source is '{self.source}'")
            if self.name:
                raise RecipeError("data.name: only for data.source 'hub'; local files use data.train_file")
        if not 0.0 < self.validation_fraction < 0.5:
            raise RecipeError("data.validation_fraction: must be in (0, 0.5), for example 0.05")
        if self.max_length < 8:
            raise RecipeError("data.max_length: must be at least 8 tokens")
        if self.num_workers < 0:
            raise RecipeError("data.num_workers: must be >= 0 (0: no worker processes)")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise RecipeError("data.pad_to_multiple_of: must be at least 1 (1: no rounding), or null for the default")
        if self.packing:
            self.check_packing()
        if self.length_buckets is not None:
            self.check_buckets()
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecipeError(f"data.{name}: must be a positive count or null")

    def check_packing(self) -> None:
        """Packed training batches have no padding: settings that pad them contradict it."""
        if self.padding == "chunk":
            raise RecipeError("data.packing: packed batches have no padding, but data.padding: chunk pads each "
                              "text at tokenisation; set data.padding: batch or data.packing: false")
        if self.pad_to_multiple_of not in (None, 1):
            raise RecipeError("data.pad_to_multiple_of: rounds padded batch lengths, and data.packing leaves "
                              "training batches unpadded; set it to null (evaluation batches get the default)")

    def check_buckets(self) -> None:
        buckets = self.length_buckets
        if not buckets or any(b < 1 for b in buckets) or buckets != sorted(set(buckets)):
            raise RecipeError(f"data.length_buckets: got {buckets}; expected increasing positive lengths, "
                              "for example [64, 128, 256, 512]")
        if buckets[-1] < self.max_length:
            raise RecipeError(f"data.length_buckets: the last bucket ({buckets[-1]}) is shorter than data.max_length "
                              f"({self.max_length}), so a long batch would fit none; end them with {self.max_length}")
        if self.packing:
            raise RecipeError("data.length_buckets: bound padded batches, and data.packing leaves training batches "
                              "unpadded; set data.length_buckets: null (a packed compiled run uses dynamic shapes)")
        if self.pad_to_multiple_of not in (None, 1):
            raise RecipeError("data.pad_to_multiple_of: buckets fix the batch lengths; set it to null")

    def check_synthetic(self) -> None:
        if self.synthetic is None:
            raise RecipeError(
                "data.synthetic: required when data.source is 'synthetic', for example "
                "{num_labels: 4, lengths: {distribution: fixed, length: 128}}"
            )
        given = [key for key in ("name", "train_file", "validation_file", "test_file") if getattr(self, key)]
        if given:
            raise RecipeError(f"data.{given[0]}: not for data.source 'synthetic', which makes its own splits")
        self.synthetic.check(self.max_length)
        if self.synthetic.seed is None:
            self.synthetic.seed = self.seed

    @property
    def has_validation(self) -> bool:
        if self.source == "synthetic":
            return True
        return bool(self.validation_file if self.source != "hub" else self.validation_split)


@dataclass
class PrecisionSpec:
    dtype: Dtype = "fp32"  # autocast dtype; master weights stay fp32 (mixed precision)
    tf32: bool = False  # TF32 matmuls for the fp32 parts (Ampere and newer)


@dataclass
class TrainSpec:
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 32  # per device, per micro-batch
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = "linear"
    optimizer: Literal["adamw"] = "adamw"
    fused: Literal["auto", "on", "off"] = "auto"  # auto: fused AdamW where the device supports it
    max_grad_norm: float | None = 1.0
    seed: int = 42  # weight initialisation, dropout and batch order (data.seed fixes the evaluation data)
    eval_strategy: Literal["epoch", "steps", "no"] = "epoch"
    eval_steps: int | None = None
    metric_for_best_model: Literal[
        "f1_macro", "accuracy", "f1_micro", "f1_weighted", "loss"
    ] = "f1_macro"
    save_best: bool = True
    compile: bool = False  # torch.compile (inductor) through accelerate; compilation is reported apart (ran.compile)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more compute
    # time to target: the first evaluation whose metrics all reach these values (loss: at most) is recorded
    target: dict[str, float] = field(default_factory=dict)
    log_every_steps: int = 10
    report_to: list[Literal["wandb", "tensorboard"]] = field(default_factory=list)

    def check(self) -> None:
        positive = ("epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "log_every_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise RecipeError(f"train.{name}: must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise RecipeError("train.max_steps: must be at least 1, or null to train by epochs")
        if not self.learning_rate > 0:
            raise RecipeError("train.learning_rate: must be positive, for example 5e-5")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise RecipeError("train.warmup_ratio: must be in [0, 1), for example 0.1")
        if self.weight_decay < 0:
            raise RecipeError("train.weight_decay: must be >= 0")
        if self.eval_strategy == "steps" and not self.eval_steps:
            raise RecipeError("train.eval_steps: required when train.eval_strategy is 'steps'")
        if self.save_best and self.eval_strategy == "no":
            raise RecipeError("train.save_best: needs evaluation; set train.eval_strategy or save_best: false")
        self.check_target()

    def check_target(self) -> None:
        metrics = typing.get_args(typing.get_type_hints(TrainSpec)["metric_for_best_model"])
        for name, value in self.target.items():
            if name not in metrics:
                close = difflib.get_close_matches(str(name), metrics, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise RecipeError(f"train.target.{name}: not a validation metric{hint}; one of {', '.join(metrics)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RecipeError(f"train.target.{name}: got {value!r}; expected a number, for example 0.9")
        if self.target and self.eval_strategy == "no":
            raise RecipeError("train.target: needs evaluation; set train.eval_strategy: steps (and eval_steps) or epoch")


@dataclass
class CollectorSpec:
    warmup_steps: int = 5  # optimizer steps excluded from step-time statistics

    def check(self) -> None:
        if self.warmup_steps < 0:
            raise RecipeError("collector.warmup_steps: must be >= 0")


@dataclass
class HardwareSpec:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_processes: int = 1  # total over all machines, as accelerate counts it
    num_machines: int = 1
    deepspeed: str | None = None  # "zero2", "zero3", or a path to your own DeepSpeed JSON
    fsdp: Literal["full_shard", "shard_grad_op"] | None = None  # PyTorch FSDP2, through accelerate
    offload: Literal["none", "cpu"] = "none"  # ZeRO offload of optimizer state (and parameters with zero3)
    collective_timeout_s: int = 600  # a rank that stops answering fails the run after this long
    gpu: str | None = None  # Modal GPU spec, for example "A100-80GB:4"
    timeout_hours: float | None = None  # Modal: the limit of one attempt (a restart resumes); default 6

    def check(self) -> None:
        if self.num_processes < 1 or self.num_machines < 1:
            raise RecipeError("hardware.num_processes and hardware.num_machines: must be at least 1")
        if self.num_processes % self.num_machines:
            raise RecipeError(
                "hardware.num_processes: is the total over all machines (as accelerate counts it) and must be "
                f"a multiple of hardware.num_machines ({self.num_machines})"
            )
        if self.deepspeed and self.fsdp:
            raise RecipeError("hardware.fsdp: choose DeepSpeed or FSDP, not both; set one of them to null")
        if self.offload != "none" and not (self.deepspeed or self.fsdp):
            raise RecipeError("hardware.offload: needs hardware.deepspeed (zero2 or zero3) or hardware.fsdp")
        if self.timeout_hours is not None and not 0 < self.timeout_hours <= 24:
            raise RecipeError("hardware.timeout_hours: must be more than 0 and at most 24 (Modal's limit per attempt)")
        if self.collective_timeout_s < 10:
            raise RecipeError("hardware.collective_timeout_s: must be at least 10 seconds")

    @property
    def distributed(self) -> bool:
        """True when the run has a process group (several processes, DeepSpeed or FSDP), started by torch elastic."""
        return self.num_processes > 1 or self.deepspeed is not None or self.fsdp is not None


@dataclass
class OutputSpec:
    results_dir: str = "results"
    checkpoints_dir: str = "checkpoints"


@dataclass
class Recipe:
    name: str
    model: ModelSpec
    data: DataSpec
    description: str = ""
    precision: PrecisionSpec = field(default_factory=PrecisionSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    collector: CollectorSpec = field(default_factory=CollectorSpec)
    hardware: HardwareSpec = field(default_factory=HardwareSpec)
    output: OutputSpec = field(default_factory=OutputSpec)

    def check(self) -> None:
        if not is_valid_name(self.name):
            raise RecipeError(
                f"name: {self.name!r} cannot name the run's folders; use {NAME_RULE}, "
                f"for example name: {suggested_name(self.name)}"
            )
        for section in (self.model, self.data, self.train, self.collector, self.hardware):
            section.check()
        if self.data.synthetic is not None and self.data.synthetic.tokenizer is None:
            # synthetic texts are made and measured with the run's tokenizer; filled in, so the recipe records it
            self.data.synthetic.tokenizer = self.model.tokenizer or self.model.name
        if self.model.attn_implementation == "flash_attention_2" and self.precision.dtype == "fp32":
            raise RecipeError(
                "precision.dtype: flash_attention_2 runs only in fp16 or bf16; "
                "set precision.dtype: bf16 or model.attn_implementation: sdpa"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def hash(self) -> str:
        """Short content hash of what the recipe runs: equal hashes, equal configuration. The description, the
        output folders and the time-to-target threshold (an observer) change no number, so they are left out."""
        content = {key: value for key, value in self.to_dict().items() if key not in ("description", "output")}
        content["train"] = {key: value for key, value in content["train"].items() if key != "target"}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def with_seed(self, seed: int) -> Recipe:
        """The same recipe with another train.seed (a repeat); the evaluation data stay fixed by data.seed."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, seed=seed))


# --------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    return "null" if tp is type(None) else tp.__name__


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return value as type tp, or raise RecipeError naming the field and what is allowed."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) == 1:  # Optional[X]: X's own message, which may suggest a value
            return _coerce(value, options[0], where)
        for option in options:
            try:
                return _coerce(value, option, where)
            except RecipeError:
                continue
        raise RecipeError(f"{where}: got {value!r}; allowed: {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads unquoted no/off/yes/on as booleans
            value = next((w for w in YAML_BOOL_WORDS[value] if w in typing.get_args(tp)), value)
        if value in typing.get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"{where}: got {value!r}; allowed: {_type_name(tp)}{hint}")
    elif origin is list:
        if isinstance(value, list):
            (item_type,) = typing.get_args(tp)
            return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return _json_mapping(value, where)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, where)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(value, where)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float, bool)):
            raise RecipeError(
                f"{where}: got {value!r} ({type(value).__name__}); expected str: put the text in quotes, "
                "as YAML reads it as a number or a boolean otherwise"
            )
    raise RecipeError(f"{where}: got {value!r} ({type(value).__name__}); expected {_type_name(tp)}")


def _finite(value: float, where: str) -> float:
    """value as a float; inf, nan and numbers too large for a float are refused."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise RecipeError(f"{where}: got {value!r}; expected a finite number")
    return number


def _json_mapping(value: dict[Any, Any], where: str) -> dict[Any, Any]:
    """A copy of value, which must hold only what JSON holds: recipes are hashed and recorded as JSON."""
    try:
        json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"{where}: {error}; use text, numbers, booleans, null, lists and mappings") from None
    return dict(value)


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise RecipeError(f"{prefix}{key}: unknown key{hint}. Valid keys: {', '.join(fields)}")
    missing = [
        name
        for name, f in fields.items()
        if name not in raw
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise RecipeError(f"{prefix}{missing[0]}: required")
    values = {key: _coerce(value, hints[key], f"{prefix}{key}") for key, value in raw.items()}
    return cls(**values)


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError("recipe: the file must hold a mapping of sections (model:, data:, ...)")
    recipe = _build(Recipe, raw, "")
    recipe.check()
    return recipe


# --------------------------------------------------------------------------- YAML


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that gives one key twice: which of the values is meant is ambiguous."""


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags) that refuses a key given twice and reads floats as YAML 1.2 does:
    3e-5 and 1e3 are numbers (YAML 1.1 reads them as text); a quoted '3e-5' stays text."""

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        _refuse_duplicate_keys(node)
        return node


RecipeLoader.add_implicit_resolver(  # after YAML 1.1's float and int resolvers, which read the other forms
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _refuse_duplicate_keys(node: yaml.MappingNode) -> None:
    """Raise DuplicateKeyError, naming the key and both its lines, when node gives a key twice."""
    first_lines: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in first_lines:
            first = first_lines[(key.tag, key.value)]
            raise DuplicateKeyError(f"key {key.value!r} is given twice, on line {first} and line {line}; keep one")
        first_lines[(key.tag, key.value)] = line


def parse_yaml(text: str, source: str) -> Any:
    """text read with RecipeLoader; a YAML error becomes a RecipeError that starts with source."""
    try:
        return yaml.load(text, Loader=RecipeLoader)
    except (yaml.YAMLError, ValueError) as error:  # ValueError: a value no type holds, such as 2024-13-45
        raise RecipeError(f"{source}: not valid YAML: {_one_line(error)}") from None


def _one_line(error: Exception) -> str:
    """An error of the YAML reader in one line: the problem and, where known, its line and column."""
    mark = getattr(error, "problem_mark", None)
    if mark is not None and getattr(error, "problem", None):
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.learning_rate=3e-5' -> (['train', 'learning_rate'], 3e-05); the value is read as recipe YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {text!r}: expected KEY=VALUE, for example train.learning_rate=3e-5")
    path = dotted_path(key, f"--set {text!r}")
    return path, parse_yaml(value, f"--set {text!r}") if value.strip() else ""


def dotted_path(key: str, source: str) -> list[str]:
    """'train.learning_rate' -> ['train', 'learning_rate'] (a --set key or a sweep axis); errors start with source."""
    path = [part.strip() for part in key.split(".")]
    if not all(path):
        raise RecipeError(
            f"{source}: the key '{key.strip()}' has an empty part; write dotted keys such as train.learning_rate"
        )
    return path


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of raw with each dotted override set (unknown keys fail at validation)."""
    result = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        set_dotted(result, path, value, f"--set {text!r}")
    return result


def set_dotted(raw: dict[str, Any], path: list[str], value: Any, source: str) -> None:
    """raw[path[0]]...[path[-1]] = value, making the sections on the way; errors start with source."""
    node = raw
    for depth, part in enumerate(path[:-1], start=1):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"{source}: '{'.'.join(path[:depth])}' is not a section (it holds {node!r})")
    node[path[-1]] = value


# --------------------------------------------------------------------------- files


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RecipeError(f"{path}: cannot read the file: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise RecipeError(f"{path}: not UTF-8 text: {error}") from None
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: must hold a mapping of sections (model:, data:, ...)")
    return raw


def recipe_files(root: Path | None = None) -> list[Path]:
    """Every recipe file under root (default: the repository's recipes/), recursively."""
    base = root or REPO_RECIPES
    return sorted(p for p in base.rglob("*") if p.suffix in (".yaml", ".yml"))


def find_recipe(name_or_path: str, root: Path | None = None) -> Path:
    """A path to a YAML file, or the name of a recipe under recipes/ (its file stem)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        return path
    matches = [p for p in recipe_files(root) if p.stem == name_or_path]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise RecipeError(f"recipe name '{name_or_path}' is ambiguous: {', '.join(map(str, matches))}; pass a path")
    names = [p.stem for p in recipe_files(root)]
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise RecipeError(f"no recipe named '{name_or_path}'{hint}. Run `harness list` to see them.")


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """base with top's values laid over it, section by section."""
    merged = dict(base)
    for key, value in top.items():
        both_sections = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = deep_merge(merged[key], value) if both_sections else value
    return merged


def _extended_file(path: Path, base: Any, root: Path | None) -> Path:
    """The file that `extends: base` in the file at path names; errors start with path."""
    if not isinstance(base, str) or not base.strip():
        raise RecipeError(f"{path}: extends: got {base!r}; expected a recipe name or the path of its YAML file")
    if base.endswith((".yaml", ".yml")) or "/" in base:  # a path, read from the folder of the file that holds it
        target = path.parent / base
        if not target.is_file():
            raise RecipeError(f"{path}: extends: {target} does not exist (a relative path starts at {path.parent})")
        return target
    try:
        return find_recipe(base, root)
    except RecipeError as error:
        raise RecipeError(f"{path}: extends: {error}") from None


def read_recipe_file(path: Path, root: Path | None = None, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping; a file that says `extends: OTHER` is OTHER with this file's values laid over it."""
    raw = _read_yaml(path)
    if "extends" not in raw:
        return raw
    base = raw.pop("extends")
    base_path = _extended_file(path, base, root)
    chain = (*seen, path.resolve())
    if base_path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_path.resolve()))
        raise RecipeError(f"{path}: extends: '{base}' makes a cycle: {cycle}")
    parent = read_recipe_file(base_path, root, chain)
    parent.pop("name", None)  # a name belongs to its own file
    return deep_merge(parent, raw)


def _name_of_file(path: Path) -> str:
    """The name of a recipe that sets no `name:`: its file stem, which must then be a valid name."""
    if not is_valid_name(path.stem):
        raise RecipeError(
            f"name: the file name {path.stem!r} is not a valid recipe name ({NAME_RULE}); rename the file, "
            f"for example to {suggested_name(path.stem)}{path.suffix}, or set name: in it"
        )
    return path.stem


def load_recipe(name_or_path: str, overrides: list[str] = (), root: Path | None = None) -> Recipe:
    """Find, read, override and validate a recipe; errors name the file and the field. A recipe with a
    `sweep:` is validated cell by cell and stands for its base, the recipe without the sweep (what
    `harness run` runs); `harness sweep` runs its cells."""
    return load_sweep(name_or_path, overrides, root).base


# --------------------------------------------------------------------------- sweeps


@dataclass
class SweepCell:
    """One point of a sweep's Cartesian product: the axis values it sets and the recipe they resolve to. The
    recipe has no sweep, so its hash is that of the same recipe written out by hand."""

    settings: dict[str, Any]  # dotted axis key -> value, in the order of the sweep's axes
    recipe: Recipe

    @property
    def label(self) -> str:
        return settings_label(self.settings)


@dataclass
class Sweep:
    """A recipe file as `harness sweep` reads it."""

    base: Recipe  # the recipe without its sweep
    cells: list[SweepCell]  # empty when the recipe has no sweep


def settings_label(settings: dict[str, Any]) -> str:
    """'train.batch_size=16 data.padding=chunk': the cell as --set would write it."""
    return " ".join(f"{key}={setting_text(value)}" for key, value in settings.items())


def setting_text(value: Any) -> str:
    """A value as --set reads it and compare writes it: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def load_sweep(name_or_path: str, overrides: list[str] = (), root: Path | None = None) -> Sweep:
    """Find, read, override and validate a recipe and every cell of its `sweep:` (the values outside it make
    the base, itself a valid recipe); errors name the file, the field and the cell."""
    path = find_recipe(name_or_path, root)
    raw = apply_overrides(read_recipe_file(path, root), list(overrides))
    axes = raw.pop("sweep", None)
    try:
        if "name" not in raw:
            raw["name"] = _name_of_file(path)
        base = recipe_from_dict(raw)
        return Sweep(base, [] if axes is None else sweep_cells(raw, axes, list(overrides)))
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None


def sweep_cells(raw: dict[str, Any], axes: Any, overrides: list[str] = ()) -> list[SweepCell]:
    """The Cartesian product of the axes over the raw base recipe, in the order the axes are written (the last
    varies fastest), each cell validated; a value no cell may take names its axis key and its cell."""
    paths = sweep_axes(axes, overrides)
    combinations = list(itertools.product(*axes.values()))
    cells = []
    for number, values in enumerate(combinations, start=1):
        settings = dict(zip(axes, values))
        cell_raw = copy.deepcopy(raw)
        try:
            for key, value in settings.items():
                set_dotted(cell_raw, paths[key], value, f"sweep.{key}")
            cells.append(SweepCell(settings, recipe_from_dict(cell_raw)))
        except RecipeError as error:
            cell = f"sweep cell {number} of {len(combinations)} ({settings_label(settings)})"
            raise RecipeError(f"{cell}: {error}") from None
    refuse_equal_cells(cells)
    return cells


def sweep_axes(axes: Any, overrides: list[str]) -> dict[str, list[str]]:
    """Each axis key as a dotted path, once the sweep is a mapping of dotted keys to non-empty lists and no
    --set fixes an axis (the axis would silently win)."""
    example = "for example sweep: {train.batch_size: [16, 32], data.padding: [batch, chunk]}"
    if not isinstance(axes, dict) or not axes:
        raise RecipeError(f"sweep: got {axes!r}; expected a mapping of dotted keys to lists of values, {example}")
    overridden = {".".join(parse_override(text)[0]): text for text in overrides}
    paths = {}
    for key, values in axes.items():
        if not isinstance(key, str):
            raise RecipeError(f"sweep: the key {key!r} is not a dotted key such as train.batch_size; {example}")
        if not isinstance(values, list) or not values:
            raise RecipeError(f"sweep.{key}: got {values!r}; expected a list of one or more values, {example}")
        paths[key] = dotted_path(key, f"sweep.{key}")
        axis = ".".join(paths[key])
        for set_key, text in overridden.items():
            if set_key == axis or set_key.startswith(f"{axis}."):
                raise RecipeError(f"sweep.{key}: --set {text!r} sets what this axis sets; drop one of the two")
    return paths


def refuse_equal_cells(cells: list[SweepCell]) -> None:
    """Two cells that resolve to the same recipe (a value given twice) would run the same thing twice."""
    first_of: dict[str, int] = {}
    for number, cell in enumerate(cells, start=1):
        first = first_of.setdefault(cell.recipe.hash, number)
        if first != number:
            raise RecipeError(
                f"sweep: cells {first} ({cells[first - 1].label}) and {number} ({cell.label}) resolve to the same "
                f"recipe (hash {cell.recipe.hash}); give each axis distinct values"
            )
