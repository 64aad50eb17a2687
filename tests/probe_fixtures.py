"""Tiny datasets in each probe layout and tiny checkpoints in each accepted form, written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from genrep.encoders import backbone_state as state_of
from genrep.evaluate.datasets.voc07 import VOC_CLASSES
from genrep.runs import BACKBONE, CHECKPOINT, CONFIG, random_backbone

# Distinct solid colours, so that even a random-weight encoder tells the classes apart.
PALETTE = [
    (220, 30, 30),
    (30, 200, 40),
    (40, 60, 230),
    (230, 220, 40),
    (200, 40, 210),
    (40, 210, 210),
]


def class_image(label: int, index: int, size: int = 40) -> Image.Image:
    """A noisy solid-colour image whose colour says its class."""
    rng = np.random.default_rng(1000 * label + index)
    colour = np.array(PALETTE[label % len(PALETTE)], dtype=np.float64)
    pixels = np.clip(colour + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_imagefolder(
    root: Path, classes: int = 3, train_per_class: int = 8, val_per_class: int = 4
) -> Path:
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                class_image(label, i + (1000 if split == "val" else 0)).save(
                    folder / f"{i:03d}.png"
                )
    return root


def write_images_as_imagefolder(
    root: Path, images: dict[str, list[tuple[np.ndarray, int]]]
) -> Path:
    """Write grey uint8 arrays into an ImageFolder layout, one folder per label."""
    for split, samples in images.items():
        for i, (pixels, label) in enumerate(samples):
            folder = root / split / f"{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return root


def voc_objects(index: int) -> list[tuple[str, bool]]:
    """Three present classes per image (so each class has positives in every split), one difficult."""
    present = [VOC_CLASSES[(index + offset) % 20] for offset in (0, 7, 13)]
    difficult = VOC_CLASSES[(index + 3) % 20]
    return [(name, False) for name in present] + [(difficult, True)]


def write_voc07(root: Path, trainval: int = 40, test: int = 20) -> Path:
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for split, count, first in (("trainval", trainval, 0), ("test", test, 5000)):
        ids = [f"{first + i:06d}" for i in range(count)]
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i, image_id in enumerate(ids):
            class_image(i % len(PALETTE), first + i, size=48).save(
                voc / "JPEGImages" / f"{image_id}.jpg"
            )
            objects = "".join(
                f"<object><name>{name}</name><difficult>{int(difficult)}</difficult></object>"
                for name, difficult in voc_objects(i)
            )
            (voc / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><filename>{image_id}.jpg</filename>{objects}</annotation>"
            )
    return root


def _annotations_mat(path: Path, records: list[tuple[str, int]]) -> None:
    from scipy.io import savemat

    fields = [
        ("bbox_x1", "O"),
        ("bbox_y1", "O"),
        ("bbox_x2", "O"),
        ("bbox_y2", "O"),
        ("class", "O"),
        ("fname", "O"),
    ]
    table = np.zeros(len(records), dtype=fields)
    for row, (fname, class_id) in enumerate(records):
        table[row] = (1, 1, 30, 30, class_id, fname)
    savemat(path, {"annotations": table})


def write_stanford_cars(
    root: Path, classes: int = 3, train_per_class: int = 6, test_per_class: int = 3
) -> Path:
    from scipy.io import savemat

    (root / "devkit").mkdir(parents=True, exist_ok=True)
    for split, count, mat in (
        ("train", train_per_class, root / "devkit" / "cars_train_annos.mat"),
        ("test", test_per_class, root / "devkit" / "cars_test_annos_withlabels.mat"),
    ):
        (root / f"cars_{split}").mkdir(exist_ok=True)
        records = []
        for i in range(classes * count):
            fname, label = f"{i + 1:05d}.jpg", i % classes
            class_image(label, i + (500 if split == "test" else 0)).save(
                root / f"cars_{split}" / fname
            )
            records.append((fname, label + 1))  # the devkit counts classes from 1
        _annotations_mat(mat, records)
    savemat(
        root / "devkit" / "cars_meta.mat",
        {"class_names": np.array([f"Car {c}" for c in range(classes)], dtype=object)},
    )
    return root


def backbone_state(arch: str = "resnet18", seed: int = 0) -> dict[str, torch.Tensor]:
    """A random-weight torchvision backbone's state dict without its fc head."""
    return state_of(random_backbone(arch, seed))


def write_run_folder(folder: Path, arch: str = "resnet18", seed: int = 0) -> Path:
    """What `genrep-train --out` leaves: backbone.pth, config.yaml and checkpoint.pt."""
    folder.mkdir(parents=True, exist_ok=True)
    state = backbone_state(arch, seed)
    torch.save(state, folder / BACKBONE)
    (folder / CONFIG).write_text(yaml.safe_dump({"arch": arch, "lr": 0.03}))
    torch.save(
        {
            "backbone": state,
            "config": {"arch": arch},
            "step": 7,
            "manifest_hash": None,
            "optimizer": {"state": {}},
        },
        folder / CHECKPOINT,
    )
    return folder
