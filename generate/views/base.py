"""The interface of a latent view Tz: anchor latent in, neighbor latents out."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np

from genrep.generate.models.base import Generator
from genrep.registry import Registry

VIEWS: Registry[type[View]] = Registry("view", packages=["genrep.generate.views"])


class ViewError(ValueError):
    """A view that cannot be used as asked (wrong option, wrong generator)."""


class View:
    """Tz: draws K neighbor latents of an anchor from the sample's own random stream.

    Subclasses take their options as keyword arguments of `__init__` (after the generator); the
    options they do not declare are refused by `build_view` with a clear message.
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


def build_view(
    name: str, generator: Generator, truncation: float | None = None, **options: Any
) -> View:
    """Build the registered view `name`; options left as None are not passed."""
    cls = VIEWS.get(name)
    options = {key: value for key, value in options.items() if value is not None}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "generator", "truncation"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        flags = ", ".join("--" + key.replace("_", "-") for key in unknown)
        raise ViewError(f"{flags} does not apply to view {VIEWS.canonical(name)!r}")
    return cls(generator, truncation=truncation, **options)
