"""The encoder F every stage shares: a torchvision ResNet whose `fc` is an identity.

Keeping the backbone a plain torchvision model makes `backbone.pth` loadable by
`torchvision.models.<arch>()` with `fc = torch.nn.Identity()` and strict=True, for probing,
detection fine-tuning or any other downstream use. Images reach it normalised with the ImageNet
statistics, as in the paper's released code, for generated and real images alike.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from genrep.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resnet_names() -> list[str]:
    """torchvision's ResNet family (resnet*, resnext*, wide_resnet*)."""
    return sorted(
        name
        for name in torchvision.models.list_models(module=torchvision.models)
        if name.startswith(("resnet", "resnext", "wide_resnet"))
    )


def build_backbone(arch: str) -> nn.Module:
    """A randomly initialised torchvision ResNet with `fc = Identity` (outputs pooled features);
    `feature_dim` is the width of those features."""
    names = resnet_names()
    if arch not in names:
        raise UsageError(
            f"unknown --arch {arch!r}; choose a torchvision ResNet: {', '.join(names)}"
        )
    model = torchvision.models.get_model(arch, weights=None)
    model.feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model


def backbone_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state dict on CPU in standard memory layout (as `backbone.pth` holds it)."""
    return {key: value.detach().cpu().contiguous() for key, value in backbone.state_dict().items()}


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [..., 3, H, W] -> float, scaled to [0, 1] and standardised per channel."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1) * 255
    return (images.float() - mean) / std
