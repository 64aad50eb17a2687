"""Probe datasets: one registered class per on-disk layout, each with a fit split and an evaluation split.

A dataset only lists its images and labels; transforms, feature extraction and caching live in
`genrep.evaluate.features`. Its `identity()` (layout, root and a hash of the image list and labels)
keys the feature cache, so editing a dataset folder never reuses stale features.
"""

from __future__ import annotations

import functools
import hashlib
import os
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from genrep.registry import Registry

DATASETS: Registry[type[ProbeDataset]] = Registry("dataset")


def register_dataset(name: str, aliases: tuple[str, ...] = ()) -> Callable[[type], type]:
    """Register a dataset class under `name`, which becomes its `name` attribute."""

    def decorate(cls: type) -> type:
        cls.name = name
        return DATASETS.register(name, aliases=aliases)(cls)

    return decorate


class DatasetError(ValueError):
    """A dataset folder that does not match its layout; the message names the expected layout."""


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
            raise DatasetError(f"dataset {self.name} needs --root DIR holding {self.layout}")
        if not self.needs_root and root is not None:
            raise DatasetError(f"dataset {self.name} needs no files; drop --root")
        self.root = Path(root).resolve() if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise DatasetError(f"{root} is not a folder; dataset {self.name} expects {self.layout}")
        self.classes: list[str] = []
        self.items: dict[str, list[str]] = {}
        self.targets: dict[str, np.ndarray] = {}
        self._scan()

    @property
    def splits(self) -> tuple[str, str]:
        return (self.fit_split, self.eval_split)

    @abstractmethod
    def _scan(self) -> None:
        """Fill `classes`, `items` and `targets` for both splits, or raise `DatasetError`."""

    def fail(self, problem: str) -> DatasetError:
        return DatasetError(f"{problem}; dataset {self.name} expects {self.layout}")

    def _require_files(self, split: str) -> None:
        for item in self.items[split]:
            if not (self.root / item).is_file():
                raise self.fail(f"{self.root / item} is missing")

    def load_image(self, split: str, index: int) -> Image.Image:
        with Image.open(self.root / self.items[split][index]) as image:
            return image.convert("RGB")

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


class SplitImages(torch.utils.data.Dataset):
    """One split as a torch Dataset of (transformed image, target)."""

    def __init__(self, dataset: ProbeDataset, split: str, transform: Callable) -> None:
        self.dataset, self.split, self.transform = dataset, split, transform

    def __len__(self) -> int:
        return len(self.dataset.items[self.split])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image = self.dataset.load_image(self.split, index)
        return self.transform(image), self.dataset.targets[self.split][index]


def build_dataset(name: str, root: str | os.PathLike | None = None) -> ProbeDataset:
    return DATASETS.get(name)(root)


@register_dataset("imagefolder")
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
                samples = make_dataset(
                    self.root / split,
                    class_to_idx,
                    extensions=IMG_EXTENSIONS,
                    allow_empty=split != "train",
                )
            except FileNotFoundError as err:
                raise self.fail(f"{self.root / split}: {err}") from None
            if not samples:
                raise self.fail(f"{self.root / split} holds no images")
            self.items[split] = [os.path.relpath(path, self.root) for path, _ in samples]
            self.targets[split] = np.array([label for _, label in samples], dtype=np.int64)


VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


