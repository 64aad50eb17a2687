"""Tx of the paper's released training code."""

from __future__ import annotations

from collections.abc import Callable

from torchvision import transforms as T

from genrep.train.tx.base import TX_RECIPES, TxRecipe


@TX_RECIPES.register("genrep")
class GenRepRecipe(TxRecipe):
    """Tx of the paper's released training code (`main_unified.py`, ali-design/GenRep).

    Crops to 0.875 of the 128 px training side (112 px) with scale (0.2, 1), flips, jitters color
    (0.4, 0.4, 0.4, 0.1) with p=0.8 and turns 20% of views gray.
    """

    crop_fraction = 0.875
    crop_scale = (0.2, 1.0)

    def default_input_size(self, image_size: int) -> int:
        return int(image_size * self.crop_fraction)

    def pixel_ops(self, input_size: int) -> list[Callable]:
        return [
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
