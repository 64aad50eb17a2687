"""`imagefolder`: ImageNet-style class folders (ImageNet-100 and any dataset laid out like it)."""

from __future__ import annotations

import os

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from genrep.evaluate.datasets.base import DATASETS, ProbeDataset
from genrep.images import image_files


@DATASETS.register("imagefolder")
class ImageFolderDataset(ProbeDataset):
    """ImageNet-style class folders; the classes are those of train/, which val/ must not exceed."""

    layout = "train/<class>/<image> and val/<class>/<image> (ImageFolder layout)"

    @property
    def label(self) -> str:
        """The folder's name (e.g. imagenet100), since the layout alone does not say which data it is."""
        return self.root.name

    def _scan(self) -> None:
        for split in self.splits:
            if not (self.root / split).is_dir():
                raise self.fail(f"{self.root / split} is missing")
        try:
            self.classes, class_to_idx = find_classes(self.root / "train")
        except FileNotFoundError:
            raise self.fail(f"{self.root / 'train'} has no class folders") from None
        val_classes = {entry.name for entry in os.scandir(self.root / "val") if entry.is_dir()}
        unknown = val_classes - set(self.classes)
        if unknown:
            raise self.fail(f"val/ has classes that train/ lacks: {', '.join(sorted(unknown)[:5])}")
        for split in self.splits:
            try:
                samples = image_files(
                    self.root / split, class_to_idx, IMG_EXTENSIONS, allow_empty=split != "train"
                )
            except FileNotFoundError as err:
                raise self.fail(f"{self.root / split}: {err}") from None
            if not samples:
                raise self.fail(f"{self.root / split} holds no images")
            self.items[split] = [os.path.relpath(path, self.root) for path, _ in samples]
            self.targets[split] = np.array([label for _, label in samples], dtype=np.int64)
