"""The interface between a pretrained generator and the rest of genrep."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from genrep.errors import UsageError
from genrep.registry import Registry

#: name -> builder(weights=None, classes=None, device="cpu", **options) -> Generator
GENERATORS: Registry[Callable[..., Generator]] = Registry(
    "model", packages=["genrep.generate.models"]
)


class Generator(nn.Module):
    """G: (z, y) -> images in [-1, 1], NCHW float, at the generator's native resolution.

    Subclasses set the attributes below and implement `forward`. Images may be non-square (see
    `frame`); datasets store the whole frame by default (App. A of the paper).
    """

    #: registry name the generator was built under (set by `build_generator`)
    name: str = ""
    #: dimension of z
    z_dim: int
    #: number of classes; 0 for an unconditional generator
    num_classes: int = 0
    #: side of the (square) native output, before any crop the generator makes (see `frame`)
    resolution: int
    #: truncation t of the anchor latent z ~ N_t(0, 1, t); None means untruncated
    default_truncation: ClassVar[float | None] = None
    #: named class subsets this generator knows (e.g. "imagenet100")
    class_subsets: ClassVar[dict[str, list[int]]] = {}
    #: sha256 of the weights file the generator was loaded from, or of its defining parameters
    weights_sha256: str = ""

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def device(self) -> torch.device:
        """Where the generator's tensors live: where its inputs must go."""
        tensor = next(iter(self.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.buffers()), torch.zeros(0))
        return tensor.device

    @property
    def frame(self) -> tuple[int, int]:
        """(height, width) of what `forward` returns: the native frame (square unless a generator
        crops its output, as the LSUN Car model removes its letterbox rows)."""
        return (self.resolution, self.resolution)

    @property
    def default_sigma(self) -> float:
        """Std of the gaussian view: 0.2 unconditional, 1.0 class-conditional (paper, Sec. 3.3.1, C.2.1)."""
        return 1.0 if self.conditional else 0.2

    def describe(self) -> dict[str, Any]:
        """Identity of the generator for manifests and checkpoints."""
        return {
            "name": self.name,
            "z_dim": self.z_dim,
            "num_classes": self.num_classes,
            "resolution": self.resolution,
            "frame": list(self.frame),
            "weights_sha256": self.weights_sha256,
        }

    def resolve_classes(self, spec: Any) -> list[int] | None:
        """The class ids `--classes` selects: all (None or "all"), a named subset, the first K (an
        integer), or a comma list of ids; None for an unconditional generator."""
        if not self.conditional:
            if spec is not None:
                raise UsageError(f"--classes does not apply: model {self.name!r} is unconditional")
            return None
        if spec is None or spec == "all":
            return list(range(self.num_classes))
        text = str(spec).strip()
        if text in self.class_subsets:
            return list(self.class_subsets[text])
        try:
            ids = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            names = ", ".join(["all", *self.class_subsets, "K", "a comma list of ids"])
            raise UsageError(f"--classes {spec!r} is not one of: {names}") from None
        if len(ids) == 1 and "," not in text:  # an integer K: the first K classes
            ids = list(range(ids[0]))
        bad = [i for i in ids if not 0 <= i < self.num_classes]
        if not ids or bad:
            raise UsageError(f"--classes {spec!r}: class ids must lie in 0..{self.num_classes - 1}")
        return ids

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


def model_option_label(name: str) -> str:
    return f"--model-option {name}"


def build_generator(
    name: str,
    *,
    weights: str | None = None,
    classes: Any = None,
    device: str | torch.device = "cpu",
    **options: Any,
) -> Generator:
    """Build the registered generator `name` in eval mode on `device`; `options` are its model
    options (`--model-option KEY=VALUE`), refused when the model does not take them."""
    canonical = GENERATORS.canonical(name)
    generator = GENERATORS.build(
        canonical, weights, classes, device, option_label=model_option_label, **options
    )
    generator.name = canonical
    return generator.eval().requires_grad_(False)
