"""The inverter: regress the generator latent z of each image."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genrep.train.data import DatasetInfo
from genrep.train.objectives.base import OBJECTIVES, Objective


@OBJECTIVES.register("inverter")
class Inverter(Objective):
    """Regress each image's own latent z with MSE (Sec. 3.4); plus class cross-entropy (App. C.2.3).

    No Tx by default: directions of z encode shifts and colors, so z is not invariant to them.
    """

    needs_latents = True
    default_augment = False
    default_views = 1

    def __init__(self, feature_dim: int, info: DatasetInfo) -> None:
        super().__init__(feature_dim, info)
        self.head = nn.Linear(feature_dim, info.z_dim)
        self.class_head = nn.Linear(feature_dim, info.num_classes) if info.num_classes else None

    @classmethod
    def uses_labels(cls, info: DatasetInfo) -> bool:
        return info.num_classes > 0

    def forward(
        self, features: torch.Tensor, targets: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        target = targets["latents"].flatten(0, 1).float()
        latent_loss = F.mse_loss(self.head(features).float(), target)
        metrics = {"latent_mse": latent_loss.detach()}
        loss = latent_loss
        if self.class_head is not None:
            labels = targets["label"].long().repeat_interleave(targets["views"])
            logits = self.class_head(features).float()
            class_loss = F.cross_entropy(logits, labels)
            metrics.update(
                class_ce=class_loss.detach(), accuracy=(logits.argmax(1) == labels).float().mean()
            )
            loss = loss + class_loss
        return loss, metrics
