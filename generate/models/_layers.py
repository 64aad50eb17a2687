"""Building blocks shared by the pretrained generators: strict checkpoint loading, option parsing,
data files shipped with the package, and the SA-GAN self-attention block of BigGAN and BigBiGAN."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from genrep.errors import UsageError, WeightsError
from genrep.safeload import state_dict_mismatch


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """`module.load_state_dict(state, strict=True)` with a one-line error naming what differs.

    The tensors are assigned (float32 on CPU), so `module` may be built on the meta device
    without paying for a random initialisation that the weights replace.
    """
    problem = state_dict_mismatch(module.state_dict(), state)
    if problem:
        raise WeightsError(f"{source} does not fit this network ({problem})")
    state = {
        k: v.to("cpu", torch.float32) if v.is_floating_point() else v.to("cpu")
        for k, v in state.items()
    }
    module.load_state_dict(state, strict=True, assign=True)


def as_float(name: str, value: Any) -> float:
    """A model option given as a string (from --model-option KEY=VALUE) as a float."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"model option {name}={value!r} is not a number") from None


def read_json(filename: str) -> Any:
    """A JSON data file shipped in this package."""
    return json.loads(resources.files(__package__).joinpath(filename).read_text())


def imagenet100_classes() -> list[int]:
    """ImageNet class ids of the ImageNet-100 subset of Tian et al. (CMC), from imagenet100.txt."""
    text = resources.files(__package__).joinpath("imagenet100.txt").read_text()
    return [
        int(line.split()[0])
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    ]


class SelfAttention(nn.Module):
    """The non-local block of SA-GAN as BigGAN's released code computes it (pooled keys/values)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.phi = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.g = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.o = nn.Conv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        theta = self.theta(x).flatten(2)  # B, C/8, HW
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # B, C/8, HW/4
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # B, C/2, HW/4
        attention = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # B, HW, HW/4
        out = (g @ attention.transpose(1, 2)).view(batch, -1, height, width)
        return x + self.gamma * self.o(out)
