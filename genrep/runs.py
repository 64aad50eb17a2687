"""The run folder `genrep-train` writes and stage 3 reads: its file names and how to load them.

A run folder holds `checkpoint.pt` (everything needed to resume), `backbone.pth` (the encoder as a
plain torchvision state dict), `config.yaml` (the resolved training config), `log.jsonl` and
`tensorboard/`. Every file is written atomically and holds only tensors and plain data, so it loads
with `torch.load(weights_only=True)`; `load_backbone` is the one way any stage turns a run folder,
a checkpoint or a bare state dict into an encoder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from genrep.config import read_yaml
from genrep.encoders import build_backbone, resnet_names
from genrep.errors import CheckpointError, OutputError, UsageError, refuse_to_replace
from genrep.io import atomic_torch_save, atomic_write_bytes, sha256_file
from genrep.safeload import load_safetensors, load_tensors, state_dict_mismatch

CHECKPOINT = "checkpoint.pt"
BACKBONE = "backbone.pth"
CONFIG = "config.yaml"
LOG = "log.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINT_FORMAT = "genrep-train-checkpoint"
CHECKPOINT_VERSION = 1
#: the architecture of a bare state dict that names none
DEFAULT_ARCH = "resnet50"
#: prefixes that training frameworks put around a backbone's own key names
KEY_PREFIXES = ("module.", "backbone.", "encoder.")

_ADVICE = (
    "pass a genrep-train run folder, its checkpoint.pt, a backbone.safetensors, or a state dict "
    "saved with torch.save"
)


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder that genrep-train wrote (it holds a config and a checkpoint or
    backbone)."""
    path = Path(path)
    return (path / CONFIG).is_file() and (
        (path / CHECKPOINT).is_file() or (path / BACKBONE).is_file()
    )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A genrep-train checkpoint dict, loaded without unpickling code; a run folder means its
    checkpoint.pt."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    checkpoint = load_tensors(path, what="a genrep-train checkpoint", advice=_ADVICE)
    if (
        not isinstance(checkpoint, dict)
        or "backbone" not in checkpoint
        or not isinstance(checkpoint.get("config"), dict)
        or "arch" not in checkpoint["config"]
    ):
        raise CheckpointError(
            f"{path} is not a genrep-train checkpoint (no backbone and config.arch)"
        )
    return checkpoint


@dataclass
class Backbone:
    """A frozen torchvision backbone (`fc` = Identity) and where its weights came from."""

    model: nn.Module
    arch: str
    path: Path
    kind: str  # "run-folder" | "training-checkpoint" | "safetensors" | "state-dict"
    sha256: str
    feature_dim: int
    step: int | None = None
    #: the training config of a run folder or checkpoint, also of a bare state dict loaded
    #: without --arch from a run folder (None for other bare state dicts)
    training_config: dict[str, Any] | None = None

    def identity(self) -> dict[str, Any]:
        """What a report records so that a result can be traced back to its weights."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "sha256": self.sha256,
            "arch": self.arch,
            "feature_dim": self.feature_dim,
            "step": self.step,
        }


def strip_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """Drop wrapper prefixes (`module.`, `backbone.`, `encoder.`) and the `fc.` head of a state dict."""
    for prefix in KEY_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return {key: value for key, value in state.items() if not key.startswith("fc.")}


def fit_backbone(arch: str, state: dict[str, Any], source: str | os.PathLike) -> nn.Module:
    """`torchvision.models.<arch>()` with fc = Identity, loaded strictly from `state`; a state
    that does not fit is one error naming what differs."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source} does not hold a state dict of tensors; {_ADVICE}")
    model = build_backbone(arch)
    state = strip_state_dict(state)
    problem = state_dict_mismatch(model.state_dict(), state, shown=1)
    if problem:
        if fitting := fitting_arch(state):
            raise CheckpointError(
                f"{source} holds torchvision {fitting} weights, not {arch}; pass --arch {fitting}"
            )
        raise CheckpointError(
            f"{source} does not fit torchvision {arch} ({problem}); pass the right --arch"
        )
    model.load_state_dict(state, strict=True)
    return model


def fitting_arch(state: dict[str, Any]) -> str | None:
    """The torchvision ResNet whose keys and shapes `state` has exactly, or None; the models are
    built on the meta device (no memory, about 0.1 s each), so an error can name the --arch to pass."""
    for name in resnet_names():
        with torch.device("meta"):
            expected = build_backbone(name).state_dict()
        if state_dict_mismatch(expected, state) is None:
            return name
    return None


