"""Pixel-space transformations Tx: one registered recipe per training protocol.

A recipe gives the augmenting Tx of a view and the plain transform used with `--no-augment` (Tz
only: resize and center crop), so switching Tx off changes nothing else about the input. Both
end in uint8 tensors: DataLoader workers ship 4x fewer bytes, and `normalize` turns a whole batch
into float on the training device (as timm's prefetcher does), off the workers' critical path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from PIL import Image
from torchvision import transforms as T

from genrep.registry import Registry

#: ImageNet statistics: the released GenRep code normalises generated and real images with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[Image.Image], torch.Tensor]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [..., 3, H, W] -> float, scaled to [0, 1] and standardised per channel."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1) * 255
    return (images.float() - mean) / std


TX_RECIPES: Registry[type[TxRecipe]] = Registry("Tx recipe")


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


@TX_RECIPES.register("genrep")
class GenRepRecipe(TxRecipe):
    """Tx of the paper's released training code (`main_unified.py`, ali-design/GenRep).

    Crops 0.875 of the stored side (112 px from 128 px images) with scale (0.2, 1), flips,
    jitters color (0.4, 0.4, 0.4, 0.1) with p=0.8 and turns 20% of views gray.
    """

    name = "genrep"
    crop_fraction = 0.875

    def default_input_size(self, image_size: int) -> int:
        return int(image_size * self.crop_fraction)

    def augment(self, input_size: int) -> Transform:
        return T.Compose(
            [
                T.RandomResizedCrop(input_size, scale=(0.2, 1.0)),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.PILToTensor(),
            ]
        )


@TX_RECIPES.register("simclr")
class SimCLRRecipe(TxRecipe):
    """SimCLR's ImageNet Tx (Chen et al. 2020, App. A) at color strength 1.

    Crop of area 0.08-1 at aspect 3/4-4/3, flip, jitter (0.8, 0.8, 0.8, 0.2) with p=0.8, 20% gray,
    and with p=0.5 a gaussian blur of sigma 0.1-2 whose kernel is 10% of the side.
    """

    name = "simclr"

    def augment(self, input_size: int) -> Transform:
        kernel = max(3, int(0.1 * input_size) // 2 * 2 + 1)
        return T.Compose(
            [
                T.RandomResizedCrop(input_size, scale=(0.08, 1.0)),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
                T.PILToTensor(),
            ]
        )


def build_recipe(name: str) -> TxRecipe:
    return TX_RECIPES.get(name)()
