"""Frozen features of a dataset split: extracted by the frozen encoder in batches, and computed once
per (checkpoint, dataset, split, transform).

Features are stored as plain `.npy` files (never pickle) under `--cache-dir`, written atomically, so
a second protocol on the same data and checkpoint reuses them and an interrupted run leaves nothing
half-written. A `.json` file next to each `.npy` says what it holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torchvision import transforms
from tqdm import tqdm

from genrep.encoders import IMAGENET_MEAN, IMAGENET_STD
from genrep.evaluate.datasets import ProbeDataset
from genrep.io import atomic_open, atomic_write_bytes
from genrep.options import autocast_dtype, default_workers
from genrep.runs import Backbone


def encode_batches(
    model: nn.Module,
    batches: Iterable,
    device: torch.device,
    total: int | None = None,
    desc: str = "features",
    dtype: torch.dtype | None = None,
) -> Iterable[tuple[torch.Tensor, Any]]:
    """Yield (float32 features on `device`, labels) for each (images, labels) batch, encoder
    frozen, under autocast to `dtype` when given (`--precision`)."""
    # channels_last is the fast convolution layout for cuDNN and for oneDNN on CPU alike.
    model.to(device).to(memory_format=torch.channels_last).eval()
    with tqdm(total=total, desc=desc, unit="img", disable=None, leave=False) as progress:
        for images, labels in batches:
            images = images.to(device, non_blocking=True).contiguous(
                memory_format=torch.channels_last
            )
            # not inference_mode: the linear probe trains on these features
            with (
                torch.no_grad(),
                torch.autocast(
                    device.type, dtype=dtype or torch.float32, enabled=dtype is not None
                ),
            ):
                features = model(images).float()
            progress.update(len(images))
            yield features, labels


def extract_features(
    model: nn.Module,
    batches: Iterable,
    device: torch.device,
    total: int | None = None,
    desc: str = "features",
    dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Features of every image in `batches`, in order, as a float32 [N, D] array."""
    encoded = encode_batches(model, batches, device, total, desc, dtype)
    chunks = [f.cpu().numpy() for f, _ in encoded]
    return np.concatenate(chunks).astype(np.float32, copy=False)


#: how an encoder without a genrep training config is probed: as genrep-train's default recipe
#: trains, which is the released probe (main_linear.py: RandomResizedCrop(112, scale 0.2-1) for
#: training, Resize 128 / CenterCrop 112 for evaluation)
DEFAULT_SIZE = 112
DEFAULT_CROP_FRACTION = 0.875
DEFAULT_CROP_SCALE = (0.2, 1.0)


