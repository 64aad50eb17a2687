"""The encoder F: a torchvision ResNet whose `fc` is an identity, plus the objective's head.

Keeping the backbone a plain torchvision model makes `backbone.pth` loadable by
`torchvision.models.<arch>()` with `fc = torch.nn.Identity()` and strict=True, for probing,
detection fine-tuning or any other downstream use.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn

from genrep.train.objectives import Objective


class ArchError(ValueError):
    """An --arch that is not a torchvision ResNet."""


def resnet_names() -> list[str]:
    """torchvision's ResNet family (resnet*, resnext*, wide_resnet*)."""
    return sorted(
        name
        for name in torchvision.models.list_models(module=torchvision.models)
        if name.startswith(("resnet", "resnext", "wide_resnet"))
    )


def build_backbone(arch: str) -> nn.Module:
    """A randomly initialised torchvision ResNet with `fc = Identity` (outputs pooled features)."""
    names = resnet_names()
    if arch not in names:
        raise ArchError(f"unknown --arch {arch!r}; choose a torchvision ResNet: {', '.join(names)}")
    model = torchvision.models.get_model(arch, weights=None)
    model.feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model


def backbone_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state dict on CPU in standard memory layout (as `backbone.pth` holds it)."""
    return {key: value.detach().cpu().contiguous() for key, value in backbone.state_dict().items()}


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
