"""The interface between a pretrained generator and the rest of genrep (docs/generators.md).

Generators come from this package, from installed packages (entry-point group
`genrep.generators`), or from code named on the command line (`--model package.module:attr`,
`--model path/to/file.py:attr`); all are builders with the same signature.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from genrep.card import DatasetLicense
from genrep.errors import UsageError
from genrep.registry import BUILTIN_SOURCE, PluginError, Registry
from genrep.shards import MAX_CLASSES, MAX_Z_DIM

#: name -> builder(weights=None, classes=None, device="cpu", **options) -> Generator
GENERATORS: Registry[Callable[..., Generator]] = Registry(
    "model",
    packages=["genrep.generate.models"],
    entry_points="genrep.generators",
    references=True,
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
    #: (`build_generator` fills it from the parameters and buffers when a builder leaves it empty)
    weights_sha256: str = ""
    #: where the builder came from (`GENERATORS.source`; set by `build_generator`)
    source: dict[str, Any] = BUILTIN_SOURCE
    #: why view `steer` cannot be used with this generator; empty when it can
    not_steerable: ClassVar[str] = ""
    #: the license of the weights, which the images follow (the dataset card's default; the
    #: user's `genrep-generate --license` overrides it): `other` with a link where genrep knows
    #: where the weights' license is stated
    weights_license: DatasetLicense = DatasetLicense()

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def device(self) -> torch.device:
        """Where the generator's tensors live: where its inputs must go."""
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return torch.device("cpu")

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
        """Identity of the generator for manifests and checkpoints: what decides its images, and
        where it came from. Subclasses add their settings to `super().describe()`."""
        return {
            "name": self.name,
            "source": dict(self.source),
            "z_dim": self.z_dim,
            "num_classes": self.num_classes,
            "resolution": self.resolution,
            "frame": list(self.frame),
            "weights_sha256": self.weights_sha256,
        }

    def condition(self, label: int | None, occurrence: int) -> tuple[int | None, dict[str, Any]]:
        """The `y` that `forward` receives for the `occurrence`-th sample (0, 1, ...) of class
        `label`, and what to record about it in the sample's json.

        By default y is the class and nothing is recorded. A generator with several conditions
        per class (a text-to-image model's prompts) picks one here, as a function of its arguments
        only, so that every sample stays a pure function of its index.
        """
        return label, {}

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


def file_label(name: str) -> str:
    """A generator name as one file-name component: a code reference `dir/file.py:attr` becomes
    `file-attr`, `package.module:attr` becomes `package.module-attr`."""
    target, sep, attr = name.rpartition(":")
    if sep:
        stem = target.rsplit("/", 1)[-1].removesuffix(".py")
        name = f"{stem}-{attr}"
    return re.sub(r"[^\w.-]+", "-", name).strip("-.") or "model"


def parameters_sha256(module: nn.Module) -> str:
    """sha256 of a module's state (names and raw bytes, in name order): the identity of weights
    that do not come from one file."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _check_generator(generator: Any, name: str) -> None:
    """One clear line when a (plugin) builder returns something that is not a usable Generator."""
    if not isinstance(generator, Generator):
        raise PluginError(
            f"model {name!r} returned a {type(generator).__name__}, not a "
            "genrep.generate.models.Generator (see docs/generators.md)"
        )
    for attribute in ("z_dim", "resolution"):
        value = getattr(generator, attribute, None)
        if not isinstance(value, int) or value <= 0:
            raise PluginError(
                f"model {name!r}: its {attribute} is {value!r}; a Generator sets it to a "
                "positive int"
            )
    if generator.z_dim > MAX_Z_DIM:  # readers refuse such a dataset (shards/README.md, Limits)
        raise PluginError(
            f"model {name!r}: z_dim {generator.z_dim} is over the {MAX_Z_DIM} a dataset may have"
        )
    if not isinstance(generator.num_classes, int) or not 0 <= generator.num_classes <= MAX_CLASSES:
        raise PluginError(f"model {name!r}: num_classes must be an int in 0..{MAX_CLASSES}")


def build_generator(
    name: str,
    *,
    weights: str | None = None,
    classes: Any = None,
    device: str | torch.device = "cpu",
    **options: Any,
) -> Generator:
    """Build generator `name` (a registered name, an installed entry point or a code reference) in
    eval mode on `device`; `options` are its model options (`--model-option KEY=VALUE`), refused
    when the model does not take them. The generator records its name and source, and a hash of
    its parameters when its builder set no `weights_sha256`."""
    canonical = GENERATORS.canonical(name)
    generator = GENERATORS.build(
        canonical, weights, classes, device, option_label=model_option_label, **options
    )
    _check_generator(generator, canonical)
    generator.name = canonical
    generator.source = GENERATORS.source(canonical)
    if not generator.weights_sha256:
        generator.weights_sha256 = parameters_sha256(generator)
    return generator.eval().requires_grad_(False)
