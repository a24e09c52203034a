"""harness.stats against hand-computed numbers and against scipy called directly."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import cohen_kappa_score, f1_score

from harness.stats import Comparison, cohen_kappa, mcnemar, mean_std, paired_f1_difference, welch


def test_mean_std_of_three_seeds_and_of_one():
    assert mean_std([100.0, 110.0, 120.0]) == (110.0, 10.0)
    assert mean_std([0.9]) == (0.9, None)


def test_welch_by_hand():
    a, b = [100.0, 110.0, 120.0], [90.0, 95.0, 100.0]
    # variances 100 and 25, 3 values each
    se = math.sqrt(100 / 3 + 25 / 3)
    df = (100 / 3 + 25 / 3) ** 2 / ((100 / 3) ** 2 / 2 + (25 / 3) ** 2 / 2)
    t = 15 / se
    result = welch(a, b)
    assert result.difference == 15.0
    assert result.p_value == pytest.approx(2 * scipy.stats.t.sf(t, df))
    margin = scipy.stats.t.ppf(0.975, df) * se
    assert result.ci95 == pytest.approx([15 - margin, 15 + margin])
    assert result.significant == (result.p_value < 0.05)


def test_welch_needs_two_values_a_side_and_some_variance():
    assert welch([1.0], [1.0, 2.0]) is None
    assert welch([1.0, 2.0], [3.0]) is None
    assert welch([0.9, 0.9], [0.9, 0.9]) is None
    assert welch([0.9, 0.9], [0.8, 0.85]) is not None


def predictions(only_a: int, only_b: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two prediction vectors with these counts of rows where only a, only b, both or neither
    is right, in shuffled order."""
    order = np.random.default_rng(0).permutation(only_a + only_b + both + neither)
    right_a = np.repeat([True, False, True, False], [only_a, only_b, both, neither])[order]
    right_b = np.repeat([False, True, True, False], [only_a, only_b, both, neither])[order]
    labels = np.arange(len(order)) % 3
    return labels, np.where(right_a, labels, (labels + 1) % 3), np.where(right_b, labels, (labels + 2) % 3)


def test_mcnemar_is_the_exact_binomial_test_of_discordant_pairs():
    labels, preds_a, preds_b = predictions(only_a=10, only_b=2, both=30, neither=8)
    result = mcnemar(labels, preds_a, preds_b, seed=3, n_resamples=500)
    assert result.p_value == pytest.approx(scipy.stats.binomtest(2, 12).pvalue)
    assert result.p_value == pytest.approx(2 * (1 + 12 + 66) / 2**12)  # two tails of binomial(12, 1/2) at <= 2
    assert result.difference == pytest.approx((10 - 2) / 50)
    direct = scipy.stats.bootstrap(
        (preds_a == labels, preds_b == labels), lambda a, b: np.mean(a) - np.mean(b), paired=True,
        vectorized=False, n_resamples=500, method="percentile", rng=np.random.default_rng(3),
    )  # fmt: skip
    assert result.ci95 == pytest.approx([direct.confidence_interval.low, direct.confidence_interval.high])
    assert result.significant


def test_mcnemar_without_discordant_pairs_finds_nothing():
    labels, preds_a, _ = predictions(0, 0, 5, 3)
    result = mcnemar(labels, preds_a, preds_a.copy())
    assert result == Comparison(0.0, [0.0, 0.0], 1.0)
    assert not result.significant


def test_paired_f1_difference_is_scipys_bootstrap_of_sklearns_f1():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, size=300)
    preds_a = np.where(rng.random(300) < 0.8, labels, rng.integers(0, 4, size=300))
    preds_b = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 4, size=300))

    def difference(true, a, b):
        return f1_score(true, a, average="macro") - f1_score(true, b, average="macro")

    result = paired_f1_difference(labels, preds_a, preds_b, seed=11, n_resamples=200)
    assert result.difference == pytest.approx(difference(labels, preds_a, preds_b))
    direct = scipy.stats.bootstrap((labels, preds_a, preds_b), difference, paired=True, vectorized=False,
                                   n_resamples=200, method="percentile", rng=np.random.default_rng(11))  # fmt: skip
    assert result.ci95 == pytest.approx([direct.confidence_interval.low, direct.confidence_interval.high])
    assert result.p_value is None
    assert result.significant == (result.ci95[0] > 0)  # a is right far more often


def test_significance_uses_the_p_value_else_the_interval():
    assert Comparison(0.1, [-0.2, 0.4], p_value=0.01).significant
    assert not Comparison(0.1, [0.05, 0.4], p_value=0.2).significant
    assert Comparison(0.1, [0.05, 0.4]).significant
    assert not Comparison(0.1, [-0.05, 0.4]).significant


def test_cohen_kappa_by_hand():
    # observed agreement 3/4; by chance (2·1 + 2·3) / 4² = 1/2; kappa (3/4 − 1/2) / (1 − 1/2)
    assert cohen_kappa([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.5)
    assert cohen_kappa([0, 1, 2, 0], [0, 1, 2, 0]) == 1.0


@pytest.mark.parametrize("seed, agree", [(1, 0.9), (2, 0.5), (3, 0.0)])
def test_cohen_kappa_is_sklearns(seed, agree):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, size=300)
    b = np.where(rng.random(300) < agree, a, rng.integers(0, 6, size=300))  # class 5: b's alone
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    words = np.array(["joy", "anger", "fear"])
    assert cohen_kappa(words[a % 3], words[b % 3]) == pytest.approx(cohen_kappa_score(words[a % 3], words[b % 3]))


def test_cohen_kappa_is_none_where_sklearn_answers_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that kappa is undefined
        assert math.isnan(cohen_kappa_score([2, 2, 2], [2, 2, 2]))
    assert cohen_kappa([2, 2, 2], [2, 2, 2]) is None
