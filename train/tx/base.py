"""The interface of a Tx recipe, and where the pixels of a view come from (App. A of the paper).

A dataset that stores whole generated frames (shard format 2's default) is cropped here, as App. A
says: a view with Tx is a random square crop of the recipe's scale taken anywhere in the frame
(non-square frames included), a view without Tx (`--no-augment`, the inverter) the central 128 px
of the native frame, a crop and not a downsample. Stored crops (format 1, `--frame
center-crop|resize`) and real photos train as they always did: Tx crops from the whole image, and the
plain transform resizes the short side and keeps the central input square.

Every transform ends in an `input_size` square as a uint8 tensor: DataLoader workers ship 4x fewer
bytes, and `genrep.encoders.normalize` turns a whole batch into float on the training device (as
timm's prefetcher does), off the workers' critical path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import functional as F

from genrep.registry import Registry
from genrep.train.tx.batched import BatchedTx

Transform = Callable[[Image.Image], torch.Tensor]
#: (top, left, height, width) of a crop, in pixels of the image it is taken from
Box = tuple[int, int, int, int]

TX_RECIPES: Registry[type[TxRecipe]] = Registry("Tx recipe", packages=["genrep.train.tx"])


class SquareRandomResizedCrop(T.RandomResizedCrop):
    """A random square crop of a frame of any shape: RandomResizedCrop whose area (`scale`) and
    aspect jitter (`ratio`) are drawn against the largest square of the image, placed anywhere in
    the image. On a square image it is torchvision's RandomResizedCrop, draw for draw.

    torchvision measures the area against the whole image instead: on a 384x512 frame a crop of
    scale ~1 and aspect ~1 (a 443 px square) does not fit, so large crops come out as wide as the
    ratio allows or, after ten misses, as the whole 4:3 frame squeezed into the square input.
    """

    @staticmethod
    def get_params(img: Any, scale: Sequence[float], ratio: Sequence[float]) -> Box:
        _, height, width = F.get_dimensions(img)
        side = min(height, width)
        square = torch.empty(()).expand(1, side, side)  # only its shape is read
        top, left, h, w = T.RandomResizedCrop.get_params(square, scale, ratio)
        # The short axis was drawn over the whole image already; the long one is drawn here.
        if height > side:
            top = int(torch.randint(0, height - h + 1, (1,)))
        if width > side:
            left = int(torch.randint(0, width - w + 1, (1,)))
        return top, left, h, w

    def crop_with_box(self, image: Image.Image) -> tuple[Box, Image.Image]:
        box = self.get_params(image, self.scale, self.ratio)
        return box, F.resized_crop(
            image, *box, self.size, self.interpolation, antialias=self.antialias
        )

    def forward(self, img: Image.Image) -> Image.Image:
        return self.crop_with_box(img)[1]


class CenterSquareCrop(nn.Module):
    """The central `side` px square of an image (at most its short side), resized to `size`.

    The square starts at (height - side) // 2, (width - side) // 2, as `genrep-generate --frame
    center-crop` cuts it, so a view without Tx of a whole frame holds the pixels of that crop.
    """

    def __init__(self, side: int, size: int) -> None:
        super().__init__()
        self.side, self.size = side, size

    def crop_with_box(self, image: Image.Image) -> tuple[Box, Image.Image]:
        _, height, width = F.get_dimensions(image)
        side = min(self.side, height, width)
        box = ((height - side) // 2, (width - side) // 2, side, side)
        return box, F.resized_crop(image, *box, [self.size, self.size], antialias=True)

    def forward(self, image: Image.Image) -> Image.Image:
        return self.crop_with_box(image)[1]


class TxRecipe:
    """A pixel augmentation protocol; `input_size` is the side of the square the encoder sees.

    A recipe is its random crop's area range (`crop_scale`) and the pixel operations after it
    (`pixel_ops`). Transforms map a PIL image to a uint8 tensor [3, input_size, input_size];
    `normalize` follows.
    """

    name: ClassVar[str] = ""
    #: area range of the random crop (RandomResizedCrop's `scale`)
    crop_scale: ClassVar[tuple[float, float]] = (0.08, 1.0)

    def default_input_size(self, image_size: int) -> int:
        """Encoder input side for images of `image_size` pixels."""
        return image_size

    def pixel_ops(self, input_size: int) -> list[Callable]:
        """The Tx that follow the crop (flip, color, blur), on PIL images."""
        raise NotImplementedError

    def crop(self, input_size: int, square: bool = True) -> T.RandomResizedCrop:
        """The random crop; `square`: a square crop anywhere in the frame (identical on square
        images), else torchvision's RandomResizedCrop of the whole image (real photos)."""
        kind = SquareRandomResizedCrop if square else T.RandomResizedCrop
        return kind(input_size, scale=self.crop_scale)

    def augment(self, input_size: int, square: bool = True) -> Transform:
        return T.Compose(
            [self.crop(input_size, square), *self.pixel_ops(input_size), T.PILToTensor()]
        )

    def batched(self, input_size: int, square: bool = True) -> BatchedTx:
        """The same Tx on batches of uint8 frames on the training device (`--tx-on device`)."""
        return BatchedTx(self.crop(input_size, square), self.pixel_ops(input_size), square)

    def plain(self, input_size: int, image_size: int) -> Transform:
        """Tz only, for stored crops and photos: short side to `image_size`, then the central
        `input_size` square."""
        return T.Compose([T.Resize(image_size), T.CenterCrop(input_size), T.PILToTensor()])

    def view_transform(
        self,
        augment: bool,
        input_size: int,
        image_size: int,
        center_crop: int | None = None,
        real: bool = False,
        on_device: bool = False,
    ) -> Transform:
        """How a stored image (or a real photo, `real`) becomes a view. `center_crop`: the images
        are whole frames, and views without Tx take their central `center_crop` px (App. A);
        None: they are crops already, resized to `image_size` as they always were. `on_device`:
        `batched` applies Tx later, and the workers only turn the frame into a tensor."""
        if augment and on_device:
            return T.PILToTensor()
        if augment:
            return self.augment(input_size, square=not real)
        if center_crop and not real:
            return T.Compose([CenterSquareCrop(center_crop, input_size), T.PILToTensor()])
        return self.plain(input_size, image_size)


def build_recipe(name: str) -> TxRecipe:
    """The registered Tx recipe `name` (recipes take no options)."""
    return TX_RECIPES.build(name)
