"""Shifts along x and y: the content moves by a fraction of the image side."""

from __future__ import annotations

from genrep.generate.edits.base import EDITS, Edit, identity_matrices


@EDITS.register("shift_x")
class ShiftX(Edit):
    """Shift along x: the content moves right by a fraction of the image width."""

    walks = ("shift_x",)
    default_range = 0.4  # GenRep: +-100 px of 256
    order = 4
    unit = "fraction of the width, + moves content right"

    @classmethod
    def check_range(cls, value: float) -> None:
        if not 0 < value < 1:
            raise ValueError(
                f"the shift range is a fraction of the image side in (0, 1), got {value}"
            )

    def matrix(self, alpha, height, width):
        m = identity_matrices(alpha)
        m[:, 0, 2] = alpha[:, 0] * width
        return m


@EDITS.register("shift_y")
class ShiftY(ShiftX):
    """Shift along y: the content moves down by a fraction of the image height."""

    walks = ("shift_y",)
    order = 5
    unit = "fraction of the height, + moves content down"

    def matrix(self, alpha, height, width):
        m = identity_matrices(alpha)
        m[:, 1, 2] = alpha[:, 0] * height
        return m
