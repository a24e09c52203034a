"""harness.metrics against sklearn called directly and against hand-computed values."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    top_k_accuracy_score,
)

from harness.metrics import (
    classification_metrics,
    macro_f1,
    max_prob_distribution,
    threshold_sweep,
    top_k_predictions,
)

NAMES5 = ["a", "b", "c", "d", "e"]

# 5 rows, 3 classes: rows 0, 1, 3 are right; row 2 (top 0.4) and row 4 (top 0.5) are wrong
TINY_PROBS = np.array(
    [
        [0.95, 0.03, 0.02],
        [0.2, 0.6, 0.2],
        [0.4, 0.35, 0.25],
        [0.1, 0.3, 0.6],
        [0.3, 0.5, 0.2],
    ]
)
TINY_LABELS = np.array([0, 1, 1, 2, 0])


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1234)
    n, k = 500, 5
    logits = rng.normal(size=(n, k)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # about 60% of labels follow the model, the rest are random, so metrics sit mid-range
    labels = np.where(rng.random(n) < 0.6, probs.argmax(axis=1), rng.integers(0, k, size=n))
    return labels, probs


@pytest.fixture(scope="module")
def result(problem):
    labels, probs = problem
    return classification_metrics(labels, probs, NAMES5, bootstrap_samples=100, seed=7)


def test_scalars_match_sklearn(problem, result):
    labels, probs = problem
    preds = probs.argmax(axis=1)
    kw = {"zero_division": 0}  # scikit-learn's own label set: the classes present
    assert result["num_samples"] == 500
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert result["f1_macro"] == pytest.approx(f1_score(labels, preds, average="macro", **kw))
    assert result["f1_micro"] == pytest.approx(f1_score(labels, preds, average="micro", **kw))
    assert result["f1_weighted"] == pytest.approx(f1_score(labels, preds, average="weighted", **kw))
    assert result["precision_macro"] == pytest.approx(precision_score(labels, preds, average="macro", **kw))
    assert result["recall_macro"] == pytest.approx(recall_score(labels, preds, average="macro", **kw))
    assert result["top1_accuracy"] == pytest.approx(top_k_accuracy_score(labels, probs, k=1, labels=range(5)))
    assert result["top2_accuracy"] == pytest.approx(top_k_accuracy_score(labels, probs, k=2, labels=range(5)))
    assert result["top1_accuracy"] == pytest.approx(result["accuracy"])
    assert 0.3 < result["accuracy"] < 0.9  # the fixture is neither trivial nor hopeless


def test_confusion_matrix_and_per_class_match_sklearn(problem, result):
    labels, probs = problem
    preds = probs.argmax(axis=1)
    assert result["confusion_matrix"]["labels"] == NAMES5
    assert result["confusion_matrix"]["matrix"] == confusion_matrix(labels, preds, labels=range(5)).tolist()
    for i, name in enumerate(NAMES5):
        row = result["per_class"][name]
        assert row["support"] == np.sum(labels == i)
        assert row["f1-score"] == pytest.approx(f1_score(labels == i, preds == i, zero_division=0))


def test_accuracy_stderr_is_binomial(result):
    p = result["accuracy"]
    assert result["accuracy_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / 500))


def test_f1_macro_stderr_is_seeded_and_small(problem, result):
    labels, probs = problem
    again = classification_metrics(labels, probs, NAMES5, bootstrap_samples=100, seed=7)
    other = classification_metrics(labels, probs, NAMES5, bootstrap_samples=100, seed=8)
    assert again["f1_macro_stderr"] == result["f1_macro_stderr"]
    assert other["f1_macro_stderr"] != result["f1_macro_stderr"]
    assert 0 < result["f1_macro_stderr"] < 0.1
    unbooted = classification_metrics(labels, probs, NAMES5, bootstrap_samples=0)
    assert unbooted["f1_macro_stderr"] is None and unbooted["f1_macro_ci95"] is None


def test_f1_macro_interval_is_scipys_bootstrap_of_sklearns_f1(problem, result):
    labels, probs = problem
    preds = probs.argmax(axis=1)
    direct = scipy.stats.bootstrap(
        (labels, preds), lambda true, pred: f1_score(true, pred, average="macro", zero_division=0),
        paired=True, vectorized=False, n_resamples=100, method="percentile", rng=np.random.default_rng(7),
    )  # fmt: skip
    ci = direct.confidence_interval
    assert result["f1_macro_ci95"] == pytest.approx([ci.low, ci.high])
    assert result["f1_macro_stderr"] == pytest.approx(direct.standard_error)
    assert ci.low < result["f1_macro"] < ci.high


def test_accuracy_interval_is_wilson(result):
    n, p = 500, result["accuracy"]
    z = NormalDist().inv_cdf(0.975)
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert result["accuracy_ci95"] == pytest.approx([centre - half, centre + half])


@pytest.mark.parametrize("batch", [(), (7,), (3, 4)])
def test_vectorised_macro_f1_matches_sklearn(batch):
    rng = np.random.default_rng(len(batch))
    labels = rng.integers(0, 6, size=(*batch, 40))
    preds = np.where(rng.random(labels.shape) < 0.5, labels, rng.integers(0, 8, size=labels.shape))  # 6, 7: never true
    scores = macro_f1(labels, preds)
    assert scores.shape == batch
    for index in np.ndindex(batch):
        assert scores[index] == pytest.approx(f1_score(labels[index], preds[index], average="macro", zero_division=0))


def test_result_is_plain_json(result):
    assert json.loads(json.dumps(result)) == result

    # np.float64 subclasses float and slips through json.dumps, so check exact types
    def leaves(value):
        if isinstance(value, dict):
            assert all(type(key) is str for key in value)
            return [leaf for item in value.values() for leaf in leaves(item)]
        if isinstance(value, list):
            return [leaf for item in value for leaf in leaves(item)]
        return [value]

    assert {type(leaf) for leaf in leaves(result)} <= {int, float, str, type(None)}


def test_threshold_sweep_by_hand():
    sweep = {row["threshold"]: row for row in threshold_sweep(TINY_LABELS, TINY_PROBS)}
    assert list(sweep) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    expected = {  # threshold: (covered, coverage, covered_accuracy, overall_accuracy)
        0.0: (5, 1.0, 0.6, 0.6),
        0.5: (4, 0.8, 0.75, 0.6),
        0.9: (1, 0.2, 1.0, 0.2),
    }
    for t, (covered, coverage, covered_acc, overall_acc) in expected.items():
        row = sweep[t]
        assert row["covered"] == covered
        assert row["coverage"] == pytest.approx(coverage)
        assert row["covered_accuracy"] == pytest.approx(covered_acc)
        assert row["overall_accuracy"] == pytest.approx(overall_acc)


def test_threshold_sweep_nothing_covered():
    (row,) = threshold_sweep(TINY_LABELS, TINY_PROBS, thresholds=(0.99,))
    assert row == {
        "threshold": 0.99,
        "covered": 0,
        "coverage": 0.0,
        "covered_accuracy": None,
        "overall_accuracy": 0.0,
    }


def test_absent_class_still_reported():
    # class "c" (id 2) is in neither labels nor predictions
    probs = TINY_PROBS[:, [0, 1, 2]].copy()
    probs[:, 2] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    labels = np.array([0, 1, 1, 0, 0])
    result = classification_metrics(labels, probs, ["a", "b", "c"], bootstrap_samples=10)
    assert result["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0.0}
    matrix = np.array(result["confusion_matrix"]["matrix"])
    assert matrix.shape == (3, 3)
    assert matrix[2].sum() == 0 and matrix[:, 2].sum() == 0
    # macro-F1 averages over the 2 classes present, not counting the absent one as 0
    preds = probs.argmax(axis=1)
    assert result["f1_macro"] == pytest.approx(f1_score(labels, preds, labels=[0, 1], average="macro"))
    assert result["labels_averaged"] == ["a", "b"]


def test_perfect_predictions_with_an_absent_class_score_one():
    labels = np.array([0, 2, 2, 0, 2, 0])  # class "b" absent from this split
    probs = np.eye(3)[labels] * 0.8 + 0.2 / 3
    result = classification_metrics(labels, probs, ["a", "b", "c"], bootstrap_samples=50)
    assert result["f1_macro"] == 1.0 == f1_score(labels, labels, average="macro")
    assert result["precision_macro"] == result["recall_macro"] == result["f1_weighted"] == 1.0
    assert result["labels_averaged"] == ["a", "c"]
    assert result["f1_macro_ci95"] == [1.0, 1.0] and result["f1_macro_stderr"] == 0.0


def test_averages_include_classes_only_predicted():
    labels = np.array([0, 0, 1, 1])
    probs = np.eye(3)[[0, 2, 1, 1]]  # class "c" is predicted once, never true
    result = classification_metrics(labels, probs, ["a", "b", "c"], bootstrap_samples=10)
    assert result["labels_averaged"] == ["a", "b", "c"]
    assert result["f1_macro"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # F1 a: 2*1/(2*1+0+1); b: 1; c: 0


def test_binary_top2_is_one():
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    result = classification_metrics(labels, probs, ["neg", "pos"], bootstrap_samples=10)
    assert result["top1_accuracy"] == pytest.approx(0.5)
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["top2_accuracy"] == 1.0


def test_max_prob_distribution_matches_numpy(problem):
    _, probs = problem
    top = probs.max(axis=1)
    stats = max_prob_distribution(probs)
    assert list(stats) == ["mean", "std", "min", "p10", "p25", "p50", "p75", "p90", "max"]
    assert stats["mean"] == pytest.approx(np.mean(top))
    assert stats["std"] == pytest.approx(np.std(top))
    assert stats["min"] == pytest.approx(np.min(top))
    assert stats["max"] == pytest.approx(np.max(top))
    for q in (10, 25, 50, 75, 90):
        assert stats[f"p{q}"] == pytest.approx(np.percentile(top, q))


def test_top_k_predictions_order_and_clipping():
    names = ["x", "y", "z"]
    top2 = top_k_predictions(TINY_PROBS[:2], names, 2)
    assert top2 == [[("x", 0.95), ("y", 0.03)], [("y", 0.6), ("x", 0.2)]]
    clipped = top_k_predictions(TINY_PROBS[:1], names, 10)
    assert clipped == [[("x", 0.95), ("y", 0.03), ("z", 0.02)]]
    assert all(isinstance(p, float) for row in clipped for _, p in row)


@pytest.mark.parametrize(
    ("labels", "probs", "names", "match"),
    [
        ([0, 0], [[1.0], [1.0]], ["a"], "at least 2 classes"),
        ([0, 1, 0], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "does not match"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "0..1"),
        ([0, -1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "0..1"),
        ([], np.zeros((0, 2)), ["a", "b"], "at least 1 sample"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b", "c"], "label_names"),
        ([0.0, 1.0], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "integers"),
        ([0, 1], [0.5, 0.5], ["a", "b"], "2-D"),
    ],
)
def test_bad_inputs_raise(labels, probs, names, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(np.asarray(labels), probs, names)
