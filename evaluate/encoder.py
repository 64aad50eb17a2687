"""Load a frozen encoder from any checkpoint form a user is likely to hold, and extract its features.

Three forms are accepted, all read with `torch.load(..., weights_only=True)` so a checkpoint can
never run code: a `genrep-train` run folder (`backbone.pth` + `config.yaml`), its resumable
`checkpoint.pt` (a dict with "backbone" and "config"), or a bare torchvision ResNet state dict
(such as an exported `backbone.pth`, possibly wrapped in {"state_dict": ...}). The identity of the
weights is the sha256 of the file they were read from; it keys the feature cache and the report.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from genrep.io import sha256_file
from genrep.train.model import build_backbone

DEFAULT_ARCH = "resnet50"
# Wrappers that training frameworks put around a backbone's own key names.
KEY_PREFIXES = ("module.", "backbone.", "encoder.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be turned into an encoder; the message says what to pass instead."""


class DeviceError(ValueError):
    """A --device that torch cannot use here."""


@dataclass
class Encoder:
    """A frozen torchvision backbone (its `fc` replaced by Identity) and where its weights came from."""

    model: nn.Module
    arch: str
    path: Path
    kind: str  # "run-folder" | "training-checkpoint" | "state-dict"
    sha256: str
    feature_dim: int
    step: int | None = None

    def identity(self) -> dict[str, Any]:
        """What the report records so a row of a table can be traced back to its weights."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "sha256": self.sha256,
            "arch": self.arch,
            "feature_dim": self.feature_dim,
            "step": self.step,
        }


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a weights-only torch checkpoint ({first_line}); pass a run folder, "
            "checkpoint.pt or a state dict saved with torch.save"
        ) from None


def _read_run_config(run_dir: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"cannot read {run_dir / 'config.yaml'}: {err}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{run_dir / 'config.yaml'} must be a YAML mapping holding `arch`")
    return config


def strip_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (`module.`, `backbone.`, `encoder.`) and the `fc.` head of a state dict."""
    for prefix in KEY_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return {key: value for key, value in state.items() if not key.startswith("fc.")}


def _resolve_arch(requested: str | None, recorded: Any, where: Path) -> str:
    if recorded is None:
        return requested or DEFAULT_ARCH
    if not isinstance(recorded, str):
        raise CheckpointError(f"{where}: `arch` must be a torchvision model name, got {recorded!r}")
    if requested and requested != recorded:
        raise CheckpointError(
            f"--arch {requested} contradicts {where}, which says arch: {recorded}"
        )
    return recorded


def load_encoder(path: str | Path, arch: str | None = None) -> Encoder:
    """Build the frozen encoder stored at `path` (run folder, checkpoint.pt or state dict), on CPU."""
    path = Path(path).resolve()
    step = None
    if path.is_dir():
        weights = path / "backbone.pth"
        if not weights.is_file() or not (path / "config.yaml").is_file():
            raise CheckpointError(
                f"{path} is not a run folder: expected backbone.pth and config.yaml "
                "(written by genrep-train --out)"
            )
        arch = _resolve_arch(arch, _read_run_config(path).get("arch"), path / "config.yaml")
        kind, state = "run-folder", _torch_load(weights)
    elif path.is_file():
        weights = path
        loaded = _torch_load(path)
        if not isinstance(loaded, dict):
            raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict")
        if "backbone" in loaded and isinstance(loaded.get("config"), dict):
            arch = _resolve_arch(arch, loaded["config"].get("arch"), path)
            kind, state = "training-checkpoint", loaded["backbone"]
            step = loaded.get("step") if isinstance(loaded.get("step"), int) else None
        else:
            arch = arch or DEFAULT_ARCH
            kind, state = "state-dict", loaded.get("state_dict", loaded)
    else:
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass a run folder, checkpoint.pt or a state dict"
        )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{weights} does not hold a state dict of tensors")

    model = build_backbone(arch)
    state, expected = strip_state_dict(state), model.state_dict()
    problems = {
        "missing": [key for key in expected if key not in state],
        "unexpected": [key for key in state if key not in expected],
        "wrong shape": [
            key for key in state if key in expected and state[key].shape != expected[key].shape
        ],
    }
    if any(problems.values()):
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in problems.items()
            if keys
        )
        raise CheckpointError(
            f"{weights} does not fit torchvision {arch} ({detail}); pass the right --arch"
        )
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    return Encoder(model, arch, path, kind, sha256_file(weights), model.feature_dim, step)


def resolve_device(device: str | None) -> torch.device:
    """`None` means CUDA when there is one; an explicit but missing CUDA is an error, not a fallback."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(
            f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"--device {device} asked for CUDA but torch sees no GPU; use --device cpu"
        )
    return resolved


def encode_batches(
    model: nn.Module,
    batches: Iterable,
    device: torch.device,
    total: int | None = None,
    desc: str = "features",
) -> Iterable[tuple[torch.Tensor, Any]]:
    """Yield (features on `device`, labels) for each (images, labels) batch, encoder frozen."""
    # channels_last is the fast convolution layout for cuDNN and for oneDNN on CPU alike.
    model.to(device, memory_format=torch.channels_last).eval()
    with tqdm(total=total, desc=desc, unit="img", disable=None, leave=False) as progress:
        for images, labels in batches:
            images = images.to(device, non_blocking=True).contiguous(
                memory_format=torch.channels_last
            )
            with torch.no_grad():  # not inference_mode: the linear probe trains on these features
                features = model(images).float()
            progress.update(len(images))
            yield features, labels


def extract_features(
    model: nn.Module,
    batches: Iterable,
    device: torch.device,
    total: int | None = None,
    desc: str = "features",
) -> np.ndarray:
    """Features of every image in `batches`, in order, as a float32 [N, D] array."""
    chunks = [f.cpu().numpy() for f, _ in encode_batches(model, batches, device, total, desc)]
    return np.concatenate(chunks).astype(np.float32, copy=False)
