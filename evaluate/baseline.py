"""The random-initialisation baseline of every probe: the same architecture with random weights,
scored by the same protocol on the same dataset with the same seed, so that a report says how much
training lifted the metric above what the architecture gives for free.

A baseline is computed once and kept under `$GENREP_HOME/baselines`, keyed by everything its number
depends on: the random weights themselves (their hash pins the architecture, the seed and torch's
initialisation), the protocol and its resolved settings, the dataset's identity, the preprocessing,
the precision, the device type and the genrep and torch versions. Concurrent probes of one sweep
wait for each other on a lock instead of computing it twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
import torchvision
from torch import nn

from genrep.encoders import backbone_state
from genrep.evaluate.features import FrozenFeatures
from genrep.evaluate.protocols import Protocol
from genrep.io import atomic_write_bytes, locked
from genrep.runs import Backbone, random_backbone

BASELINES = ("random", "none")
RECORD_FORMAT = "genrep-probe-baseline"


def weights_hash(model: nn.Module) -> str:
    """sha256 of a model's tensors (names, dtypes, shapes and bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone_state(model).items()):
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def random_encoder(arch: str, seed: int) -> Backbone:
    """`random_backbone(arch, seed)` as a frozen encoder, identified by the hash of its weights."""
    model = random_backbone(arch, seed)
    return Backbone(
        model, arch, Path(f"random-init:{arch}:seed{seed}"), "random-init", weights_hash(model),
        cast(int, model.feature_dim),
    )  # fmt: skip


def baseline_key(inputs: FrozenFeatures, protocol: Protocol, seed: int) -> dict[str, Any]:
    """Everything a baseline's metrics depend on (`inputs.encoder` is the random encoder)."""
    from genrep import __version__

    return {
        "format": RECORD_FORMAT,
        "kind": "random-init",
        "arch": inputs.encoder.arch,
        "seed": seed,
        "weights_sha256": inputs.encoder.sha256,
        "protocol": protocol.name,
        "settings": protocol.settings(inputs.dataset),
        "dataset": inputs.dataset.identity(),
        # where each setting came from does not change the number
        "preprocessing": {
            name: value for name, value in inputs.preprocessing.describe().items() if name != "from"
        },
        "precision": inputs.precision,
        "device_type": inputs.device.type,
        "genrep_version": __version__,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
    }


class BaselineStore:
    """Baseline records as small JSON files in one folder, named by the hash of their key."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.folder / f"{digest}.json"

    def load(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The record stored for exactly `key`, or None (absent, unreadable or another key)."""
        try:
            record = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None
        # compared as read back from JSON: a tuple in the key (a crop range) is a list there
        if not isinstance(record, dict) or record.get("key") != json.loads(json.dumps(key)):
            return None
        return record

    def save(self, key: dict[str, Any], metrics: dict[str, float], seconds: float) -> dict:
        record = {"key": key, "metrics": metrics, "seconds": round(seconds, 3)}
        atomic_write_bytes(self.path(key), (json.dumps(record, indent=1) + "\n").encode())
        return record


def measure_baseline(
    inputs: FrozenFeatures, protocol: Protocol, seed: int, store: BaselineStore
) -> dict[str, Any]:
    """The random-init baseline of `inputs.encoder`'s architecture: the report's `baseline`."""
    # Its features are not cached: once its metrics are, they would never be read again.
    random_inputs = replace(inputs, encoder=random_encoder(inputs.encoder.arch, seed), cache=None)
    key = baseline_key(random_inputs, protocol, seed)
    path = store.path(key)
    with locked(path.with_suffix(".lock")):
        record = store.load(key)
        cached = record is not None
        if record is None:
            inputs.log(
                f"baseline: probing a randomly initialised {inputs.encoder.arch} (seed {seed})"
            )
            started = time.perf_counter()
            metrics, _ = protocol.run(random_inputs)
            record = store.save(key, metrics, time.perf_counter() - started)
    inputs.log(f"baseline: {'cached' if cached else 'saved'} in {path}")
    return {
        "kind": "random-init",
        "arch": key["arch"],
        "seed": seed,
        "weights_sha256": key["weights_sha256"],
        "metrics": record["metrics"],
        "cached": cached,
        "record": str(path),
    }


def lift(metrics: dict[str, float], baseline: dict[str, Any] | None) -> dict[str, float] | None:
    """metric - baseline for every metric both have (None without a baseline)."""
    if baseline is None:
        return None
    return {
        name: value - baseline["metrics"][name]
        for name, value in metrics.items()
        if name in baseline["metrics"]
    }
