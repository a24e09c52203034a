"""Padding-free training batches (`data.packing: true`): every text of a batch back to back in one row.

A packed batch is one row of all its samples' tokens, with position ids that restart at each sample and the
sample boundaries (transformers' DataCollatorWithFlattening). No position is padding, so the embeddings, the
projections and the MLPs run on real tokens only: 32 texts of 20 to 120 tokens padded to 120 compute
32 x 120 = 3840 positions; packed, about 2240.

Attention must keep the samples apart:
  flash_attention_2   the varlen kernel takes the boundaries (cu_seq_lens) and computes no pair across samples.
  sdpa, eager         a block-diagonal mask from transformers' own mask functions (ModernBERT's sliding layers
                      get the sliding window within each sample too). Correct, but these kernels compute every
                      pair of the row and mask the cross-sample ones: (sum of n)^2 scores instead of sum of n^2.
Anything else (flex_attention, DeBERTa's disentangled attention, unknown heads) is refused before data loads.

Pooling. A sequence classifier pools the first token of its row ([CLS]) or the row's mean; in a packed row that
is the first sample's only, and the other samples get no logits (transformers issue 41652). packed_forward runs
the encoder on the packed row, pools each sample within its own boundaries and applies the model's own head,
so the logits equal the padded forward's, sample by sample. Evaluation batches stay padded.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from transformers import DataCollatorWithFlattening, PreTrainedModel
from transformers.masking_utils import (
    create_bidirectional_mask,
    create_bidirectional_sliding_window_mask,
    packed_sequence_mask_function,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from harness.data import count_batch

VARLEN_ATTENTION = {"flash_attention_2", "flash_attention_3"}  # take the boundaries themselves
MASKED_ATTENTION = {"sdpa", "eager"}  # take a block-diagonal mask
ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert"}  # positions start at pad_token_id + 1


def first_tokens(hidden: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """(samples, 1, hidden): each sample's first token, shaped as a padded batch's hidden states so the model's
    own [CLS] poolers (which read hidden[:, 0]) take it unchanged."""
    return hidden[0, boundaries[:-1].long()].unsqueeze(1)


def sample_means(hidden: torch.Tensor, sample_of_token: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """(samples, hidden): the mean over each sample's own tokens."""
    lengths = (boundaries[1:] - boundaries[:-1]).to(hidden.dtype)
    sums = hidden.new_zeros(len(lengths), hidden.shape[-1]).index_add_(0, sample_of_token[0].long(), hidden[0])
    return sums / lengths[:, None]


