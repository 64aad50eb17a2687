"""`photos`: which photograph a crop comes from, over 20 real photos that ship inside pip wheels.

The offline default `digits` cannot tell a trained encoder from a random one (8x8 grey strokes). This
task can: its classes are 18 photographs of scikit-image's `skimage/data` (astronaut, brick, camera,
cell, cat, clock, coffee, coins, grass, gravel, Hubble deep field, IHC stain, moon, motorcycle, page,
retina, rocket, chalk text) and scikit-learn's two sample photos (china, flower). Each photo is cut in
two halves across its longer side: fit crops come from the first half and evaluation crops from the
second, so the two splits share no pixel and a probe must recognise the scene, its texture, light and
camera, not memorise pixels. Crop boxes (side 0.3-0.6 of the half's short side, random position) are
drawn from a fixed seed, so the dataset is the same on every machine; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from typing import Any

import numpy as np
import PIL
from PIL import Image

from genrep.errors import UsageError
from genrep.evaluate.datasets.base import DATASETS, ProbeDataset

#: (class name, file in skimage/data); grey photos are given as RGB
SKIMAGE_PHOTOS = (
    ("astronaut", "astronaut.png"),
    ("brick", "brick.png"),
    ("camera", "camera.png"),
    ("cell", "cell.png"),
    ("cat", "chelsea.png"),
    ("clock", "clock_motion.png"),
    ("coffee", "coffee.png"),
    ("coins", "coins.png"),
    ("grass", "grass.png"),
    ("gravel", "gravel.png"),
    ("hubble", "hubble_deep_field.jpg"),
    ("ihc", "ihc.png"),
    ("moon", "moon.png"),
    ("motorcycle", "motorcycle_left.png"),
    ("page", "page.png"),
    ("retina", "retina.jpg"),
    ("rocket", "rocket.jpg"),
    ("text", "text.png"),
)
#: scikit-learn's load_sample_images(), in its order
SKLEARN_PHOTOS = ("china", "flower")


def _skimage_photo(filename: str) -> np.ndarray:
    try:
        data = importlib.resources.files("skimage") / "data"
    except ModuleNotFoundError:
        raise UsageError(
            "dataset photos needs scikit-image for its photographs: pip install scikit-image"
        ) from None
    with (data / filename).open("rb") as f, Image.open(f) as image:
        return np.asarray(image.convert("RGB"))


@DATASETS.register("photos")
class PhotosDataset(ProbeDataset):
    """20-way photo identity from crops; fit and evaluation crops come from disjoint halves."""

    layout = "nothing: the photos ship with scikit-image and scikit-learn"
    needs_root = False
    fit_split = "train"
    eval_split = "val"
    CROPS = {"train": 60, "val": 30}  # per photo
    CROP_SIDE = (0.3, 0.6)  # fraction of the half's short side
    CROP_PIXELS = 128  # stored side of a crop (the probe transform resizes it)
    SPLIT_SEED = 0

    def _scan(self) -> None:
        from sklearn.datasets import load_sample_images

        photos = [_skimage_photo(filename) for _, filename in SKIMAGE_PHOTOS]
        photos += list(load_sample_images().images)
        self.classes = [name for name, _ in SKIMAGE_PHOTOS] + list(SKLEARN_PHOTOS)
        self._photos = photos
        rng = np.random.default_rng(self.SPLIT_SEED)
        self._boxes: dict[str, list[tuple[int, int, int, int, int]]] = {}
        for split in self.splits:
            self._boxes[split] = []
            self.items[split] = []
            for label, photo in enumerate(photos):
                x0, y0, x1, y1 = self._half(photo, split)
                short = min(x1 - x0, y1 - y0)
                for i in range(self.CROPS[split]):
                    side = int(short * rng.uniform(*self.CROP_SIDE))
                    x = x0 + int(rng.integers(0, x1 - x0 - side + 1))
                    y = y0 + int(rng.integers(0, y1 - y0 - side + 1))
                    self._boxes[split].append((label, x, y, x + side, y + side))
                    self.items[split].append(f"{self.classes[label]}/{split}/{i:03d}")
            self.targets[split] = np.array([box[0] for box in self._boxes[split]], dtype=np.int64)

    def _half(self, photo: np.ndarray, split: str) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the photo's first (train) or second (val) half along its long side."""
        height, width = photo.shape[:2]
        first = split == self.fit_split
        if width >= height:
            cut = width // 2
            return (0, 0, cut, height) if first else (cut, 0, width, height)
        cut = height // 2
        return (0, 0, width, cut) if first else (0, cut, width, height)

    def load_image(self, split: str, index: int) -> Image.Image:
        label, x0, y0, x1, y1 = self._boxes[split][index]
        crop = Image.fromarray(self._photos[label][y0:y1, x0:x1])
        return crop.resize((self.CROP_PIXELS, self.CROP_PIXELS), Image.Resampling.BILINEAR)

    def extra_identity(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for photo in self._photos:
            digest.update(str(photo.shape).encode())
            digest.update(photo.tobytes())
        for split in self.splits:
            digest.update(np.asarray(self._boxes[split], dtype=np.int64).tobytes())
        return {
            "split_seed": self.SPLIT_SEED,
            "crops_per_photo": self.CROPS,
            "crop_side": self.CROP_SIDE,
            "crop_pixels": self.CROP_PIXELS,
            "photos_and_boxes_sha256": digest.hexdigest(),
            "pillow": PIL.__version__,  # crops are resized by Pillow
        }
