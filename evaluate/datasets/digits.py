"""`digits`: scikit-learn's handwritten digits, the offline dataset that needs no download."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from PIL import Image

from genrep.evaluate.datasets.base import DATASETS, ProbeDataset


@DATASETS.register("digits")
class DigitsDataset(ProbeDataset):
    """scikit-learn's 1,797 8x8 handwritten digits (real images, no download) as the offline default.

    The images are grey; they are given as RGB and the probe transform upsamples them to the
    encoder's input size. The train/val split is stratified with a fixed seed so it never changes.
    """

    layout = "nothing: the digits ship with scikit-learn"
    needs_root = False
    VAL_FRACTION = 0.3
    SPLIT_SEED = 0

    def _scan(self) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        self._pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        self.classes = [str(c) for c in digits.target_names]
        indices = {}
        indices["train"], indices["val"] = train_test_split(
            np.arange(len(digits.target)),
            test_size=self.VAL_FRACTION,
            stratify=digits.target,
            random_state=self.SPLIT_SEED,
        )
        self._rows = {split: np.sort(rows) for split, rows in indices.items()}
        for split, rows in self._rows.items():
            self.items[split] = [str(i) for i in rows]
            self.targets[split] = digits.target[rows].astype(np.int64)

    def load_image(self, split: str, index: int) -> Image.Image:
        return Image.fromarray(self._pixels[self._rows[split][index]]).convert("RGB")

    def extra_identity(self) -> dict[str, Any]:
        return {
            "val_fraction": self.VAL_FRACTION,
            "split_seed": self.SPLIT_SEED,
            "pixels_sha256": hashlib.sha256(self._pixels.tobytes()).hexdigest(),
        }
