"""Pixel-space transformations Tx. Each module of this package registers one recipe by name.

A recipe gives the augmenting Tx of a view and the plain transform of `--no-augment`, and crops
whole stored frames as App. A says; see `base.py`.
"""

from genrep.train.tx.base import (
    TX_RECIPES,
    CenterSquareCrop,
    SquareRandomResizedCrop,
    Transform,
    TxRecipe,
    build_recipe,
)
from genrep.train.tx.batched import BatchedTx

__all__ = [
    "BatchedTx",
    "TX_RECIPES",
    "CenterSquareCrop",
    "SquareRandomResizedCrop",
    "Transform",
    "TxRecipe",
    "build_recipe",
]
