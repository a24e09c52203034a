"""The statistics behind comparisons of runs: spread over seeds, and tests of whether two runs differ.

Every test answers a ``Comparison``: a difference, its 95% interval and, where the test has one, a
p-value. scipy is imported inside the functions that need it, so a comparison table without tests
loads numpy only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LEVEL = 0.95  # confidence of every interval; a p-value below 1 - LEVEL is significant


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing a with b."""

    difference: float  # a - b
    ci95: list[float]  # [low, high] of the difference
    p_value: float | None = None  # None for bootstrap intervals, which have none

    @property
    def significant(self) -> bool:
        """p < 0.05 when the test has a p-value, else the interval excludes 0."""
        if self.p_value is not None:
            return self.p_value < 1 - LEVEL
        return not self.ci95[0] <= 0 <= self.ci95[1]


def interval(ci: Any) -> list[float]:
    """scipy's ConfidenceInterval as a JSON-ready [low, high]."""
    return [float(ci.low), float(ci.high)]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1); the deviation is None for a single value."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None


def paired_bootstrap(data: Sequence[np.ndarray], statistic: Callable[..., Any], seed: int, n_resamples: int) -> Any:
    """scipy's seeded percentile bootstrap, resampling the rows of all arrays in data together.

    statistic gets the resampled arrays (resamples along the leading axis, rows along the last) and
    answers one value per resample.
    """
    from scipy.stats import bootstrap

    return bootstrap(
        tuple(data), lambda *arrays, axis: statistic(*arrays), paired=True, vectorized=True,
        n_resamples=n_resamples, confidence_level=LEVEL, method="percentile", rng=np.random.default_rng(seed),
    )  # fmt: skip


def welch(a: Sequence[float], b: Sequence[float]) -> Comparison | None:
    """Welch's t-test of mean(a) - mean(b); None with fewer than 2 values a side, or when neither side
    varies (the test is then undefined)."""
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return None
    from scipy.stats import ttest_ind

    with warnings.catch_warnings():
        # one side that does not vary (the same accuracy from every seed) trips scipy's precision-loss check
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        result = ttest_ind(a, b, equal_var=False)
    return Comparison(float(np.mean(a) - np.mean(b)), interval(result.confidence_interval(LEVEL)), float(result.pvalue))


def mcnemar(labels: Any, preds_a: Any, preds_b: Any, seed: int = 0, n_resamples: int = 1000) -> Comparison:
    """Exact McNemar test of accuracy(a) - accuracy(b) on the same rows.

    Only discordant rows carry information: under "equally accurate", a-right-b-wrong and a-wrong-b-right
    are equally likely, so their count is binomial(discordant, 1/2). The interval is a paired bootstrap.
    """
    from scipy.stats import binomtest

    labels = np.asarray(labels)
    right_a, right_b = np.asarray(preds_a) == labels, np.asarray(preds_b) == labels
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    p_value = binomtest(only_b, only_a + only_b).pvalue if only_a + only_b else 1.0
    gain = right_a.astype(float) - right_b  # per row: +1 only a right, -1 only b right
    boot = paired_bootstrap([gain], lambda d: d.mean(axis=-1), seed, n_resamples)
    return Comparison(float(gain.mean()), interval(boot.confidence_interval), float(p_value))


def paired_f1_difference(labels: Any, preds_a: Any, preds_b: Any, seed: int = 0, n_resamples: int = 1000) -> Comparison:
    """macro-F1(a) - macro-F1(b) on the same rows, with a paired bootstrap interval (no p-value)."""
    from harness.metrics import macro_f1  # loads scikit-learn: only when a test needs it

    def difference(true: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return macro_f1(true, a) - macro_f1(true, b)

    data = [np.asarray(array) for array in (labels, preds_a, preds_b)]
    boot = paired_bootstrap(data, difference, seed, n_resamples)
    return Comparison(float(difference(*data)), interval(boot.confidence_interval))


def cohen_kappa(a: Any, b: Any) -> float | None:
    """Cohen's kappa of two labelings of the same rows: their agreement beyond what their class frequencies give
    by chance, (observed - expected) / (1 - expected), as scikit-learn's cohen_kappa_score (unweighted) computes
    it; None where it is undefined (both use one and the same class: scikit-learn answers nan)."""
    a, b = np.asarray(a), np.asarray(b)
    _, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
    codes_a, codes_b = codes[: len(a)], codes[len(a) :]
    observed = float(np.mean(codes_a == codes_b))
    size = int(codes.max()) + 1
    expected = float(np.bincount(codes_a, minlength=size) @ np.bincount(codes_b, minlength=size)) / len(a) ** 2
    return None if expected == 1 else (observed - expected) / (1 - expected)
