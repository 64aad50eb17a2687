from __future__ import annotations

import torch

from genrep.generate.edits.base import EDITS, Edit, identity_matrices


@EDITS.register("rotate_2d", aliases=["rot2d"])
class Rotate2D(Edit):
    """2D rotation in the image plane, about the center."""

    walks = ("rotate_2d",)
    default_range = 30.0  # GenRep: +-30 degrees
    order = 2
    unit = "degrees, counter-clockwise"

    @classmethod
    def check_range(cls, value: float) -> None:
        if not 0 < value <= 180:
            raise ValueError(f"the 2D rotation range is in degrees, in (0, 180], got {value}")

    def matrix(self, alpha, height, width):
        theta = torch.deg2rad(alpha[:, 0].double())
        m = identity_matrices(alpha)
        # y points down, so a counter-clockwise turn on screen is (x, y) -> (x c + y s, -x s + y c).
        m[:, 0, 0], m[:, 0, 1] = torch.cos(theta), torch.sin(theta)
        m[:, 1, 0], m[:, 1, 1] = -torch.sin(theta), torch.cos(theta)
        return m
