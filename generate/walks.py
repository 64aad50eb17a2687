"""Steering walks as data: the walk file of `genrep-steer` and the maths of step sizes alpha.

A walk w_i moves z along one pixel-space edit of App. B (shift x/y, zoom, 2D/3D rotation, color per
channel). A neighbor view is z + sum_i c_i(alpha_i) w_i, where alpha_i is drawn uniformly within the
range the walks were learned with and c_i maps it to the latent step (alpha / range; log(alpha) for
zoom; alpha itself for color).

The walk file is a plain `torch.save` dict (tensors, strings, numbers), loadable with
`weights_only=True`; it names the model and weights hash it was learned for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrep.errors import CheckpointError, UsageError, UserError
from genrep.generate.edits import EDIT_NAMES, EDITS
from genrep.generate.models.base import Generator, file_label
from genrep.options import check_number
from genrep.paths import walks_dir
from genrep.safeload import load_tensors

WALKS_FORMAT = "genrep-walks"
WALKS_VERSION = 1


def range_field(edit: str) -> str:
    """The `genrep-steer` option (dashed: the flag) of an edit's range; shift x and y share one."""
    return ("shift" if edit.startswith("shift") else edit) + "_range"


def check_ranges(ranges: Mapping[str, float]) -> None:
    """Refuse an edit that is not registered or a range it cannot take (UsageError)."""
    for name, value in ranges.items():
        check_number(f"--{range_field(name).replace('_', '-')}", value)  # finite
        try:
            EDITS.get(name).check_range(value)
        except ValueError as err:
            raise UsageError(f"--{range_field(name).replace('_', '-')}: {err}") from None


def walk_names(transforms: Sequence[str]) -> list[str]:
    """The walks of these edits, in composition order (color gives color_r, color_g, color_b)."""
    return [walk for name in EDIT_NAMES if name in transforms for walk in EDITS.get(name).walks]


def draw_alphas(
    rng: np.random.Generator, n: int, ranges: Mapping[str, float]
) -> dict[str, np.ndarray]:
    """n random step sizes per walk (walk name -> float64 array), for the edits of `ranges`."""
    alphas = {}
    for name in EDIT_NAMES:
        if name in ranges:
            edit = EDITS.build(name)
            drawn = edit.draw(rng, n, ranges[name])
            alphas.update({walk: drawn[:, j] for j, walk in enumerate(edit.walks)})
    return alphas


def latent_steps(alphas: Mapping[str, np.ndarray], ranges: Mapping[str, float]) -> np.ndarray:
    """n x num_walks coefficients c_i(alpha_i) of the walks, in `walk_names` order."""
    columns = []
    for name in EDIT_NAMES:
        if name in ranges:
            edit = EDITS.build(name)
            alpha = np.stack([np.asarray(alphas[walk], np.float64) for walk in edit.walks], 1)
            columns.append(edit.coefficient(alpha, ranges[name]))
    return np.concatenate(columns, 1)


# ------------------------------------------------------------------------------------ walk files


def cached_walks_path(generator: Generator) -> Path:
    """Where the auto-learned walks of a generator live: next to the weights cache."""
    return walks_dir() / f"{file_label(generator.name)}-{generator.weights_sha256[:16]}.pt"


def config_path(out: str | os.PathLike) -> Path:
    """The resolved config saved next to a walk file."""
    return Path(out).with_suffix(".config.yaml")


def _model_mismatch(learned: Mapping[str, Any], generator: Generator) -> str | None:
    if (
        learned.get("name") != generator.name
        or learned.get("weights_sha256") != generator.weights_sha256
        or learned.get("z_dim") != generator.z_dim
    ):
        return (
            f"model {learned.get('name')!r} (weights sha256 "
            f"{str(learned.get('weights_sha256'))[:12]}, z_dim {learned.get('z_dim')})"
        )
    return None


def load_walks(path: str | os.PathLike, generator: Generator | None = None) -> dict[str, Any]:
    """Read and check a walk file; with `generator`, refuse walks learned for another model."""
    path = Path(path)
    record = load_tensors(
        path,
        what="a walk file of genrep-steer",
        advice=f"learn one with `genrep-steer --model MODEL --out {path}`",
    )
    if not isinstance(record, dict) or record.get("format") != WALKS_FORMAT:
        raise CheckpointError(
            f"{path} is not a walk file of genrep-steer (no {WALKS_FORMAT!r} format tag)"
        )
    if record.get("format_version", 0) > WALKS_VERSION:
        raise CheckpointError(
            f"{path} has walk format version {record['format_version']}; this genrep "
            f"reads up to {WALKS_VERSION}: upgrade genrep"
        )
    walks, ranges = record.get("walks"), record.get("ranges")
    try:
        missing = [key for key in ("names", "units", "steps", "loss") if key not in record]
        if missing or not isinstance(record.get("model"), dict):
            raise ValueError(f"missing {', '.join(missing) or 'model'}")
        if not isinstance(ranges, dict) or not isinstance(walks, torch.Tensor) or walks.ndim != 2:
            raise ValueError("missing walks or ranges")
        check_ranges(ranges)
        if list(record.get("names", [])) != walk_names(tuple(ranges)) or walks.shape[0] != len(
            record["names"]
        ):
            raise ValueError("walk names do not match the walks")
    except (UserError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{path} is a damaged walk file ({err}); learn it again with genrep-steer"
        ) from None
    if generator is not None:
        learned_for = _model_mismatch(record.get("model", {}), generator)
        if learned_for is not None:
            raise CheckpointError(
                f"{path} holds walks learned for {learned_for}, not for {generator.name!r} "
                f"(weights sha256 {generator.weights_sha256[:12]}, z_dim {generator.z_dim}); learn "
                f"walks for this model with `genrep-steer --model {generator.name} --out FILE`, or "
                "leave out --walks to learn and cache them"
            )
    return record