@register_dataset("voc07", aliases=("voc2007",))
class VOC07Dataset(ProbeDataset):
    """Pascal VOC2007 image classification: 20 multi-label classes, trainval to fit, test to evaluate.

    Labels come from Annotations/<id>.xml: a class is present (1) if the image has a non-difficult
    object of it, ignored (-1) if all its objects are difficult, absent (0) otherwise -- the same
    ternary labels as the devkit's per-class ImageSets/Main/<class>_<split>.txt files.
    """

    layout = (
        "VOCdevkit/VOC2007 (or the VOC2007 folder itself) with ImageSets/Main/{trainval,test}.txt, "
        "Annotations/<id>.xml and JPEGImages/<id>.jpg"
    )
    task = "multilabel"
    fit_split = "trainval"
    eval_split = "test"

    def _voc_folder(self) -> Path:
        for candidate in (self.root, self.root / "VOC2007", self.root / "VOCdevkit" / "VOC2007"):
            if (candidate / "ImageSets" / "Main").is_dir():
                return candidate
        raise self.fail(f"no ImageSets/Main under {self.root}")

    def _labels(self, annotation: Path) -> np.ndarray:
        try:
            objects = ET.parse(annotation).getroot().findall("object")
        except (OSError, ET.ParseError) as err:
            raise self.fail(f"cannot read {annotation}: {err}") from None
        labels = np.zeros(len(VOC_CLASSES), dtype=np.int8)
        for obj in objects:
            name = (obj.findtext("name") or "").strip()
            if name not in VOC_CLASSES:
                raise self.fail(f"{annotation}: unknown object class {name!r}")
            index = VOC_CLASSES.index(name)
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            if not difficult:
                labels[index] = 1
            elif labels[index] == 0:
                labels[index] = -1
        return labels

    def _scan(self) -> None:
        folder = self.root = (
            self._voc_folder()
        )  # so that every accepted --root gives the same identity
        self.classes = list(VOC_CLASSES)
        for split in self.splits:
            listing = folder / "ImageSets" / "Main" / f"{split}.txt"
            if not listing.is_file():
                raise self.fail(f"{listing} is missing")
            ids = listing.read_text().split()
            if not ids:
                raise self.fail(f"{listing} lists no images")
            self.items[split] = [f"JPEGImages/{i}.jpg" for i in ids]
            self.targets[split] = np.stack(
                [self._labels(folder / "Annotations" / f"{i}.xml") for i in ids]
            )
            self._require_files(split)


@register_dataset("stanford-cars", aliases=("cars",))
class StanfordCarsDataset(ProbeDataset):
    """Stanford Cars (196 models, whole images) from its devkit .mat annotations; class ids start at 1."""

    layout = (
        "cars_train/, cars_test/, devkit/cars_train_annos.mat and cars_test_annos_withlabels.mat "
        "(in devkit/ or next to it), optional devkit/cars_meta.mat"
    )
    fit_split = "train"
    eval_split = "test"
    linear_epochs = 100

    def _annotations(self, path: Path) -> list[tuple[str, int]]:
        from scipy.io import loadmat

        try:
            records = np.atleast_1d(loadmat(path, squeeze_me=True)["annotations"])
            return [(str(r["fname"]), int(r["class"]) - 1) for r in records]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self.fail(f"cannot read annotations from {path}: {err}") from None

    def _scan(self) -> None:
        from scipy.io import loadmat

        devkit = self.root / "devkit"
        test_annos = next(
            (
                p
                for p in (
                    devkit / "cars_test_annos_withlabels.mat",
                    self.root / "cars_test_annos_withlabels.mat",
                )
                if p.is_file()
            ),
            None,
        )
        if not (devkit / "cars_train_annos.mat").is_file() or test_annos is None:
            raise self.fail(f"annotation .mat files are missing under {self.root}")
        annotations = {
            "train": self._annotations(devkit / "cars_train_annos.mat"),
            "test": self._annotations(test_annos),
        }
        for split, records in annotations.items():
            if any(label < 0 for _, label in records):
                raise self.fail(f"{split} annotations hold a class id below 1")
            self.items[split] = [f"cars_{split}/{fname}" for fname, _ in records]
            self.targets[split] = np.array([label for _, label in records], dtype=np.int64)
            self._require_files(split)
        num_classes = 1 + max(int(t.max()) for t in self.targets.values())
        if (devkit / "cars_meta.mat").is_file():
            self.classes = [
                str(c)
                for c in np.atleast_1d(
                    loadmat(devkit / "cars_meta.mat", squeeze_me=True)["class_names"]
                )
            ]
            if len(self.classes) < num_classes:
                raise self.fail(
                    f"cars_meta.mat names {len(self.classes)} classes but labels go up to {num_classes}"
                )
        else:
            self.classes = [f"class_{i + 1}" for i in range(num_classes)]


@register_dataset("digits")
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


def dataset_summary(dataset: ProbeDataset) -> str:
    """One line for the console: name, split sizes, number of classes."""
    sizes = ", ".join(f"{split} {len(dataset.items[split])}" for split in dataset.splits)
    return f"{dataset.name}: {sizes} images, {len(dataset.classes)} classes"
