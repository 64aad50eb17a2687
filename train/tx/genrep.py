"""Tx of the paper's released training code."""

from __future__ import annotations

from torchvision import transforms as T

from genrep.train.tx.base import TX_RECIPES, Transform, TxRecipe


@TX_RECIPES.register("genrep")
class GenRepRecipe(TxRecipe):
    """Tx of the paper's released training code (`main_unified.py`, ali-design/GenRep).

    Crops 0.875 of the stored side (112 px from 128 px images) with scale (0.2, 1), flips,
    jitters color (0.4, 0.4, 0.4, 0.1) with p=0.8 and turns 20% of views gray.
    """

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
