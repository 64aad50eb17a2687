"""Protocol cores on feature arrays whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from genrep.errors import DataError, UsageError
from genrep.evaluate.protocols import PROTOCOLS
from genrep.evaluate.protocols.base import topk_accuracy
from genrep.evaluate.protocols.knn import knn_scores
from genrep.evaluate.protocols.linear import linear_probe_on_features
from genrep.evaluate.protocols.voc07 import voc07_average_precision, voc07_classification
from genrep.registry import RegistryError


def separable(
    classes: int = 8, per_class: int = 40, dim: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated clusters: class means on scaled one-hot axes, small isotropic noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    means = np.eye(classes, dim) * 4.0
    return (means[labels] + rng.normal(0, 0.3, (len(labels), dim))).astype(np.float32), labels


def test_topk_accuracy_counts_hits_and_omits_top5_for_few_classes():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    assert topk_accuracy(scores, np.array([0, 1, 0])) == pytest.approx({"top1": 200 / 3})
    many = np.tile(np.arange(10.0), (2, 1))  # class 9 ranked first, class 4 sixth
    assert topk_accuracy(many, np.array([5, 4])) == pytest.approx({"top1": 0.0, "top5": 50.0})


def test_linear_probe_reaches_100_percent_on_separable_features():
    train_x, train_y = separable(seed=0)
    test_x, test_y = separable(per_class=10, seed=1)
    metrics = linear_probe_on_features(
        train_x, train_y, test_x, test_y, 8, epochs=10, lr=0.3, batch_size=64
    )
    assert metrics == {"top1": 100.0, "top5": 100.0}


def test_linear_probe_on_random_labels_stays_near_chance():
    train_x, _ = separable(seed=0)
    test_x, _ = separable(per_class=40, seed=1)
    rng = np.random.default_rng(0)
    metrics = linear_probe_on_features(
        train_x,
        rng.integers(0, 8, len(train_x)),
        test_x,
        rng.integers(0, 8, len(test_x)),
        8,
        epochs=10,
        lr=0.3,
    )
    assert metrics["top1"] < 25.0  # chance is 12.5%


def test_linear_probe_reports_divergence_instead_of_nan_scores():
    train_x, train_y = separable()
    with pytest.raises(UsageError, match="lower --lr"):
        linear_probe_on_features(train_x * 1e30, train_y, train_x, train_y, 8, epochs=2, lr=1e10)


def test_knn_finds_duplicated_points_and_separable_clusters():
    train_x, train_y = separable(per_class=30)
    scores = knn_scores(train_x, train_y, train_x.copy(), 8, k=200, temperature=0.07)
    assert topk_accuracy(scores, train_y)["top1"] == 100.0
    test_x, test_y = separable(per_class=10, seed=3)
    assert topk_accuracy(knn_scores(train_x, train_y, test_x, 8), test_y)["top1"] == 100.0


def test_knn_weights_votes_by_exp_of_similarity_over_temperature():
    # Unit vectors at known angles to the query (1, 0): similarities 1.0, 0.8, 0.6 and 0.0.
    train = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    labels = np.array([0, 1, 1, 2])
    scores = knn_scores(
        train, labels, np.array([[2.0, 0.0]], dtype=np.float32), 3, k=3, temperature=0.5
    )[0]
    expected = np.array([np.exp(1.0 / 0.5), np.exp(0.8 / 0.5) + np.exp(0.6 / 0.5), 0.0])
    np.testing.assert_allclose(scores / scores.sum(), expected / expected.sum(), rtol=1e-5)
    # Two close neighbours outvote one identical point at a high temperature, not at a low one.
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    assert knn_scores(train, labels, query, 3, k=3, temperature=0.1)[0].argmax() == 0
    assert knn_scores(train, labels, query, 3, k=3, temperature=10.0)[0].argmax() == 1


def test_knn_clamps_k_to_the_training_set():
    train_x, train_y = separable(classes=2, per_class=3)
    assert knn_scores(train_x, train_y, train_x, 2, k=200).shape == (6, 2)


def test_voc07_average_precision_is_the_11_point_interpolation():
    assert voc07_average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0
    # Ranked: positive, negative, positive -> precision 1 up to recall 0.5, then 2/3 at recall 1.
    ap = voc07_average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1]))
    assert ap == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)


def test_voc07_average_precision_adds_no_point_at_recall_0():
    """The devkit takes precision at the ranks only: when the top image is a negative, no recall
    level reaches precision 1 (scikit-learn's curve adds precision 1 at recall 0, which gave
    (1 + 10 x 0.5) / 11 here)."""
    scores, positives = np.array([0.9, 0.8, 0.3, 0.1]), np.array([0, 1, 0, 0])
    assert voc07_average_precision(scores, positives) == 0.5
    # negative, positive, negative, positive: precision 1/2 up to recall 0.5, then 1/2 at recall 1
    assert voc07_average_precision(np.array([4.0, 3, 2, 1]), np.array([0, 1, 0, 1])) == 0.5
    # ties keep the given order, as the devkit's stable sort does
    assert voc07_average_precision(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5
    assert voc07_average_precision(np.array([1.0, 1.0]), np.array([1, 0])) == 1.0


def multilabel(n: int, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's feature is the sum of its classes' axes plus noise, so every class is separable."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, classes)) < 0.4).astype(np.int8)
    targets[np.arange(n), rng.integers(0, classes, n)] = 1  # at least one class each, as in VOC
    features = targets.astype(np.float32) @ np.eye(classes, 16, dtype=np.float32) * 3 + rng.normal(
        0, 0.1, (n, 16)
    )
    return features.astype(np.float32), targets


def test_voc07_map_is_100_on_separable_features():
    train_x, train_y = multilabel(60, seed=0)
    test_x, test_y = multilabel(30, seed=1)
    metrics, rows = voc07_classification(train_x, train_y, test_x, test_y, ["a", "b", "c", "d"])
    assert metrics == {"mAP": 100.0, "mAP_area": 100.0}
    assert [row["class"] for row in rows] == ["a", "b", "c", "d"]
    assert all(row["C"] in (0.001, 0.01, 0.1, 1.0, 10.0, 100.0) for row in rows)
    logistic, _ = voc07_classification(
        train_x, train_y, test_x, test_y, list("abcd"), classifier="logistic", costs=[1.0]
    )
    assert logistic["mAP"] == 100.0


def test_voc07_leaves_difficult_images_out_of_their_class():
    train_x, train_y = multilabel(60, seed=0)
    test_x, test_y = multilabel(30, seed=1)
    # The test image least like class 0, labelled "difficult" for class 0, must not count for it...
    negatives = np.flatnonzero(test_y[:, 0] == 0)
    unlike = negatives[np.argmin(test_x[negatives, 0])]
    test_y[unlike, 0] = -1
    metrics, _ = voc07_classification(train_x, train_y, test_x, test_y, list("abcd"))
    assert metrics["mAP"] == 100.0
    # ...whereas as a positive it would be ranked last and lower the AP.
    test_y[unlike, 0] = 1
    worse, rows = voc07_classification(train_x, train_y, test_x, test_y, list("abcd"))
    assert rows[0]["AP"] < 100.0 and [row["AP"] for row in rows[1:]] == [100.0] * 3


def test_voc07_needs_enough_positives_for_cross_validation():
    train_x, train_y = multilabel(20)
    train_y[:, 2] = 0
    train_y[:2, 2] = 1
    with pytest.raises(DataError, match="class c has 2 positive"):
        voc07_classification(train_x, train_y, train_x, train_y, list("abcd"))


def test_protocol_registry_and_settings():
    assert PROTOCOLS.names() == ["knn", "linear", "voc07"]
    cars, other = type("Cars", (), {"linear_epochs": 100})(), type("D", (), {"linear_epochs": 60})()
    linear = PROTOCOLS.build("linear", encoder_data="real")
    assert linear.name == "linear"
    assert linear.settings(cars)["lr"] == 0.3 and linear.settings(cars)["epochs"] == 100
    assert PROTOCOLS.build("linear", lr=1.5).settings(other)["lr"] == 1.5
    assert PROTOCOLS.build("linear", lr=None).settings(other)["lr"] == 2.0  # None: the default
    with pytest.raises(UsageError, match="--classifier must be one of svm, logistic"):
        PROTOCOLS.build("voc07", classifier="forest")


def test_a_protocol_refuses_settings_it_does_not_take_and_names_those_it_does():
    assert set(PROTOCOLS.options("knn")) == {"k", "temperature"}
    with pytest.raises(RegistryError, match="protocol 'knn' does not take 'lr'; it takes: 'k'"):
        PROTOCOLS.build("knn", lr=0.1)
