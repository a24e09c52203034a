"""Checks that need the installed stack, run before any data or model is loaded.

Each failure raises PreflightError with the fix in its message. A fallback happens only where the recipe
allows it (model.attn_fallback), and is returned so that the result records it.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.distributed import check_deepspeed
from harness.errors import HarnessError
from harness.recipe import ModelSpec, Recipe


class PreflightError(HarnessError):
    """The run cannot start as configured; the message says how to fix it."""


@dataclass
class Decisions:
    device: str  # "cpu" or "cuda"
    attn_implementation: str  # what will be asked of transformers
    max_length: int  # tokens per text: data.max_length, or the model's position limit where clamping is allowed
    fallbacks: list[dict[str, Any]] = field(default_factory=list)


def resolve_model_source(name: str) -> str:
    """'package:pkg/folder' -> the folder inside the installed package; other names pass through."""
    if name.startswith("config:"):
        from transformers import CONFIG_MAPPING

        from harness.shapes import shape_names

        kind = name.removeprefix("config:")
        if kind not in shape_names() and kind not in CONFIG_MAPPING:  # a bundled shape first, then a model type
            close = difflib.get_close_matches(kind, shape_names() + list(CONFIG_MAPPING.keys()), n=1)
            hint = f"; did you mean 'config:{close[0]}'?" if close else ""
            raise PreflightError(
                f"model.name: '{kind}' is neither a bundled shape nor a transformers model type{hint}. Bundled "
                f"shapes: {', '.join(shape_names())}; or a model type such as config:modernbert"
            )
        return name
    if not name.startswith("package:"):
        check_local_folder(name)
        return name  # a Hub id or a local folder
    package, _, folder = name.removeprefix("package:").partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PreflightError(f"model.name: package '{package}' is not installed; pip install {package.replace('_', '-')}")
    path = Path(next(iter(spec.submodule_search_locations))) / folder
    if not path.is_dir():
        raise PreflightError(f"model.name: {path} does not exist inside package '{package}'")
    return str(path)


def looks_like_path(name: str) -> bool:
    """A name only a local folder can have: a Hub id is 'name' or 'org/name'."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or name.endswith("/")


def check_local_folder(name: str) -> None:
    """A local model folder that is missing or holds no model says so, before any data is loaded (a Hub
    library would answer "Repo id must be in the form ..." for a path it cannot find)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PreflightError(f"model.name: {path} is a folder without config.json, not a saved model")
    elif looks_like_path(name):
        raise PreflightError(
            f"model.name: {name} does not exist (relative paths are read from {Path.cwd()}); fix the path, "
            "or give a Hub id such as 'org/model'"
        )


def _is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise PreflightError(
            "hardware.device: 'cuda' asked for but torch sees no CUDA GPU "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "run on a GPU machine or set hardware.device: cpu"
        )
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def check_precision(dtype: str, device: str) -> None:
    import torch

    if dtype == "fp16" and device == "cpu":
        raise PreflightError("precision.dtype: fp16 mixed precision needs a CUDA GPU; on CPU use bf16 or fp32")
    if dtype == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name()
        raise PreflightError(
            f"precision.dtype: {name} cannot run bf16 (needs Ampere or newer); use fp16 or fp32"
        )


def choose_attention(recipe: Recipe, device: str) -> tuple[str, list[dict[str, str]]]:
    """The attention implementation to load, or an error; a fallback only where the recipe allows it."""
    requested = recipe.model.attn_implementation
    problem = None
    if requested == "flash_attention_2":
        if device != "cuda":
            problem = "flash_attention_2 needs a CUDA GPU"
        elif not _is_installed("flash_attn"):
            problem = (
                "flash-attn is not installed; install a prebuilt wheel matching your torch/CUDA/Python "
                "(see the Dockerfile) or `pip install flash-attn --no-build-isolation`"
            )
    if problem is None:
        return requested, []
    fallback = recipe.model.attn_fallback
    if fallback is None:
        raise PreflightError(
            f"model.attn_implementation: {problem}; or allow a recorded fallback with model.attn_fallback: sdpa"
        )
    return fallback, [{"what": "attn_implementation", "requested": requested, "used": fallback, "why": problem}]


def check_data_files(recipe: Recipe) -> None:
    data = recipe.data
    for key in ("train_file", "validation_file", "test_file"):
        value = getattr(data, key)
        if value and not Path(value).is_file():
            problem = "is a folder, not a file" if Path(value).is_dir() else "does not exist"
            raise PreflightError(
                f"data.{key}: {value} {problem} (relative paths are read from {Path.cwd()}); "
                f"fix the path or override it: --set data.{key}=PATH"
            )


def check_writable(folder: str, key: str) -> None:
    """Create the folder and a probe file in it: a folder that cannot take a result or a checkpoint is found
    before any data is loaded, not after training."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".harness-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PreflightError(
            f"output.{key}: {path} cannot be written ({error.strerror or error}); choose another folder: "
            f"--set output.{key}=PATH"
        ) from None


