"""The interface of a pixel-space edit T_i of App. B, and the registry of edits.

Each module of this package registers one edit; `EDITS.build(name)` makes it. The composition
order (`order`) and the units of each edit's step size alpha are part of the edit.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from genrep.registry import Registry


class Edit:
    """One pixel-space transformation T_i: how its step sizes are drawn, enter z, and act on pixels."""

    #: names of the latent walks this edit owns (color owns one per channel)
    walks: ClassVar[tuple[str, ...]]
    #: alpha that leaves the image unchanged
    identity: ClassVar[float] = 0.0
    #: largest |alpha| (zoom: largest factor) drawn when none is given (GenRep's values, App. B)
    default_range: ClassVar[float]
    #: position in the composition T = T_shift o T_zoom o T_rot2d o T_rot3d o T_color (as in GenRep)
    order: ClassVar[int]
    #: what alpha measures
    unit: ClassVar[str]

    @classmethod
    def check_range(cls, value: float) -> None:
        if not value > 0:
            raise ValueError(f"the {cls.walks[0].split('_')[0]} range must be > 0, got {value}")

    def draw(self, rng: np.random.Generator, n: int, max_step: float) -> np.ndarray:
        """n x len(walks) step sizes, uniform in [-max_step, max_step]."""
        return rng.uniform(-max_step, max_step, (n, len(self.walks)))

    def coefficient(self, alpha: np.ndarray, max_step: float) -> np.ndarray:
        """The step along the latent walk for pixel-space step `alpha` (1 at the largest step)."""
        return alpha / max_step

    def matrix(self, alpha: torch.Tensor, height: int, width: int) -> torch.Tensor | None:
        """B x 3 x 3 homography taking source pixels to edited pixels, or None (not geometric)."""
        return None

    def offset(self, alpha: torch.Tensor) -> torch.Tensor | None:
        """B x 3 per-channel offset, or None (not a color edit)."""
        return None


EDITS: Registry[type[Edit]] = Registry(
    "steering transformation", packages=["genrep.generate.edits"]
)


def identity_matrices(alpha: torch.Tensor) -> torch.Tensor:
    """B identity homographies (float64) on alpha's device, for an edit to fill in."""
    return torch.eye(3, dtype=torch.float64, device=alpha.device).repeat(len(alpha), 1, 1)


def edit_names() -> tuple[str, ...]:
    """Canonical edit names, in composition order."""
    return tuple(sorted(EDITS.canonical_names(), key=lambda name: EDITS.get(name).order))
