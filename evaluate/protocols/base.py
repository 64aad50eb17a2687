"""The interface of a probe protocol: how frozen features are turned into one number of the paper's
tables, and the metric helpers protocols share. All metrics are percentages."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from genrep.errors import UsageError
from genrep.evaluate.datasets import ProbeDataset
from genrep.evaluate.features import FrozenFeatures
from genrep.registry import Registry

PROTOCOLS: Registry[type[Protocol]] = Registry("protocol", packages=["genrep.evaluate.protocols"])


class Protocol(ABC):
    """A way of scoring frozen features; `settings()` is what the report records.

    A protocol takes its settings as keyword arguments of `__init__` (the flags of the same names);
    `PROTOCOLS.build(name, **settings)` refuses settings it does not take. Its core is a function on
    feature arrays, so that it can be checked on features with a known answer.
    """

    name: ClassVar[str]
    task: ClassVar[str] = "multiclass"  # the dataset task it accepts
    primary_metric: ClassVar[str]
    #: encoder input side and evaluation crop fraction of the protocol's features when no flag
    #: sets them (None: the encoder's own training input size, and 0.875)
    input_size: ClassVar[int | None] = None
    crop_fraction: ClassVar[float | None] = None
    #: area range of the random-resized crops it trains on, when set by its flag (None: the
    #: encoder's Tx recipe's, or the default); only a protocol that takes `crop_scale` sets it
    crop_scale: tuple[float, float] | None = None

    @property
    def trains_on_crops(self) -> bool:
        """Whether it trains on random-resized crops, so that their scale matters (and is logged)."""
        return False

    def check_dataset(self, dataset: ProbeDataset) -> None:
        if dataset.task != self.task:
            suggestion = "voc07" if dataset.task == "multilabel" else "linear or knn"
            raise UsageError(
                f"protocol {self.name} needs a {self.task} dataset but {dataset.name} is {dataset.task}; "
                f"use --protocol {suggestion}"
            )

    @abstractmethod
    def settings(self, dataset: ProbeDataset) -> dict[str, Any]:
        """Every setting the result depends on, with defaults resolved for `dataset`."""

    @abstractmethod
    def run(self, inputs: FrozenFeatures) -> tuple[dict[str, float], dict[str, Any]]:
        """(metrics in percent, per-class or other details for the report)."""


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


def l2_normalize(features: np.ndarray) -> np.ndarray:
    features = np.ascontiguousarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
