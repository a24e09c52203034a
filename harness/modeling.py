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
from harness.errors import HarnessError
from harness.preflight import resolve_model_source
from harness.recipe import ModelSpec


def load_tokenizer(spec: ModelSpec):
    source = resolve_model_source(spec.tokenizer or spec.name)
    return AutoTokenizer.from_pretrained(source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)


def load_config(spec: ModelSpec, labels: LabelInfo) -> PretrainedConfig:
    """The model's config with the label names; "config:<shape>" is a bundled public model's shape
    (harness/shapes/), "config:<type>" that architecture's default (base) shape."""
    label_fields = {"num_labels": len(labels.names), "id2label": labels.id2label, "label2id": labels.label2id}
    if spec.name.startswith("config:"):
        from harness.shapes import shape_config  # a bundled shape first, else the model type's default

        return shape_config(spec.name.removeprefix("config:"), **label_fields, **spec.config_overrides)
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


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Keep only each layer's input in the forward pass and recompute the rest in the backward: activation
    memory falls from every layer's intermediates to one layer's, for about one more forward of compute.
    Non-reentrant checkpointing: it works under DDP, torch.compile and with inputs that need no gradient."""
    if not model.supports_gradient_checkpointing:
        raise HarnessError(
            f"train.gradient_checkpointing: {type(model).__name__} does not support it; set it to false"
        )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def numel(parameter: torch.nn.Parameter) -> int:
    """Elements of a parameter; under DeepSpeed ZeRO-3 a partitioned parameter is empty here and keeps its
    full size in ds_numel."""
    return getattr(parameter, "ds_numel", parameter.numel())


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, non-embedding parameters): embedding tables are lookups, not multiply-adds."""
    total = sum(numel(p) for p in model.parameters())
    embedding = sum(
        numel(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False)
    )
    return total, total - embedding


def per_sequence_modules(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The modules that run once per sequence, on the pooled vector: everything outside the encoder (the
    classifier head) and the encoder's own pooler where it has one (BERT)."""
    base = model.base_model
    pooler = getattr(base, "pooler", None)
    return [m for m in model.children() if m is not base] + ([pooler] if isinstance(pooler, torch.nn.Module) else [])


def attention_windows(config: PretrainedConfig) -> list[int | None]:
    """Per layer, how many keys a query attends to: None for global attention; ModernBERT's sliding layers see
    config.local_attention tokens."""
    kinds = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    return [config.local_attention if kind == "sliding_attention" else None for kind in kinds]


def flops_model(model: PreTrainedModel) -> FlopsModel:
    _, non_embedding = count_parameters(model)
    per_sequence = sum(numel(p) for m in per_sequence_modules(model) for p in m.parameters())
    return FlopsModel(
        per_token_params=non_embedding - per_sequence,
        per_sequence_params=per_sequence,
        hidden_size=model.config.hidden_size,
        attention_windows=attention_windows(model.config),
    )


def decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """The parameters that get weight decay, by the HF Trainer's own rule (names and layer types, not shapes,
    so it holds for ZeRO-3's flattened partitions): no decay for biases and normalisation weights."""
    from transformers import Trainer

    return set(Trainer.get_decay_parameter_names(None, model))  # uses no Trainer state


def describe_model(model: PreTrainedModel) -> dict[str, Any]:
    """What is loaded, read back from the model itself rather than from the recipe (pass the prepared model:
    its parameters are on the device, in the dtype DeepSpeed or FSDP chose)."""
    total, non_embedding = count_parameters(model)
    parameter = next(model.parameters())
    return {
        "model_class": type(model).__name__,
        "model_type": model.config.model_type,
        "model_commit": getattr(model.config, "_commit_hash", None),  # the Hub commit; None for local folders
        "attn_implementation": model.config._attn_implementation,
        "gradient_checkpointing": model.is_activation_checkpointing,
        "parameter_dtype": str(parameter.dtype).removeprefix("torch."),
        "parameter_device": str(parameter.device),
        "num_parameters": total,
        "num_non_embedding_parameters": non_embedding,
        "num_layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "num_labels": model.config.num_labels,
    }
