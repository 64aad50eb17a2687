from __future__ import annotations

import numpy as np

from genrep.generate.edits.base import EDITS, Edit, identity_matrices


@EDITS.register("zoom")
class Zoom(Edit):
    """Zoom: the crop (alpha < 1) or pad (alpha > 1) factor of Jahanian et al.; the walk moves log(alpha)."""

    walks = ("zoom",)
    identity = 1.0
    default_range = 4.0  # Jahanian et al. 2020 and GenRep: alpha in [1/4, 4]
    order = 3
    unit = "crop (<1, zoom in) or pad (>1, zoom out) factor"

    @classmethod
    def check_range(cls, value: float) -> None:
        if not value > 1:
            raise ValueError(f"the zoom range is the largest factor, > 1, got {value}")

    def draw(self, rng, n, max_step):
        # As in Jahanian et al.: zoom in or out with equal odds, uniform within each side.
        zoom_out = rng.random(n) < 0.5
        inside = rng.random(n)
        alpha = np.where(
            zoom_out, 1 + inside * (max_step - 1), 1 / max_step + inside * (1 - 1 / max_step)
        )
        return alpha[:, None]

    def coefficient(self, alpha, max_step):
        return np.log(alpha)

    def matrix(self, alpha, height, width):
        m = identity_matrices(alpha)
        m[:, 0, 0] = m[:, 1, 1] = 1 / alpha[:, 0]
        return m
