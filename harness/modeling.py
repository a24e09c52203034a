"""Model loading and what actually ran: parameter counts, dtype, attention implementation."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from harness.collector import FlopsModel
from harness.data import LabelInfo
from harness.recipe import ModelSpec


def load_tokenizer(spec: ModelSpec, source: str):
    return AutoTokenizer.from_pretrained(
        source, revision=spec.revision, trust_remote_code=spec.trust_remote_code
    )


def load_model(spec: ModelSpec, source: str, labels: LabelInfo, attn_implementation: str) -> PreTrainedModel:
    """A sequence classifier with the label names in its config; random weights if spec.random_init."""
    config = AutoConfig.from_pretrained(
        source,
        revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
        num_labels=len(labels.names),
        id2label=labels.id2label,
        label2id=labels.label2id,
        **spec.config_overrides,
    )
    if spec.random_init:
        return AutoModelForSequenceClassification.from_config(
            config, attn_implementation=attn_implementation, trust_remote_code=spec.trust_remote_code
        )
    return AutoModelForSequenceClassification.from_pretrained(
        source,
        config=config,
        revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
        attn_implementation=attn_implementation,
    )


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, non-embedding parameters): embedding tables are lookups, not multiply-adds."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(
        p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False)
    )
    return total, total - embedding


def flops_model(model: PreTrainedModel) -> FlopsModel:
    _, non_embedding = count_parameters(model)
    config = model.config
    return FlopsModel(
        non_embedding_params=non_embedding,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
    )


def describe_model(model: PreTrainedModel) -> dict[str, Any]:
    """What is loaded, read back from the model itself rather than from the recipe."""
    total, non_embedding = count_parameters(model)
    parameter = next(model.parameters())
    return {
        "model_class": type(model).__name__,
        "model_type": model.config.model_type,
        "attn_implementation": model.config._attn_implementation,
        "parameter_dtype": str(parameter.dtype).removeprefix("torch."),
        "parameter_device": str(parameter.device),
        "num_parameters": total,
        "num_non_embedding_parameters": non_embedding,
        "num_layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "num_labels": model.config.num_labels,
    }
