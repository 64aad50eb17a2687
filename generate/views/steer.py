"""The steered latent view of Sec. 3.3.2 / App. B: z + sum_i s_i c_i(alpha_i) w_i with learned walks
w_i and per-edit step scales s_i."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from genrep.errors import UsageError
from genrep.generate.edits import EDITS
from genrep.generate.models.base import Generator
from genrep.generate.views.base import VIEWS, View
from genrep.generate.walks import draw_alphas, latent_steps, load_walks
from genrep.io import sha256_file

#: The released generation (generate_dataset_biggan_steer.py, ali-design/GenRep) stepped 5 times
#: further along the 3D rotation walk than it was learned for: z + 5 (alpha / 60) w_rot3d + ...,
#: alpha in [-60, 60] degrees; the other walks at their learned scale.
RELEASED_STEP_SCALES = {"rotate_3d": 5.0}


@VIEWS.register("steer")
class SteerView(View):
    """Neighbors z + sum_i s_i c_i(alpha_i) w_i, with every alpha_i drawn per neighbor from the
    ranges the walks were learned with (`genrep-steer`); the alphas go into the sample's json.

    `walks` is the walk file; `genrep-generate` learns and caches one when it is not given.
    `step_scale` maps edits to s_i (`--step-scale rotate_3d=1`); s_i is 1 for the edits it does not
    name, except that rotate_3d defaults to the released code's 5 (RELEASED_STEP_SCALES).
    """

    def __init__(
        self,
        generator: Generator,
        walks: str,
        truncation: float | None = None,
        step_scale: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(generator, truncation)
        path = Path(walks)
        self.record = load_walks(path, generator)
        self.walks_sha256 = sha256_file(path)
        self.ranges: dict[str, float] = dict(self.record["ranges"])
        self.names: list[str] = list(self.record["names"])
        self._walks = self.record["walks"].double().numpy()
        self.step_scales = self._step_scales(step_scale or {})
        edit_of = {walk: name for name in self.ranges for walk in EDITS.get(name).walks}
        self._scales = np.array([self.step_scales.get(edit_of[walk], 1.0) for walk in self.names])

    def _step_scales(self, given: Mapping[str, float]) -> dict[str, float]:
        """The scale of each edit of the walk file that is not 1 (the defaults, then `given`)."""
        scales = {name: s for name, s in RELEASED_STEP_SCALES.items() if name in self.ranges}
        for name, value in given.items():
            edit = EDITS.canonical(name)  # an unknown edit is a one-line RegistryError
            if edit not in self.ranges:
                raise UsageError(
                    f"--step-scale {name}: the walk file has no {edit} walk (it has "
                    f"{', '.join(self.ranges)})"
                )
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UsageError(
                    f"--step-scale {name}: the scale must be a number > 0, got {value}"
                )
            scales[edit] = float(value)
        return {name: scale for name, scale in scales.items() if scale != 1.0}

    def params(self) -> dict[str, Any]:
        model = self.record["model"]
        return {
            "walks_sha256": self.walks_sha256,
            "model": model["name"],
            "weights_sha256": model["weights_sha256"],
            "walks": self.names,
            "ranges": self.ranges,
            "step_scales": self.step_scales,
            "units": dict(self.record["units"]),
            "steps": int(self.record["steps"]),
            "loss": dict(self.record["loss"]),
        }

    def neighbors(self, z, label, rng, k):
        alphas = draw_alphas(rng, k, self.ranges)
        steps = latent_steps(alphas, self.ranges) * self._scales
        neighbor_z = z[None].astype(np.float64) + steps @ self._walks
        params = [
            {"alpha": {name: float(alphas[name][j]) for name in self.names}} for j in range(k)
        ]
        return neighbor_z.astype(np.float32), params
