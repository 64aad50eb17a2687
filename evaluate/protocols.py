"""Probe protocols: how frozen features are turned into one number of the paper's tables.

Each protocol is a registered class whose constructor takes its settings (the CLI passes the flags
of the same names); its core is a function on feature arrays (`linear_probe_on_features`,
`knn_scores`, `voc07_classification`) so that it can be checked on features with a known answer.
All metrics are percentages.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from genrep.evaluate.datasets import ProbeDataset
from genrep.evaluate.encoder import encode_batches
from genrep.evaluate.features import FrozenFeatures
from genrep.registry import Registry

PROTOCOLS: Registry[type[Protocol]] = Registry("protocol")


def register_protocol(name: str) -> Callable[[type], type]:
    """Register a protocol class under `name`, which becomes its `name` attribute."""

    def decorate(cls: type) -> type:
        cls.name = name
        return PROTOCOLS.register(name)(cls)

    return decorate


class ProtocolError(ValueError):
    """Settings or data a protocol cannot run with; the message says what to change."""


def topk_accuracy(
    scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy in percent; higher score = likelier."""
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels).long()
    ranked = scores.topk(min(5, scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    metrics = {"top1": 100.0 * hits[:, 0].double().mean().item()}
    if scores.shape[1] > 5:
        metrics["top5"] = 100.0 * hits.any(dim=1).double().mean().item()
    return metrics


class Protocol(ABC):
    """A way of scoring frozen features; `settings()` is what the report records."""

    name: ClassVar[str]
    task: ClassVar[str] = "multiclass"  # the dataset task it accepts
    primary_metric: ClassVar[str]

    @classmethod
    def option_names(cls) -> list[str]:
        """The CLI flags (by parameter name) this protocol takes."""
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def check_dataset(self, dataset: ProbeDataset) -> None:
        if dataset.task != self.task:
            suggestion = "voc07" if dataset.task == "multilabel" else "linear or knn"
            raise ProtocolError(
                f"protocol {self.name} needs a {self.task} dataset but {dataset.name} is {dataset.task}; "
                f"use --protocol {suggestion}"
            )

    @abstractmethod
    def settings(self, dataset: ProbeDataset) -> dict[str, Any]:
        """Every setting the result depends on, with defaults resolved for `dataset`."""

    @abstractmethod
    def run(self, inputs: FrozenFeatures) -> tuple[dict[str, float], dict[str, Any]]:
        """(metrics in percent, per-class or other details for the report)."""


# ---------------------------------------------------------------------------------------------- linear


def train_linear_classifier(
    epoch_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    feature_dim: int,
    num_classes: int,
    *,
    epochs: int,
    steps_per_epoch: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> nn.Linear:
    """SGD with a per-step cosine decay to 0, on (features, labels) batches from `epoch_batches(epoch)`."""
    torch.manual_seed(seed)
    classifier = nn.Linear(feature_dim, num_classes).to(device)
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.SGD(
        classifier.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, epochs * steps_per_epoch)
    )
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        for features, labels in epoch_batches(epoch):
            loss = loss_fn(classifier(features.to(device)), labels.to(device))
            if not torch.isfinite(loss):
                raise ProtocolError(
                    f"linear probe diverged (loss {loss.item()}) in epoch {epoch}; lower --lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return classifier.eval()


def classifier_scores(
    classifier: nn.Linear, features: np.ndarray, batch: int = 65536
) -> torch.Tensor:
    device = classifier.weight.device
    with torch.no_grad():
        return torch.cat(
            [
                classifier(torch.from_numpy(features[i : i + batch]).to(device)).cpu()
                for i in range(0, len(features), batch)
            ]
        )


def feature_batches(
    features: np.ndarray, labels: np.ndarray, batch_size: int, seed: int
) -> Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]:
    """Shuffled minibatches of cached features, a new order each epoch."""
    features_t, labels_t = (
        torch.from_numpy(np.ascontiguousarray(features)),
        torch.from_numpy(labels).long(),
    )

    def epoch_batches(epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(
            len(features_t), generator=torch.Generator().manual_seed(seed * 100003 + epoch)
        )
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            yield features_t[rows], labels_t[rows]

    return epoch_batches


def linear_probe_on_features(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Train on fixed features and return the final classifier's test top-1/top-5 (percent)."""
    classifier = train_linear_classifier(
        feature_batches(train_features, train_labels, batch_size, seed),
        train_features.shape[1],
        num_classes,
        epochs=epochs,
        steps_per_epoch=math.ceil(len(train_features) / batch_size),
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        device=device,
        seed=seed,
    )
    return topk_accuracy(classifier_scores(classifier, test_features), test_labels)


@register_protocol("linear")
class LinearProtocol(Protocol):
    """Linear classifier on frozen features (paper Sec. 4): SGD + momentum, cosine decay, final epoch.

    By default each epoch feeds random-resized-crop + flip images through the frozen encoder; with
    `cached` it trains on the cached center-crop features instead (one encoder pass, much faster).
    """

    primary_metric = "top1"
    LR_BY_ENCODER_DATA = {
        "generated": 2.0,
        "real": 0.3,
    }  # the paper's rates for IGM / real-data encoders

    def __init__(
        self,
        lr: float | None = None,
        encoder_data: str = "generated",
        epochs: int | None = None,
        batch_size: int = 256,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        cached: bool = False,
        seed: int = 0,
    ) -> None:
        if encoder_data not in self.LR_BY_ENCODER_DATA:
            raise ProtocolError(
                f"--encoder-data must be one of {', '.join(self.LR_BY_ENCODER_DATA)}"
            )
        self.lr, self.encoder_data, self.epochs = lr, encoder_data, epochs
        self.batch_size, self.momentum, self.weight_decay = batch_size, momentum, weight_decay
        self.cached, self.seed = cached, seed

    def settings(self, dataset: ProbeDataset) -> dict[str, Any]:
        return {
            "lr": self.lr if self.lr is not None else self.LR_BY_ENCODER_DATA[self.encoder_data],
            "encoder_data": self.encoder_data,
            "epochs": self.epochs if self.epochs is not None else dataset.linear_epochs,
            "batch_size": self.batch_size,
            "optimizer": "sgd",
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "schedule": "cosine",
            "train_input": "cached center-crop features"
            if self.cached
            else "random-resized-crop + flip",
            "reported_epoch": "final",
            "seed": self.seed,
        }

    def run(self, inputs: FrozenFeatures) -> tuple[dict[str, float], dict[str, Any]]:
        dataset, settings = inputs.dataset, self.settings(inputs.dataset)
        fit, evaluate = dataset.splits
        train_labels, num_classes = dataset.targets[fit], len(dataset.classes)
        hyper = {
            k: settings[k]
            for k in ("epochs", "lr", "batch_size", "momentum", "weight_decay", "seed")
        }
        if self.cached:
            metrics = linear_probe_on_features(
                inputs.eval_features(fit),
                train_labels,
                inputs.eval_features(evaluate),
                dataset.targets[evaluate],
                num_classes,
                device=inputs.device,
                **hyper,
            )
            return metrics, {}

        def augmented_batches(epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
            loader = inputs.loader(
                fit,
                inputs.preprocessing.train_transform(),
                self.batch_size,
                shuffle=True,
                seed=self.seed * 100003 + epoch,
            )
            yield from encode_batches(
                inputs.encoder.model,
                loader,
                inputs.device,
                len(train_labels),
                f"linear epoch {epoch + 1}",
            )

        classifier = train_linear_classifier(
            augmented_batches,
            inputs.encoder.feature_dim,
            num_classes,
            steps_per_epoch=math.ceil(len(train_labels) / self.batch_size),
            device=inputs.device,
            **{k: v for k, v in hyper.items() if k != "batch_size"},
        )
        scores = classifier_scores(classifier, inputs.eval_features(evaluate))
        return topk_accuracy(scores, dataset.targets[evaluate]), {}


# ---------------------------------------------------------------------------------------------- kNN


def l2_normalize(features: np.ndarray) -> np.ndarray:
    features = np.ascontiguousarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def knn_index(features: np.ndarray, use_gpu: bool = False, gpu_id: int = 0):
    """An exact inner-product faiss index over L2-normalized `features` (cosine similarity)."""
    import faiss

    index = faiss.IndexFlatIP(features.shape[1])
    if use_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu_id, index)
    index.add(features)
    return index


def weighted_votes(
    similarity: np.ndarray,
    neighbors: np.ndarray,
    train_labels: np.ndarray,
    num_classes: int,
    temperature: float,
) -> np.ndarray:
    """Class scores [Nq, C] from each query's neighbours (sorted most similar first): every neighbour
    votes for its class with weight exp(similarity / temperature), as in Wu et al. 2018."""
    similarity = torch.from_numpy(np.asarray(similarity, dtype=np.float32))
    # Shifting by each row's best similarity rescales its votes alike and keeps exp() finite.
    weights = torch.exp((similarity - similarity[:, :1]) / temperature)
    labels = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    votes = torch.zeros(len(similarity), num_classes, dtype=torch.float32)
    votes.scatter_add_(1, labels[torch.from_numpy(np.asarray(neighbors, dtype=np.int64))], weights)
    return votes.numpy()


def knn_scores(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    query_features: np.ndarray,
    num_classes: int,
    *,
    k: int = 200,
    temperature: float = 0.07,
    use_gpu: bool = False,
    gpu_id: int = 0,
    query_batch: int = 4096,
) -> np.ndarray:
    """Weighted kNN class scores [Nq, C] over the k most cosine-similar training points (exact search)."""
    k = min(k, len(train_features))
    index = knn_index(l2_normalize(train_features), use_gpu, gpu_id)
    queries = l2_normalize(query_features)
    scores = []
    for start in range(0, len(queries), query_batch):
        similarity, neighbors = index.search(queries[start : start + query_batch], k)
        scores.append(weighted_votes(similarity, neighbors, train_labels, num_classes, temperature))
    return np.concatenate(scores)


@register_protocol("knn")
class KNNProtocol(Protocol):
    """Temperature-weighted k-nearest-neighbour classification with faiss, on the GPU when there is one."""

    primary_metric = "top1"

    def __init__(self, k: int = 200, temperature: float = 0.07) -> None:
        if k < 1 or temperature <= 0:
            raise ProtocolError("--k must be at least 1 and --temperature positive")
        self.k, self.temperature = k, temperature

    def settings(self, dataset: ProbeDataset) -> dict[str, Any]:
        return {
            "k": self.k,
            "temperature": self.temperature,
            "metric": "cosine",
            "weighting": "exp(sim/T)",
        }

    def run(self, inputs: FrozenFeatures) -> tuple[dict[str, float], dict[str, Any]]:
        import faiss

        dataset = inputs.dataset
        fit, evaluate = dataset.splits
        use_gpu = inputs.device.type == "cuda" and faiss.get_num_gpus() > 0
        scores = knn_scores(
            inputs.eval_features(fit),
            dataset.targets[fit],
            inputs.eval_features(evaluate),
            len(dataset.classes),
            k=self.k,
            temperature=self.temperature,
            use_gpu=use_gpu,
            gpu_id=inputs.device.index or 0,
        )
        return topk_accuracy(scores, dataset.targets[evaluate]), {"faiss_gpu": use_gpu}


# ---------------------------------------------------------------------------------------------- VOC07


def voc07_average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """The VOC2007 devkit's 11-point interpolated AP: mean over recall r in {0, .1, ..., 1} of the best
    precision at recall >= r."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(positives, scores)
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
        raise ProtocolError(f"--classifier must be one of {', '.join(CLASSIFIERS)}")
    train_x, test_x = l2_normalize(train_features), l2_normalize(test_features)
    jobs_args = []
    for c, name in enumerate(class_names):
        train_keep, test_keep = train_targets[:, c] != -1, test_targets[:, c] != -1
        train_y, test_y = train_targets[train_keep, c] == 1, test_targets[test_keep, c] == 1
        if min(train_y.sum(), (~train_y).sum()) < folds:
            raise ProtocolError(
                f"class {name} has {int(train_y.sum())} positive and {int((~train_y).sum())} negative "
                f"training images; {folds}-fold cross-validation needs at least {folds} of each"
            )
        if not test_y.any():
            raise ProtocolError(
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


@register_protocol("voc07")
class VOC07Protocol(Protocol):
    """Pascal VOC2007 classification: per-class linear SVM (or logistic regression) on frozen features."""

    task = "multilabel"
    primary_metric = "mAP"

    def __init__(
        self,
        classifier: str = "svm",
        costs: Sequence[float] = DEFAULT_COSTS,
        folds: int = 3,
        seed: int = 0,
        jobs: int = 1,
    ) -> None:
        if classifier not in CLASSIFIERS:
            raise ProtocolError(f"--classifier must be one of {', '.join(CLASSIFIERS)}")
        if folds < 2 or not costs or min(costs) <= 0:
            raise ProtocolError("--folds must be at least 2 and --costs a list of positive numbers")
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
