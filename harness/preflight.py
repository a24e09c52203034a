"""Checks that need the installed stack, run before any data or model is loaded.

Each failure raises PreflightError with the fix in its message. A fallback happens only where the recipe
allows it (model.attn_fallback), and is returned so that the result records it.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from harness.distributed import check_deepspeed
from harness.errors import HarnessError
from harness.recipe import Recipe


class PreflightError(HarnessError):
    """The run cannot start as configured; the message says how to fix it."""


@dataclass
class Decisions:
    device: str  # "cpu" or "cuda"
    attn_implementation: str  # what will be asked of transformers
    fallbacks: list[dict[str, str]] = field(default_factory=list)


def resolve_model_source(name: str) -> str:
    """'package:pkg/folder' -> the folder inside the installed package; other names pass through."""
    if name.startswith("config:"):
        from transformers import CONFIG_MAPPING

        kind = name.removeprefix("config:")
        if kind not in CONFIG_MAPPING:
            close = difflib.get_close_matches(kind, list(CONFIG_MAPPING.keys()), n=1)
            hint = f"; did you mean 'config:{close[0]}'?" if close else " (for example config:modernbert)"
            raise PreflightError(f"model.name: '{kind}' is not a transformers model type{hint}")
        return name
    if not name.startswith("package:"):
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
            raise PreflightError(
                f"data.{key}: {value} does not exist (relative paths are read from {Path.cwd()}); "
                f"fix the path or override it: --set data.{key}=PATH"
            )


def check_trackers(recipe: Recipe) -> None:
    for tracker in recipe.train.report_to:
        if not _is_installed(tracker):
            raise PreflightError(f"train.report_to: '{tracker}' is not installed; pip install {tracker}")


def preflight(recipe: Recipe) -> Decisions:
    """Every check that is cheap and needs no data or weights; returns the decisions the run will use."""
    check_data_files(recipe)
    check_trackers(recipe)
    check_deepspeed(recipe)
    for source in (recipe.model.name, recipe.model.tokenizer):
        if source:
            resolve_model_source(source)
    device = resolve_device(recipe.hardware.device)
    if recipe.hardware.fsdp and device != "cuda":
        raise PreflightError(
            "hardware.fsdp: accelerate runs FSDP on GPUs only; on CPU use hardware.deepspeed: zero3 (or zero2)"
        )
    check_precision(recipe.precision.dtype, device)
    attn, fallbacks = choose_attention(recipe, device)
    return Decisions(device=device, attn_implementation=attn, fallbacks=fallbacks)
