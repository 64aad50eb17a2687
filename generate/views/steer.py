"""The steered latent view of Sec. 3.3.2 / App. B: z + sum_i alpha_i w_i with learned walks w_i."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from genrep.generate.models.base import Generator
from genrep.generate.views.base import VIEWS, View
from genrep.generate.walks import draw_alphas, latent_steps, load_walks
from genrep.io import sha256_file


@VIEWS.register("steer")
class SteerView(View):
    """Neighbors z + sum_i c_i(alpha_i) w_i, with every alpha_i drawn per neighbor from the ranges
    the walks were learned with (`genrep-steer`); the alphas go into the sample's json.

    `walks` is the walk file; `genrep-generate` learns and caches one when it is not given.
    """

    def __init__(self, generator: Generator, walks: str, truncation: float | None = None) -> None:
        super().__init__(generator, truncation)
        path = Path(walks)
        self.record = load_walks(path, generator)
        self.walks_sha256 = sha256_file(path)
        self.ranges: dict[str, float] = dict(self.record["ranges"])
        self.names: list[str] = list(self.record["names"])
        self._walks = self.record["walks"].double().numpy()

    def params(self) -> dict[str, Any]:
        model = self.record["model"]
        return {
            "walks_sha256": self.walks_sha256,
            "model": model["name"],
            "weights_sha256": model["weights_sha256"],
            "walks": self.names,
            "ranges": self.ranges,
            "units": dict(self.record["units"]),
            "steps": int(self.record["steps"]),
            "loss": dict(self.record["loss"]),
        }

    def neighbors(self, z, label, rng, k):
        alphas = draw_alphas(rng, k, self.ranges)
        neighbor_z = z[None].astype(np.float64) + latent_steps(alphas, self.ranges) @ self._walks
        params = [
            {"alpha": {name: float(alphas[name][j]) for name in self.names}} for j in range(k)
        ]
        return neighbor_z.astype(np.float32), params
