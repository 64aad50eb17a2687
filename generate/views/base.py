"""The interface of a latent view Tz: anchor latent in, neighbor latents out."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from genrep.generate.models.base import Generator
from genrep.options import flag_label
from genrep.registry import Registry

VIEWS: Registry[type[View]] = Registry("view", packages=["genrep.generate.views"])


class View:
    """Tz: draws K neighbor latents of an anchor from the sample's own random stream.

    Subclasses take their options as keyword arguments of `__init__` after the generator (the
    flags of the same names); `build_view` refuses options a view does not take.
    """

    name: ClassVar[str] = ""
    #: False for views without neighbors (`none`): only anchors are stored.
    has_neighbors: ClassVar[bool] = True

    def __init__(self, generator: Generator, truncation: float | None = None) -> None:
        self.generator = generator
        #: truncation t of the anchor latents; views that draw latents use the same t
        self.truncation = truncation

    def params(self) -> dict[str, Any]:
        """The view's resolved parameters, recorded in the manifest."""
        return {}

    def neighbors(
        self, z: np.ndarray, label: int | None, rng: np.random.Generator, k: int
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """K neighbor latents (k x z_dim, float32) and one dict of parameters per neighbor."""
        raise NotImplementedError


def build_view(name: str, generator: Generator, **options: Any) -> View:
    """Build the registered view `name` for `generator`; options left as None are not passed."""
    return VIEWS.build(name, generator, option_label=flag_label, **options)
