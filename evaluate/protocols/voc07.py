"""`voc07`: Pascal VOC2007 classification, one linear classifier per class, VOC07 11-point mAP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from genrep.errors import DataError, UsageError
from genrep.evaluate.datasets import ProbeDataset
from genrep.evaluate.features import FrozenFeatures
from genrep.evaluate.protocols.base import PROTOCOLS, Protocol, l2_normalize


def voc07_average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """The VOC2007 devkit's 11-point interpolated AP (VOCevalcls): images ranked by decreasing
    score (ties in their given order), precision and recall at every rank, and the mean over
    recall r in {0, .1, ..., 1} of the best precision at recall >= r (0 where none reaches r).

    Unlike scikit-learn's precision_recall_curve, no point of precision 1 at recall 0 is added: a
    ranking whose top image is a negative never gets precision 1.
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(positives, dtype=bool)[order]
    true_positives = np.cumsum(hits)
    precision = true_positives / np.arange(1, len(hits) + 1)
    recall = true_positives / max(int(hits.sum()), 1)
    return float(
        np.mean(
            [
                precision[recall >= r].max() if (recall >= r).any() else 0.0
                for r in np.linspace(0, 1, 11)
            ]
        )
    )


CLASSIFIERS = ("svm", "logistic")


def make_classifier(kind: str, cost: float) -> Any:
    """A binary linear classifier with regularization strength 1/cost: LinearSVC or LogisticRegression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    return {"svm": LinearSVC, "logistic": LogisticRegression}[kind](C=cost, max_iter=10000)


DEFAULT_COSTS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


def _fit_one_class(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    classifier: str,
    costs: Sequence[float],
    folds: int,
    seed: int,
) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    cv_ap = [
        cross_val_score(
            make_classifier(classifier, c), train_x, train_y, cv=split, scoring="average_precision"
        ).mean()
        for c in costs
    ]
    best = costs[int(np.argmax(cv_ap))]  # ties go to the smallest C (strongest regularization)
    scores = make_classifier(classifier, best).fit(train_x, train_y).decision_function(test_x)
    return {
        "class": name,
        "C": best,
        "cv_AP": 100.0 * float(max(cv_ap)),
        "AP": 100.0 * voc07_average_precision(scores, test_y),
        "AP_area": 100.0 * float(average_precision_score(test_y, scores)),
    }


def voc07_classification(
    train_features: np.ndarray,
    train_targets: np.ndarray,
    test_features: np.ndarray,
    test_targets: np.ndarray,
    class_names: Sequence[str],
    *,
    classifier: str = "svm",
    costs: Sequence[float] = DEFAULT_COSTS,
    folds: int = 3,
    seed: int = 0,
    jobs: int = 1,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """One binary classifier per class on L2-normalized features, C chosen by `folds`-fold CV AP on
    the training split; images whose only objects of a class are difficult (-1) are left out of that
    class. Returns ({"mAP": 11-point VOC07 mAP, "mAP_area": area under the PR curve}, per-class rows)."""
    from joblib import Parallel, delayed

    if classifier not in CLASSIFIERS:
        raise UsageError(f"--classifier must be one of {', '.join(CLASSIFIERS)}")
    train_x, test_x = l2_normalize(train_features), l2_normalize(test_features)
    jobs_args = []
    for c, name in enumerate(class_names):
        train_keep, test_keep = train_targets[:, c] != -1, test_targets[:, c] != -1
        train_y, test_y = train_targets[train_keep, c] == 1, test_targets[test_keep, c] == 1
        if min(train_y.sum(), (~train_y).sum()) < folds:
            raise DataError(
                f"class {name} has {int(train_y.sum())} positive and {int((~train_y).sum())} negative "
                f"training images; {folds}-fold cross-validation needs at least {folds} of each"
            )
        if not test_y.any():
            raise DataError(
                f"class {name} has no positive (non-difficult) test image, so its AP is undefined"
            )
        jobs_args.append((name, train_x[train_keep], train_y, test_x[test_keep], test_y))
    rows = Parallel(n_jobs=jobs)(
        delayed(_fit_one_class)(*args, classifier, tuple(sorted(costs)), folds, seed)
        for args in jobs_args
    )
    metrics = {
        "mAP": float(np.mean([r["AP"] for r in rows])),
        "mAP_area": float(np.mean([r["AP_area"] for r in rows])),
    }
    return metrics, rows


@PROTOCOLS.register("voc07")
class VOC07Protocol(Protocol):
    """Pascal VOC2007 classification: per-class linear SVM (or logistic regression) on frozen features."""

    task = "multilabel"
    primary_metric = "mAP"
    # The released transfer code's features: Resize 224, CenterCrop 224 (0.875 of its 256 px).
    input_size = 224
    crop_fraction = 1.0

    def __init__(
        self,
        classifier: str = "svm",
        costs: Sequence[float] = DEFAULT_COSTS,
        folds: int = 3,
        seed: int = 0,
        jobs: int = 1,
    ) -> None:
        if classifier not in CLASSIFIERS:
            raise UsageError(f"--classifier must be one of {', '.join(CLASSIFIERS)}")
        if folds < 2 or not costs or min(costs) <= 0:
            raise UsageError("--folds must be at least 2 and --costs a list of positive numbers")
        self.classifier, self.costs, self.folds = classifier, tuple(costs), folds
        self.seed, self.jobs = seed, jobs

    def settings(self, dataset: ProbeDataset) -> dict[str, Any]:
        return {
            "classifier": self.classifier,
            "costs": sorted(self.costs),
            "folds": self.folds,
            "cv_metric": "average precision",
            "features": "L2-normalized",
            "difficult": "excluded per class",
            "mAP": "VOC2007 11-point interpolated AP (mAP_area: area under the PR curve)",
            "seed": self.seed,
        }

    def run(self, inputs: FrozenFeatures) -> tuple[dict[str, float], dict[str, Any]]:
        dataset = inputs.dataset
        fit, evaluate = dataset.splits
        metrics, rows = voc07_classification(
            inputs.eval_features(fit),
            dataset.targets[fit],
            inputs.eval_features(evaluate),
            dataset.targets[evaluate],
            dataset.classes,
            classifier=self.classifier,
            costs=self.costs,
            folds=self.folds,
            seed=self.seed,
            jobs=self.jobs,
        )
        return metrics, {"per_class": rows}
