"""Accuracy metrics computed with scikit-learn from predicted probabilities.

Everything here works on plain arrays (integer labels, softmax rows) and returns
JSON-ready Python values, so results files never carry numpy types and this
module imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    top_k_accuracy_score,
)

DEFAULT_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))


def _check(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return labels and probs as arrays, or raise ValueError naming the problem."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D (n, k), got shape {probs.shape}")
    n, k = probs.shape
    if k < 2:
        raise ValueError(f"need at least 2 classes, probs has {k} column(s)")
    if n < 1:
        raise ValueError("need at least 1 sample, probs has 0 rows")
    if labels.shape != (n,):
        raise ValueError(f"labels shape {labels.shape} does not match probs {probs.shape}; expected ({n},)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must lie in 0..{k - 1}, got range {labels.min()}..{labels.max()}")
    return labels, probs


def _plain(value: Any) -> Any:
    """Convert numpy scalars inside nested dicts to Python values for json."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value.item() if isinstance(value, np.generic) else value


def _top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Top-k accuracy; sklearn rejects 2-column scores and warns when k >= classes."""
    n_classes = probs.shape[1]
    if k >= n_classes:
        return 1.0
    scores = probs[:, 1] if n_classes == 2 else probs
    return float(top_k_accuracy_score(labels, scores, k=k, labels=range(n_classes)))


def threshold_sweep(labels: Any, probs: Any, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[dict]:
    """Coverage and accuracy when predictions whose top probability is below t abstain."""
    labels, probs = _check(labels, probs)
    n = len(labels)
    top = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    sweep = []
    for threshold in thresholds:
        covered = top >= threshold
        count = int(covered.sum())
        hits = int(correct[covered].sum())
        sweep.append(
            {
                "threshold": float(threshold),
                "covered": count,
                "coverage": count / n,
                "covered_accuracy": hits / count if count else None,
                "overall_accuracy": hits / n,  # abstaining counts as a miss
            }
        )
    return sweep


def max_prob_distribution(probs: Any) -> dict:
    """Summary statistics of each row's top probability (model confidence)."""
    top = np.asarray(probs, dtype=float).max(axis=1)
    stats = {"mean": top.mean(), "std": top.std(), "min": top.min()}
    for q in (10, 25, 50, 75, 90):
        stats[f"p{q}"] = np.percentile(top, q)
    stats["max"] = top.max()
    return {key: float(value) for key, value in stats.items()}


def top_k_predictions(probs: Any, label_names: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row, the k most probable (label, probability) pairs, best first."""
    probs = np.asarray(probs, dtype=float)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    # stable sort keeps the lower class id first on ties, matching argmax
    order = np.argsort(-probs, axis=1, kind="stable")[:, : min(k, probs.shape[1])]
    return [[(label_names[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


def classification_metrics(
    labels: Any,
    probs: Any,
    label_names: Sequence[str],
    *,
    bootstrap_samples: int = 200,
    seed: int = 0,
) -> dict:
    """All accuracy metrics for one evaluation split, as a JSON-serialisable dict.

    ``f1_macro_stderr`` is the bootstrap standard deviation of macro-F1, or None
    when fewer than 2 resamples are asked for.
    """
    labels, probs = _check(labels, probs)
    n, k = probs.shape
    if len(label_names) != k:
        raise ValueError(f"label_names has {len(label_names)} entries but probs has {k} classes")
    # explicit labels keep every average over all k classes even when some are absent
    common = {"labels": list(range(k)), "zero_division": 0}
    preds = probs.argmax(axis=1)

    def f1(average: str, rows: Any = slice(None)) -> float:
        return float(f1_score(labels[rows], preds[rows], average=average, **common))

    rng = np.random.default_rng(seed)
    boot = [f1("macro", rng.integers(0, n, size=n)) for _ in range(bootstrap_samples)]
    accuracy = float(accuracy_score(labels, preds))
    report = classification_report(labels, preds, target_names=list(label_names), output_dict=True, **common)
    return {
        "num_samples": n,
        "accuracy": accuracy,
        "accuracy_stderr": math.sqrt(accuracy * (1 - accuracy) / n),
        "f1_macro": f1("macro"),
        "f1_macro_stderr": float(np.std(boot, ddof=1)) if bootstrap_samples > 1 else None,
        "f1_micro": f1("micro"),
        "f1_weighted": f1("weighted"),
        "precision_macro": float(precision_score(labels, preds, average="macro", **common)),
        "recall_macro": float(recall_score(labels, preds, average="macro", **common)),
        "top1_accuracy": _top_k_accuracy(labels, probs, 1),
        "top2_accuracy": _top_k_accuracy(labels, probs, 2),
        "per_class": _plain(report),  # older sklearn put numpy scalars (int64 support) here
        "confusion_matrix": {
            "labels": list(label_names),
            "matrix": confusion_matrix(labels, preds, labels=common["labels"]).tolist(),
        },
        "threshold_sweep": threshold_sweep(labels, probs),
        "max_prob_distribution": max_prob_distribution(probs),
    }
