"""`voc07`: Pascal VOC2007 image classification (20 multi-label classes)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from genrep.errors import DataError
from genrep.evaluate.datasets.base import DATASETS, ProbeDataset
from genrep.remote import read_capped

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
#: largest ImageSets/Main/<split>.txt read (VOC2007's trainval.txt is 35 KiB)
MAX_LISTING_BYTES = 16 << 20
#: largest Annotations/<id>.xml read (VOC2007's are about 1 KiB)
MAX_ANNOTATION_BYTES = 1 << 20


@DATASETS.register("voc07", aliases=("voc2007",))
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

    def _read(self, path: Path, limit: int, what: str) -> bytes:
        """A file of the dataset: a regular file of at most `limit` bytes (a FIFO or a link to
        /dev/zero is refused, never waited on or read forever); any problem is one DataError."""
        try:
            return read_capped(path, limit, what)
        except DataError as err:
            raise self.fail(str(err)) from None
        except OSError as err:
            raise self.fail(f"cannot read {path}: {err.strerror or err}") from None

    def _labels(self, annotation: Path) -> np.ndarray:
        text = self._read(annotation, MAX_ANNOTATION_BYTES, "VOC annotation")
        try:
            objects = ET.fromstring(text).findall("object")
        except ET.ParseError as err:
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
        # Every accepted --root gives the same root, so the same identity.
        folder = self.root = self._voc_folder()
        self.classes = list(VOC_CLASSES)
        for split in self.splits:
            listing = folder / "ImageSets" / "Main" / f"{split}.txt"
            if not listing.exists():
                raise self.fail(f"{listing} is missing")
            try:
                ids = self._read(listing, MAX_LISTING_BYTES, "VOC image list").decode().split()
            except UnicodeDecodeError:
                raise self.fail(f"{listing} is not text (one image id a line)") from None
            if not ids:
                raise self.fail(f"{listing} lists no images")
            self.items[split] = [f"JPEGImages/{i}.jpg" for i in ids]
            self.targets[split] = np.stack(
                [self._labels(folder / "Annotations" / f"{i}.xml") for i in ids]
            )
            self._require_files(split)