def _run_config(run: Path) -> dict[str, Any]:
    config = read_yaml(run / CONFIG, CheckpointError) or {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{run / CONFIG} must be a YAML mapping holding `arch`")
    return config


def _folder_arch(folder: Path) -> tuple[str, dict[str, Any] | None]:
    """The arch and training config of the run folder holding a bare weight file, so that
    `runs/X/backbone.pth` loads as `runs/X` does; (DEFAULT_ARCH, None) outside a run folder."""
    if not is_run_folder(folder):
        return DEFAULT_ARCH, None
    config = _run_config(folder)
    return _agree(None, config.get("arch"), folder / CONFIG), config


def _agree(requested: str | None, recorded: Any, where: Path) -> str:
    if recorded is None:
        return requested or DEFAULT_ARCH
    if not isinstance(recorded, str):
        raise CheckpointError(f"{where}: `arch` must be a torchvision model name, got {recorded!r}")
    if requested and requested != recorded:
        raise CheckpointError(
            f"--arch {requested} contradicts {where}, which says arch: {recorded}"
        )
    return recorded


def load_backbone(path: str | os.PathLike, arch: str | None = None) -> Backbone:
    """The frozen encoder stored at `path`, on the CPU: a run folder (`backbone.pth` +
    `config.yaml`), a training `checkpoint.pt`, a `.safetensors` backbone of genrep-export (its
    metadata names the architecture), or a bare torchvision state dict (`arch` names its
    architecture, default: that of the run folder holding it, else resnet50)."""
    path = Path(path).resolve()
    step, config = None, None
    if path.is_dir():
        weights = path / BACKBONE
        if not weights.is_file() or not (path / CONFIG).is_file():
            raise CheckpointError(
                f"{path} is not a run folder: expected {BACKBONE} and {CONFIG} "
                "(written by genrep-train --out)"
            )
        config = _run_config(path)
        arch = _agree(arch, config.get("arch"), path / CONFIG)
        kind = "run-folder"
        state = load_tensors(weights, what="a backbone state dict", advice=_ADVICE)
    elif path.suffix == SAFETENSORS_SUFFIX:
        weights = path
        state, metadata = load_safetensors(path, what="a backbone", advice=_ADVICE)
        arch = _agree(arch, metadata.get("arch"), path)
        kind = "safetensors"
    else:
        weights = path
        loaded = load_tensors(path, what="a checkpoint or state dict", advice=_ADVICE)
        if not isinstance(loaded, dict):
            raise CheckpointError(
                f"{path} holds a {type(loaded).__name__}, not a state dict; {_ADVICE}"
            )
        if "backbone" in loaded and isinstance(loaded.get("config"), dict):
            config = loaded["config"]
            arch = _agree(arch, config.get("arch"), path)
            kind, state = "training-checkpoint", loaded["backbone"]
            step = loaded.get("step") if isinstance(loaded.get("step"), int) else None
        else:
            if arch is None:  # an explicit --arch wins over the folder's config
                arch, config = _folder_arch(path.parent)
            kind, state = "state-dict", loaded.get("state_dict", loaded)
    model = fit_backbone(arch, state, weights).eval().requires_grad_(False)
    return Backbone(
        model, arch, path, kind, sha256_file(weights), cast(int, model.feature_dim), step, config
    )


def random_backbone(arch: str, seed: int) -> nn.Module:
    """A randomly initialised backbone, the same for the same (arch, seed): the baseline any
    trained encoder is compared with."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_backbone(arch)
    return model.eval().requires_grad_(False)


#: file formats of an exported backbone: torch.save (`.pth`, `.pt`) or safetensors
EXPORT_FORMATS = ("torch", "safetensors")
SAFETENSORS_SUFFIX = ".safetensors"


def export_format(out: str | os.PathLike, format: str | None = None) -> str:
    """The format of an export: `format` if given, else chosen by OUT's extension."""
    if format is None:
        return "safetensors" if Path(out).suffix == SAFETENSORS_SUFFIX else "torch"
    if format not in EXPORT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    return format


def save_safetensors(state: dict[str, torch.Tensor], out: Path, metadata: dict[str, str]) -> None:
    """Write a state dict as a safetensors file, atomically."""
    from safetensors.torch import save

    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    atomic_write_bytes(out, save(tensors, metadata=metadata))


def export_backbone(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    overwrite: bool = False,
    format: str | None = None,
) -> str:
    """Write the backbone of a checkpoint (or run folder) to `out` as a plain state dict, checked to
    load strictly; returns its architecture. `format` is `torch` (torch.save) or `safetensors`
    (metadata: `arch`), by default chosen by OUT's extension. An existing `out` is replaced only
    with `overwrite`, and never when it is the checkpoint itself."""
    out = Path(out)
    format = export_format(out, format)
    source = Path(checkpoint)
    source_file = source / CHECKPOINT if source.is_dir() else source
    if out.exists() and source_file.exists() and out.resolve() == source_file.resolve():
        raise OutputError(f"{out} is the checkpoint being exported; choose another OUT")
    if out.is_dir():
        raise OutputError(f"{out} is a folder; OUT is the file to write")
    refuse_to_replace(out, overwrite, instead="choose another OUT")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent} does not exist; create it first or choose another OUT")
    loaded = load_checkpoint(checkpoint)
    arch = loaded["config"]["arch"]
    fit_backbone(arch, loaded["backbone"], source_file)
    if format == "safetensors":
        metadata = {"format": "pt", "arch": arch, "source_sha256": sha256_file(source_file)}
        save_safetensors(strip_state_dict(loaded["backbone"]), out, metadata)
    else:
        atomic_torch_save(loaded["backbone"], out)
    return arch
