from __future__ import annotations

from genrep.generate.edits.base import EDITS, Edit


@EDITS.register("color")
class Color(Edit):
    """Color: an offset added to each channel of the [-1, 1] image (one walk per channel)."""

    walks = ("color_r", "color_g", "color_b")
    default_range = 0.5  # Jahanian et al. and GenRep: uniform in [-0.5, 0.5) per channel
    order = 0
    unit = "offset of the channel in [-1, 1] units"

    def coefficient(self, alpha, max_step):
        return alpha

    def offset(self, alpha):
        return alpha
