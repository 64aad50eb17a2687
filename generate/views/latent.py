"""The latent views that need nothing learned: none, gaussian and independent (Sec. 3.3, App. C.1.2)."""

from __future__ import annotations

from typing import Any

import numpy as np

from genrep.errors import UsageError
from genrep.generate.models.base import Generator
from genrep.generate.views.base import VIEWS, View
from genrep.latents import truncated_normal


@VIEWS.register("none")
class NoView(View):
    """No latent transformation: only anchors are stored (Tx-only training uses two crops of each)."""

    has_neighbors = False

    def neighbors(self, z, label, rng, k):
        return np.zeros((0, z.shape[0]), np.float32), []


@VIEWS.register("gaussian")
class GaussianView(View):
    """z + w, w ~ N_t(0, sigma, t) (eq. 9-10); sigma defaults to 0.2 unconditional, 1.0 conditional."""

    def __init__(
        self, generator: Generator, sigma: float | None = None, truncation: float | None = None
    ) -> None:
        super().__init__(generator, truncation)
        self.sigma = generator.default_sigma if sigma is None else float(sigma)
        if self.sigma <= 0:
            raise UsageError(f"--sigma must be > 0, got {self.sigma}")

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "truncation": self.truncation}

    def neighbors(self, z, label, rng, k):
        noise = truncated_normal(rng, (k, z.shape[0]), self.truncation, std=self.sigma)
        return z[None] + noise, [{} for _ in range(k)]


@VIEWS.register("independent")
class IndependentView(View):
    """A fresh z of the same class (App. C.1.2): only meaningful for class-conditional generators."""

    def __init__(self, generator: Generator, truncation: float | None = None) -> None:
        super().__init__(generator, truncation)
        if not generator.conditional:
            raise UsageError(
                "view 'independent' needs a class-conditional model (an unconditional one would pair "
                "unrelated images); use --view gaussian, or a conditional model (--classes K)"
            )

    def params(self) -> dict[str, Any]:
        return {"truncation": self.truncation}

    def neighbors(self, z, label, rng, k):
        return truncated_normal(rng, (k, z.shape[0]), self.truncation), [{} for _ in range(k)]
