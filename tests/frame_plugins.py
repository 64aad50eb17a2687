"""A generator plugin with a non-square native frame, for the tests: the embedded generator's square
output with rows cut off top and bottom, as the LSUN Car model's letterbox is (App. A).

`genrep-generate --model tests/frame_plugins.py:build --model-option resolution=64` gives 48x64
frames (rows 8:56)."""

from __future__ import annotations

from typing import Any

import torch

from genrep.generate.models.embedded import EmbeddedGenerator


class Letterboxed(EmbeddedGenerator):
    """The embedded generator's frame without its top and bottom eighth."""

    @property
    def frame(self) -> tuple[int, int]:
        return (self.resolution * 3 // 4, self.resolution)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rows": "central 3/4"}

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        top = self.resolution // 8
        return super().forward(z, y)[:, :, top : top + self.frame[0]]


def build(
    weights: Any = None, classes: Any = None, device: Any = "cpu", resolution: int = 64
) -> Letterboxed:
    return Letterboxed(resolution=resolution).to(device)
