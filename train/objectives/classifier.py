"""The classifier: softmax cross-entropy on the generator's classes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genrep.train.data import DatasetInfo
from genrep.train.objectives.base import OBJECTIVES, Objective


@OBJECTIVES.register("classifier", aliases=["ce"])
class Classifier(Objective):
    """Softmax cross-entropy on the generator's classes, with Tx and without Tz (App. C.2.3)."""

    needs_labels = True
    default_views = 1

    def __init__(self, feature_dim: int, info: DatasetInfo) -> None:
        super().__init__(feature_dim, info)
        self.head = nn.Linear(feature_dim, info.num_classes)

    def forward(
        self, features: torch.Tensor, targets: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = targets["label"].long().repeat_interleave(targets["views"])
        logits = self.head(features).float()
        loss = F.cross_entropy(logits, labels)
        return loss, {"accuracy": (logits.argmax(1) == labels).float().mean()}
