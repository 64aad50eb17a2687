"""Run-folder files shared with stage 3: `checkpoint.pt`, `backbone.pth`, and their safe I/O.

Both are written atomically (complete or absent, never half-written) and hold only tensors,
dicts, lists, strings and numbers, so they load with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genrep.io import atomic_torch_save
from genrep.train.model import build_backbone

CHECKPOINT = "checkpoint.pt"
BACKBONE = "backbone.pth"
CONFIG = "config.yaml"
LOG = "log.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINT_FORMAT = "genrep-train-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable genrep training checkpoint."""


def rng_state() -> dict[str, Any]:
    """The torch random state of this process (CPU and every visible CUDA device)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint dict, loaded without unpickling code; a run folder means its checkpoint.pt."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} does not exist; pass a genrep-train checkpoint.pt or run folder"
        ) from None
    except Exception as err:  # corrupt files and pickles with code surface as many types
        raise CheckpointError(
            f"{path} is not a loadable checkpoint ({type(err).__name__}: {err})"
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or "backbone" not in checkpoint
        or "arch" not in (checkpoint.get("config") or {})
    ):
        raise CheckpointError(
            f"{path} is not a genrep-train checkpoint (no backbone and config.arch)"
        )
    return checkpoint


def strict_backbone(arch: str, state: dict[str, torch.Tensor]) -> nn.Module:
    """`torchvision.models.<arch>()` with fc = Identity, loaded strictly from `state`."""
    backbone = build_backbone(arch)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"the backbone does not match torchvision {arch}: {err}") from None
    return backbone


def export_backbone(checkpoint_path: str | os.PathLike, out: str | os.PathLike) -> str:
    """Write the backbone of a checkpoint as a plain state dict (checked to load strictly)."""
    checkpoint = load_checkpoint(checkpoint_path)
    arch = checkpoint["config"]["arch"]
    strict_backbone(arch, checkpoint["backbone"])
    atomic_torch_save(checkpoint["backbone"], out)
    return arch