# Models whose position ids start after the padding index (RoBERTa's family): max_position_embeddings counts
# pad_token_id + 1 positions that no token uses (514 = 512 + 2 for roberta-base).
POSITIONS_AFTER_PADDING = {
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "ibert", "longformer", "mpnet",
    "roberta-prelayernorm", "xmod", "luke",
}  # fmt: skip


def model_config(spec: ModelSpec) -> Any:
    """The model's config (a small file, no weights), with the recipe's overrides laid over it."""
    from transformers import AutoConfig

    if spec.name.startswith("config:"):
        from harness.shapes import shape_config

        resolve_model_source(spec.name)  # an unknown shape or type says so, with the bundled shapes
        return shape_config(spec.name.removeprefix("config:"), **spec.config_overrides)
    try:
        return AutoConfig.from_pretrained(resolve_model_source(spec.name), revision=spec.revision,
                                          trust_remote_code=spec.trust_remote_code, **spec.config_overrides)  # fmt: skip
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PreflightError(f"model.name: cannot read the config of '{spec.name}': {first_line}") from None


def position_limit(config: Any) -> int | None:
    """The longest input the model's position embeddings cover; None when positions are relative only
    (DeBERTa-v3) or the config does not say."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None or getattr(config, "position_biased_input", True) is False:
        return None
    if config.model_type in POSITIONS_AFTER_PADDING:
        return positions - (config.pad_token_id or 0) - 1
    return positions


def choose_max_length(recipe: Recipe, config: Any) -> tuple[int, list[dict[str, Any]]]:
    """data.max_length if the model can take it; else the model's limit where the recipe allows clamping
    (a recorded fallback), else an error before any data is loaded."""
    requested, limit = recipe.data.max_length, position_limit(config)
    if limit is None or requested <= limit:
        return requested, []
    why = f"{config.model_type} has position embeddings for {limit} tokens"
    if not recipe.data.clamp_max_length:
        raise PreflightError(
            f"data.max_length: {requested} is longer than the model takes ({why}); set data.max_length: {limit}, "
            "or allow clamping with data.clamp_max_length: true"
        )
    return limit, [{"what": "data.max_length", "requested": requested, "used": limit, "why": why}]


def check_packing(recipe: Recipe, config: Any, attn_implementation: str) -> None:
    """data.packing only where the samples of a packed row stay apart in attention and pooling."""
    if not recipe.data.packing:
        return
    from harness.packing import packing_problem

    problem = packing_problem(config.model_type, attn_implementation)
    if problem:
        raise PreflightError(f"data.packing: {problem}; set data.packing: false")


def check_trackers(recipe: Recipe) -> None:
    for tracker in recipe.train.report_to:
        if not _is_installed(tracker):
            raise PreflightError(f"train.report_to: '{tracker}' is not installed; pip install {tracker}")


def preflight(recipe: Recipe, results_dir: str | None = None) -> Decisions:
    """Every check that is cheap and needs no data or weights; returns the decisions the run will use.
    results_dir: where this run's result goes, when not the recipe's output.results_dir."""
    check_data_files(recipe)
    check_writable(results_dir or recipe.output.results_dir, "results_dir")
    check_writable(recipe.output.checkpoints_dir, "checkpoints_dir")
    check_trackers(recipe)
    check_deepspeed(recipe)
    for source in (recipe.model.name, recipe.model.tokenizer):
        if source:
            resolve_model_source(source)
    config = model_config(recipe.model)
    max_length, clamped = choose_max_length(recipe, config)
    device = resolve_device(recipe.hardware.device)
    if recipe.hardware.fsdp and device != "cuda":
        raise PreflightError(
            "hardware.fsdp: accelerate runs FSDP on GPUs only; on CPU use hardware.deepspeed: zero3 (or zero2)"
        )
    check_precision(recipe.precision.dtype, device)
    attn, fallbacks = choose_attention(recipe, device)
    check_packing(recipe, config, attn)
    return Decisions(device=device, attn_implementation=attn, max_length=max_length, fallbacks=fallbacks + clamped)
