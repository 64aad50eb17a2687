"""The trained network: the encoder F (`genrep.encoders`) and the objective's head as one module."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from genrep.train.objectives import Objective


class TrainModel(nn.Module):
    """Backbone + objective, so one DDP wrapper covers every trained parameter."""

    def __init__(self, backbone: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.backbone = backbone
        self.objective = objective

    def forward(
        self, images: torch.Tensor, targets: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.backbone(images)
        return self.objective(features, targets)
