"""Accuracy metrics computed with scikit-learn (intervals with scipy) from predicted probabilities.

Everything here works on plain arrays (integer labels, softmax rows) and returns
JSON-ready Python values, so results files never carry numpy types and this
module imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    top_k_accuracy_score,
)

from harness.stats import interval, paired_bootstrap

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


def macro_f1(labels: Any, preds: Any) -> np.ndarray:
    """Macro-F1 along the last axis over the classes present in labels or preds (scikit-learn's default).

    Leading axes are a batch (bootstrap resamples): one bincount counts every row of every resample at
    once, so a thousand resamples of thousands of rows take milliseconds.
    """
    labels, preds = np.broadcast_arrays(np.asarray(labels), np.asarray(preds))
    k = int(max(labels.max(), preds.max())) + 1
    batch = labels.shape[:-1]
    size = math.prod(batch)
    offset = np.arange(size)[:, None] * k  # resample b counts its classes in bins b*k .. b*k + k-1
    true, pred = ((array.reshape(size, -1) + offset).ravel() for array in (labels, preds))

    def count(ids: np.ndarray) -> np.ndarray:
        return np.bincount(ids, minlength=size * k).reshape(*batch, k)

    hits, total = count(true[true == pred]), count(true) + count(pred)  # total = 2tp + fp + fn, 0 if absent
    f1 = np.divide(2 * hits, total, out=np.zeros(total.shape), where=total > 0)
    return f1.sum(axis=-1) / (total > 0).sum(axis=-1)


def _f1_macro_bootstrap(labels: np.ndarray, preds: np.ndarray, resamples: int, seed: int) -> Any:
    """The bootstrap of macro-F1 over (label, prediction) pairs, or None when it cannot run."""
    if resamples < 2 or len(labels) < 2:
        return None
    return paired_bootstrap([labels, preds], macro_f1, seed, resamples)


def classification_metrics(
    labels: Any,
    probs: Any,
    label_names: Sequence[str],
    *,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> dict:
    """All accuracy metrics for one evaluation split, as a JSON-serialisable dict.

    Macro averages cover the classes present in labels or predictions (``labels_averaged``), as
    scikit-learn does: a class missing from a small split would otherwise count as F1 0. ``per_class``
    and ``confusion_matrix`` list every class. ``f1_macro_ci95`` and ``f1_macro_stderr`` come from a
    seeded percentile bootstrap (None when fewer than 2 resamples are asked for); ``accuracy_ci95`` is
    the Wilson interval.
    """
    labels, probs = _check(labels, probs)
    n, k = probs.shape
    if len(label_names) != k:
        raise ValueError(f"label_names has {len(label_names)} entries but probs has {k} classes")
    preds = probs.argmax(axis=1)
    every_class = {"labels": list(range(k)), "zero_division": 0}

    def average(score: Callable[..., float], how: str) -> float:
        return float(score(labels, preds, average=how, zero_division=0))

    accuracy = float(accuracy_score(labels, preds))
    boot = _f1_macro_bootstrap(labels, preds, bootstrap_samples, seed)
    report = classification_report(labels, preds, target_names=list(label_names), output_dict=True, **every_class)
    return {
        "num_samples": n,
        "accuracy": accuracy,
        "accuracy_stderr": math.sqrt(accuracy * (1 - accuracy) / n),
        "accuracy_ci95": interval(binomtest(int((labels == preds).sum()), n).proportion_ci(method="wilson")),
        "f1_macro": average(f1_score, "macro"),
        "f1_macro_stderr": None if boot is None else float(boot.standard_error),
        "f1_macro_ci95": None if boot is None else interval(boot.confidence_interval),
        "f1_micro": average(f1_score, "micro"),
        "f1_weighted": average(f1_score, "weighted"),
        "precision_macro": average(precision_score, "macro"),
        "recall_macro": average(recall_score, "macro"),
        "labels_averaged": [label_names[i] for i in np.union1d(labels, preds)],
        "top1_accuracy": _top_k_accuracy(labels, probs, 1),
        "top2_accuracy": _top_k_accuracy(labels, probs, 2),
        "per_class": _plain(report),  # older sklearn put numpy scalars (int64 support) here
        "confusion_matrix": {
            "labels": list(label_names),
            "matrix": confusion_matrix(labels, preds, labels=every_class["labels"]).tolist(),
        },
        "threshold_sweep": threshold_sweep(labels, probs),
        "max_prob_distribution": max_prob_distribution(probs),
    }