@dataclass(frozen=True)
class Preprocessing:
    """Encoder input size and the two image pipelines of the paper's linear evaluation.

    `origin` says where each setting came from (the flag, the encoder's training config, the
    protocol, or the default), for the report.
    """

    size: int = DEFAULT_SIZE
    #: evaluation resizes the short side to size / crop_fraction, then center-crops
    crop_fraction: float = DEFAULT_CROP_FRACTION
    #: area range of the linear probe's random-resized crop
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE
    origin: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def resolve(
        cls,
        training_config: dict[str, Any] | None,
        protocol_size: int | None = None,
        protocol_crop_fraction: float | None = None,
        size: int | None = None,
        crop_fraction: float | None = None,
        crop_scale: tuple[float, float] | None = None,
    ) -> Preprocessing:
        """Each setting from its flag, else the protocol's own (VOC07: the released transfer
        code's 224 px), else the encoder's training config (its `input_size`, its Tx recipe's
        crop scale), else the defaults."""
        trained = training_config or {}
        recipe_scale = None
        if trained.get("tx") is not None:
            from genrep.train.tx import TX_RECIPES

            if trained["tx"] in TX_RECIPES.names():
                recipe_scale = tuple(TX_RECIPES.get(trained["tx"]).crop_scale)
        chosen: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for name, candidates in {
            "size": [
                ("flag", size),
                ("protocol", protocol_size),
                ("training config", trained.get("input_size")),
                ("default", DEFAULT_SIZE),
            ],
            "crop_fraction": [
                ("flag", crop_fraction),
                ("protocol", protocol_crop_fraction),
                ("default", DEFAULT_CROP_FRACTION),
            ],
            "crop_scale": [
                ("flag", crop_scale),
                ("training config", recipe_scale),
                ("default", DEFAULT_CROP_SCALE),
            ],
        }.items():
            origin[name], chosen[name] = next(
                (o, v) for o, v in cast(list[tuple[str, Any]], candidates) if v is not None
            )
        chosen["crop_scale"] = tuple(float(x) for x in chosen["crop_scale"])
        return cls(**chosen, origin=origin)

    @property
    def resize(self) -> int:
        return round(self.size / self.crop_fraction)

    def eval_transform(self) -> Callable:
        return transforms.Compose(
            [
                transforms.Resize(self.resize),
                transforms.CenterCrop(self.size),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def train_transform(self) -> Callable:
        return transforms.Compose(
            [
                transforms.RandomResizedCrop(self.size, scale=self.crop_scale),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def eval_key(self) -> str:
        """Names the evaluation transform in the feature cache key and the report."""
        return f"resize{self.resize}-centercrop{self.size}-bilinear-imagenet-norm"

    def summary(self, crops: bool = True) -> str:
        """One line for the log; the training crop scale only when the protocol trains on `crops`."""
        line = (
            f"input {self.size} px ({self.origin.get('size', 'set')}): evaluation resize "
            f"{self.resize} + center crop {self.size}"
        )
        if crops:
            low, high = self.crop_scale
            line += (
                f"; linear training crop scale {low:g}-{high:g} "
                f"({self.origin.get('crop_scale', 'set')})"
            )
        return line

    def describe(self) -> dict[str, Any]:
        """What the report records: the sizes, both pipelines, and where the settings came from."""
        low, high = self.crop_scale
        return {
            "size": self.size,
            "crop_fraction": self.crop_fraction,
            "crop_scale": [low, high],
            "eval_transform": self.eval_key(),
            "train_transform": f"randomresizedcrop{self.size}-scale{low:g}-{high:g}-flip",
            "from": dict(self.origin),
        }


class FeatureCache:
    """`.npy` feature arrays in one folder, named by a hash of what produced them."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)  # fail before extraction, not after

    def path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.folder / f"{digest}.npy"

    def load(self, key: dict[str, Any], rows: int) -> np.ndarray | None:
        """The cached array for `key`, or None if absent or not a float32 [rows, D] array."""
        path = self.path(key)
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != rows:
            return None
        return array

    def save(self, key: dict[str, Any], array: np.ndarray) -> Path:
        path = self.path(key)
        with atomic_open(path) as f:
            np.save(f, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
        atomic_write_bytes(
            path.with_suffix(".json"),
            json.dumps({**key, "shape": list(array.shape)}, indent=1).encode(),
        )
        return path


@dataclass
class FrozenFeatures:
    """What every protocol needs: the frozen encoder, the dataset, and how to feed one to the other."""

    encoder: Backbone
    dataset: ProbeDataset
    preprocessing: Preprocessing
    device: torch.device
    cache: FeatureCache | None = None
    #: resolved --precision of the encoder's forward passes
    precision: str = "fp32"
    batch_size: int = 256
    workers: int = field(default_factory=default_workers)
    log: Callable[[str], None] = field(default=lambda message: None)

    def loader(
        self,
        split: str,
        transform: Callable,
        batch_size: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
    ) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.dataset.torch_split(split, transform),
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(seed) if shuffle else None,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )

    def cache_key(self, split: str) -> dict[str, Any]:
        return {
            "checkpoint_sha256": self.encoder.sha256,
            "arch": self.encoder.arch,
            "dataset": self.dataset.identity(),
            "split": split,
            "transform": self.preprocessing.eval_key(),
            "precision": self.precision,
        }

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return autocast_dtype(self.precision)

    def eval_features(self, split: str) -> np.ndarray:
        """Center-crop features of `split` [N, D], from the cache when they were computed before."""
        rows = len(self.dataset.items[split])
        key = self.cache_key(split)
        if self.cache and (cached := self.cache.load(key, rows)) is not None:
            self.log(f"{split} features: cached in {self.cache.path(key)}")
            return cached
        features = extract_features(
            self.encoder.model,
            self.loader(split, self.preprocessing.eval_transform()),
            self.device,
            total=rows,
            desc=f"{split} features",
            dtype=self.autocast_dtype,
        )
        if self.cache:
            self.log(
                f"{split} features: computed {features.shape}, saved to {self.cache.save(key, features)}"
            )
        return features