def bert_logits(model: PreTrainedModel, hidden: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """BertForSequenceClassification: pooler (dense + tanh on [CLS]), dropout, classifier."""
    pooler = model.base_model.pooler
    cls = first_tokens(hidden, batch["cu_seq_lens_q"])
    pooled = pooler(cls) if pooler is not None else cls[:, 0]
    return model.classifier(model.dropout(pooled))


def roberta_logits(model: PreTrainedModel, hidden: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """RobertaForSequenceClassification and XLM-R: the classification head reads hidden[:, 0] itself."""
    return model.classifier(first_tokens(hidden, batch["cu_seq_lens_q"]))


def modernbert_logits(model: PreTrainedModel, hidden: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """ModernBertForSequenceClassification: [CLS] or mean pooling (config.classifier_pooling), head, dropout,
    classifier."""
    boundaries = batch["cu_seq_lens_q"]
    if model.config.classifier_pooling == "mean":
        pooled = sample_means(hidden, batch["seq_idx"], boundaries)
    else:
        pooled = first_tokens(hidden, boundaries)[:, 0]
    return model.classifier(model.drop(model.head(pooled)))


HEADS: dict[str, Callable[[PreTrainedModel, torch.Tensor, dict[str, Any]], torch.Tensor]] = {
    "bert": bert_logits,
    "roberta": roberta_logits,
    "xlm-roberta": roberta_logits,
    "camembert": roberta_logits,
    "modernbert": modernbert_logits,
}


def packing_problem(model_type: str, attn_implementation: str) -> str | None:
    """Why a model type and attention implementation cannot train on packed batches; None when they can."""
    if model_type not in HEADS:
        return (
            f"{model_type} is not among the models whose pooling the harness applies per packed sample "
            f"({', '.join(sorted(HEADS))})"
        )
    if attn_implementation not in VARLEN_ATTENTION | MASKED_ATTENTION:
        return (
            f"attention '{attn_implementation}' is not one the harness keeps packed samples apart with "
            f"({', '.join(sorted(VARLEN_ATTENTION | MASKED_ATTENTION))})"
        )
    return None


def attention_mode(attn_implementation: str) -> str:
    """How the samples of a packed row are kept apart, as the result records it."""
    if attn_implementation in VARLEN_ATTENTION:
        return "varlen kernel (cu_seq_lens): no pair across samples is computed"
    return "block-diagonal mask: every pair of the row is computed, pairs across samples are masked"


def position_ids_start(config: Any) -> int:
    """The first position id of a sample: RoBERTa's family numbers positions from pad_token_id + 1."""
    return config.pad_token_id + 1 if config.model_type in ROBERTA_LIKE else 0


class PackingCollator:
    """Flattens a batch into one row (DataCollatorWithFlattening: input ids, restarting position ids, the
    sample of each token, the boundaries) with one label per sample, and counts it as CountingCollator does:
    every position computed is a real token, so padded tokens equal real tokens (repeats included)."""

    def __init__(self, first_position: int = 0):
        self.flatten = DataCollatorWithFlattening(
            return_flash_attn_kwargs=True, return_seq_idx=True, position_ids_start=first_position
        )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = [f["length"] for f in features]
        repeats = [f.get("repeat", False) for f in features]
        batch = self.flatten([{"input_ids": f["input_ids"]} for f in features])
        batch.pop("labels")  # the flattening collator's next-token labels: a language model's, not ours
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        # every position of the row is computed, and each is a real token
        batch["counts"] = count_batch(lengths, repeats, computed=int(batch["input_ids"].numel()))
        return batch


def sample_masks(model: PreTrainedModel, batch: dict[str, Any]) -> Any:
    """The attention masks that keep the samples of a packed row apart, built by transformers' own mask
    functions for the model's attention implementation; None for varlen kernels, which take the boundaries."""
    config = model.config
    if config._attn_implementation in VARLEN_ATTENTION:
        return None
    # only the shape, dtype and device of this tensor are read: (1, tokens, 0) costs nothing
    shape_of = torch.empty(1, batch["input_ids"].shape[1], 0, dtype=model.dtype, device=batch["input_ids"].device)
    arguments = {"config": config, "inputs_embeds": shape_of, "attention_mask": None,
                 "and_mask_function": packed_sequence_mask_function(batch["seq_idx"])}  # fmt: skip
    full = create_bidirectional_mask(**arguments, allow_is_bidirectional_skip=False)
    if config.model_type != "modernbert":
        return full
    # ModernBERT's local layers: the sliding window, within each sample
    return {"full_attention": full, "sliding_attention": create_bidirectional_sliding_window_mask(**arguments)}


def packed_forward(model: PreTrainedModel, **batch: Any) -> SequenceClassifierOutput:
    """The sequence classifier on a packed batch: the encoder on the whole row, then each sample's logits from
    its own tokens, and the mean cross-entropy over samples (the padded forward's loss)."""
    boundaries = {key: batch[key] for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}
    varlen = boundaries if model.config._attn_implementation in VARLEN_ATTENTION else {}
    hidden = model.base_model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=sample_masks(model, batch),
        **varlen,
    ).last_hidden_state
    logits = HEADS[model.config.model_type](model, hidden, batch)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, model.num_labels), batch["labels"].view(-1))
    return SequenceClassifierOutput(loss=loss, logits=logits)


def accept_packed_batches(model: PreTrainedModel) -> PreTrainedModel:
    """model(**batch) runs packed_forward for a packed batch (it has boundaries) and the model's own forward for
    a padded one. The forward is replaced on this instance only, so the weights, their names, saving and the
    wrappers of accelerate, DDP and FSDP are those of the plain model."""
    own_forward = model.forward

    def forward(self: PreTrainedModel, *args: Any, **kwargs: Any) -> Any:
        if "cu_seq_lens_q" in kwargs:
            return packed_forward(self, **kwargs)
        return own_forward(*args, **kwargs)

    model.forward = types.MethodType(forward, model)
    return model
