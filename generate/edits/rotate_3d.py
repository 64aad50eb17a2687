from __future__ import annotations

import math

import torch

from genrep.generate.edits.base import EDITS, Edit, identity_matrices


@EDITS.register("rotate_3d", aliases=["rot3d"])
class Rotate3D(Edit):
    """3D rotation of the image plane about its vertical axis, through a pinhole camera."""

    walks = ("rotate_3d",)
    default_range = 60.0  # GenRep: +-60 degrees
    order = 1
    unit = "degrees about the vertical axis"

    @classmethod
    def check_range(cls, value: float) -> None:
        if not 0 < value < 90:
            raise ValueError(f"the 3D rotation range is in degrees, in (0, 90), got {value}")

    def matrix(self, alpha, height, width):
        phi = torch.deg2rad(alpha[:, 0].double())
        focal = math.hypot(height, width) / 2
        m = identity_matrices(alpha)
        # The plane point (x, y, 0) turns to (x cos, y, x sin), sits at depth `focal` and is
        # projected with that focal length: x' = f x cos / (x sin + f), y' = f y / (x sin + f).
        m[:, 0, 0] = focal * torch.cos(phi)
        m[:, 1, 1] = focal
        m[:, 2, 0] = torch.sin(phi)
        m[:, 2, 2] = focal
        return m
