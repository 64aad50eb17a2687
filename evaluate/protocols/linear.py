"""`linear`: a linear classifier trained on frozen features (the paper's main evaluation)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from genrep.errors import UsageError
from genrep.evaluate.datasets import ProbeDataset
from genrep.evaluate.features import FrozenFeatures, encode_batches
from genrep.evaluate.protocols.base import PROTOCOLS, Protocol, topk_accuracy


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
                raise UsageError(
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


@PROTOCOLS.register("linear")
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
        crop_scale: tuple[float, ...] | None = None,
    ) -> None:
        if encoder_data not in self.LR_BY_ENCODER_DATA:
            raise UsageError(f"--encoder-data must be one of {', '.join(self.LR_BY_ENCODER_DATA)}")
        if crop_scale is not None:
            if not (len(crop_scale) == 2 and 0 < crop_scale[0] <= crop_scale[1] <= 1):
                raise UsageError(
                    f"--crop-scale takes MIN,MAX with 0 < MIN <= MAX <= 1, got {crop_scale}"
                )
            if cached:
                raise UsageError("--crop-scale does not apply to --cached (no crops); drop one")
        self.lr, self.encoder_data, self.epochs = lr, encoder_data, epochs
        self.batch_size, self.momentum, self.weight_decay = batch_size, momentum, weight_decay
        self.cached, self.seed = cached, seed
        self.crop_scale = cast(tuple[float, float] | None, crop_scale)

    @property
    def trains_on_crops(self) -> bool:
        return not self.cached

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
                inputs.autocast_dtype,
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
