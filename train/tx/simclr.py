"""SimCLR's ImageNet Tx."""

from __future__ import annotations

from collections.abc import Callable

from torchvision import transforms as T

from genrep.train.tx.base import TX_RECIPES, TxRecipe


@TX_RECIPES.register("simclr")
class SimCLRRecipe(TxRecipe):
    """SimCLR's ImageNet Tx (Chen et al. 2020, App. A) at color strength 1.

    Crop of area 0.08-1 at aspect 3/4-4/3, flip, jitter (0.8, 0.8, 0.8, 0.2) with p=0.8, 20% gray,
    and with p=0.5 a gaussian blur of sigma 0.1-2 whose kernel is 10% of the side.
    """

    crop_scale = (0.08, 1.0)

    def pixel_ops(self, input_size: int) -> list[Callable]:
        kernel = max(3, int(0.1 * input_size) // 2 * 2 + 1)
        return [
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
        ]
