"""The interface of a Tx recipe: the augmenting transform of a view, and the plain one.

A recipe gives the augmenting Tx of a view and the plain transform used with `--no-augment` (Tz
only: resize and center crop), so switching Tx off changes nothing else about the input. Both
end in uint8 tensors: DataLoader workers ship 4x fewer bytes, and `genrep.encoders.normalize`
turns a whole batch into float on the training device (as timm's prefetcher does), off the
workers' critical path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from PIL import Image
from torchvision import transforms as T

from genrep.registry import Registry

Transform = Callable[[Image.Image], torch.Tensor]

TX_RECIPES: Registry[type[TxRecipe]] = Registry("Tx recipe", packages=["genrep.train.tx"])


class TxRecipe:
    """A pixel augmentation protocol; `input_size` is the side of the square the encoder sees.

    Transforms map a PIL image to a uint8 tensor [3, input_size, input_size]; `normalize` follows.
    """

    name: ClassVar[str] = ""

    def default_input_size(self, image_size: int) -> int:
        """Encoder input side for images stored at `image_size` pixels."""
        return image_size

    def augment(self, input_size: int) -> Transform:
        raise NotImplementedError

    def plain(self, input_size: int, image_size: int) -> Transform:
        """Tz only: short side to `image_size`, then the central `input_size` square."""
        return T.Compose([T.Resize(image_size), T.CenterCrop(input_size), T.PILToTensor()])


def build_recipe(name: str) -> TxRecipe:
    """The registered Tx recipe `name` (recipes take no options)."""
    return TX_RECIPES.build(name)
