"""Model loading and what actually ran: parameter counts, dtype, attention implementation."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from harness.collector import FlopsModel
from harness.data import LabelInfo
from harness.preflight import resolve_model_source
from harness.recipe import ModelSpec


def load_tokenizer(spec: ModelSpec):
    source = resolve_model_source(spec.tokenizer or spec.name)
    return AutoTokenizer.from_pretrained(source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)


def load_config(spec: ModelSpec, labels: LabelInfo) -> PretrainedConfig:
    """The model's config with the label names; "config:<type>" is that architecture's default (base) shape."""
    label_fields = {"num_labels": len(labels.names), "id2label": labels.id2label, "label2id": labels.label2id}
    if spec.name.startswith("config:"):
        return AutoConfig.for_model(spec.name.removeprefix("config:"), **label_fields, **spec.config_overrides)
    return AutoConfig.from_pretrained(
        resolve_model_source(spec.name),
        revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
        **label_fields,
        **spec.config_overrides,
    )


def load_model(spec: ModelSpec, labels: LabelInfo, attn_implementation: str) -> PreTrainedModel:
    """A sequence classifier with the label names in its config; random weights if spec.random_init."""
    config = load_config(spec, labels)
    if spec.random_init:
        return AutoModelForSequenceClassification.from_config(
            config, attn_implementation=attn_implementation, trust_remote_code=spec.trust_remote_code
        )
    return AutoModelForSequenceClassification.from_pretrained(
        resolve_model_source(spec.name),
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
