"""The interface of a probe dataset: one registered class per on-disk layout, each with a fit split
and an evaluation split.

A dataset only lists its images and labels; transforms, feature extraction and caching live in
`genrep.evaluate.features`. Its `identity()` (layout, root and a hash of the image list and labels)
keys the feature cache, so editing a dataset folder never reuses stale features.
"""

from __future__ import annotations

import functools
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from genrep.errors import DataError, UsageError, one_line
from genrep.registry import Registry

DATASETS: Registry[type[ProbeDataset]] = Registry("dataset", packages=["genrep.evaluate.datasets"])


class ProbeDataset(ABC):
    """Images and labels of one dataset; subclasses fill `classes`, `items` and `targets` in `_scan`.

    `items[split][i]` is the image's path relative to `root` (or an id for in-memory data) and
    `targets[split]` is an int array [N] (multiclass) or an int8 array [N, C] with 1 = present,
    0 = absent, -1 = ignore (multilabel).
    """

    name: ClassVar[str]
    layout: ClassVar[str]  # the expected layout, quoted in every error
    task: ClassVar[str] = "multiclass"
    fit_split: ClassVar[str] = "train"
    eval_split: ClassVar[str] = "val"
    linear_epochs: ClassVar[int] = 60  # the paper's linear-probe schedule for this dataset
    needs_root: ClassVar[bool] = True

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        if self.needs_root and root is None:
            raise UsageError(f"dataset {self.name} needs --root DIR holding {self.layout}")
        if not self.needs_root and root is not None:
            raise UsageError(f"dataset {self.name} needs no files; drop --root")
        self.root = Path(root).resolve() if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise DataError(f"{root} is not a folder; dataset {self.name} expects {self.layout}")
        self.classes: list[str] = []
        self.items: dict[str, list[str]] = {}
        self.targets: dict[str, np.ndarray] = {}
        self._scan()

    @property
    def splits(self) -> tuple[str, str]:
        return (self.fit_split, self.eval_split)

    @abstractmethod
    def _scan(self) -> None:
        """Fill `classes`, `items` and `targets` for both splits, or raise `fail(...)`."""

    @property
    def folder(self) -> Path:
        """The root folder of a dataset read from files (in-memory datasets have none)."""
        if self.root is None:
            raise TypeError(f"dataset {self.name} reads no files")
        return self.root

    def fail(self, problem: str) -> DataError:
        return DataError(f"{problem}; dataset {self.name} expects {self.layout}")

    def _require_files(self, split: str) -> None:
        for item in self.items[split]:
            if not (self.folder / item).is_file():
                raise self.fail(f"{self.folder / item} is missing")

    def load_image(self, split: str, index: int) -> Image.Image:
        """Image `index` of `split` as RGB; an unreadable file is a `DataError` naming it (also
        from a DataLoader worker, whose errors reach the command as one line)."""
        path = self.folder / self.items[split][index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, Image.DecompressionBombError) as err:
            raise DataError(
                f"cannot read image {path} ({one_line(str(err))}); replace or remove it"
            ) from None

    def extra_identity(self) -> dict[str, Any]:
        """What else, beyond the image list, decides which images a split holds (e.g. a split seed)."""
        return {}

    @property
    def label(self) -> str:
        """The dataset's name in tables."""
        return self.name

    @functools.cached_property
    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        for split in self.splits:
            for item, target in zip(self.items[split], self.targets[split], strict=True):
                digest.update(f"{split}\t{item}\t{np.asarray(target).tolist()}\n".encode())
        return digest.hexdigest()

    def identity(self) -> dict[str, Any]:
        """Layout, location, sizes and a hash of every (split, image, label): the cache's dataset key."""
        return {
            "name": self.name,
            "label": self.label,
            "root": str(self.root) if self.root else None,
            "task": self.task,
            "num_classes": len(self.classes),
            "splits": {split: len(self.items[split]) for split in self.splits},
            "fingerprint": self._fingerprint,
            **self.extra_identity(),
        }

    def torch_split(
        self, split: str, transform: Callable[[Image.Image], torch.Tensor]
    ) -> SplitImages:
        return SplitImages(self, split, transform)

    def summary(self) -> str:
        """One line for the console: name, split sizes, number of classes."""
        sizes = ", ".join(f"{split} {len(self.items[split])}" for split in self.splits)
        return f"{self.name}: {sizes} images, {len(self.classes)} classes"


class SplitImages(torch.utils.data.Dataset):
    """One split as a torch Dataset of (transformed image, target)."""

    def __init__(self, dataset: ProbeDataset, split: str, transform: Callable) -> None:
        self.dataset, self.split, self.transform = dataset, split, transform

    def __len__(self) -> int:
        return len(self.dataset.items[self.split])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image = self.dataset.load_image(self.split, index)
        return self.transform(image), self.dataset.targets[self.split][index]
