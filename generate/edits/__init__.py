"""Pixel-space edits T_i(G(z), alpha) of App. B, batched on the images' device, with validity masks.

Every geometric edit is a 3x3 homography in centered pixel coordinates (x right, y down, origin at
the image center), so the composition of shifts, zoom and rotations is one matrix product and the
target is resampled once: no content is lost at an intermediate crop, and a pixel is valid exactly
when the composite transform brings it from inside the frame. The mask follows the same warp as the
image (a pixel is valid only if all its bilinear taps lie inside the incoming valid region), so
out-of-frame regions never count in the loss.

Each edit is one module of this package (see `base.py`). Step sizes alpha, per walk name (units
are those of `UNITS`):

- shift_x / shift_y: fraction of the image width / height the content moves (right / down);
- zoom: the crop/pad factor of Jahanian et al.: alpha < 1 crops the central alpha-sized window and
  resizes it to the full frame (zoom in), alpha > 1 pads to alpha times the size and resizes (zoom
  out); the latent walk moves log(alpha);
- rotate_2d: degrees, counter-clockwise in the image plane, about the center;
- rotate_3d: degrees of rotation of the image plane about its vertical axis, seen through a pinhole
  camera whose focal length is half the image diagonal (a perspective warp);
- color_r / color_g / color_b: value added to that channel of the [-1, 1] image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from genrep.generate.edits.base import EDITS, Edit, edit_names

#: canonical edit names, in composition order
EDIT_NAMES: tuple[str, ...] = edit_names()
#: walk name -> unit of its alpha
UNITS: dict[str, str] = {
    walk: EDITS.get(name).unit for name in EDIT_NAMES for walk in EDITS.get(name).walks
}


def _edit_alphas(
    edit: Edit,
    alphas: Mapping[str, torch.Tensor | np.ndarray | float],
    batch: int,
    device: torch.device,
) -> torch.Tensor:
    columns = [
        torch.as_tensor(alphas[w], dtype=torch.float64, device=device).reshape(batch)
        if w in alphas
        else torch.full((batch,), edit.identity, dtype=torch.float64, device=device)
        for w in edit.walks
    ]
    return torch.stack(columns, 1)


def compose(
    alphas: Mapping[str, torch.Tensor | np.ndarray | float],
    batch: int,
    height: int,
    width: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The composite homography (B x 3 x 3, float64) and color offset (B x 3) of `alphas`."""
    walks = {walk: name for name in EDIT_NAMES for walk in EDITS.get(name).walks}
    unknown = sorted(set(alphas) - set(walks))
    if unknown:
        raise ValueError(
            f"unknown steering walk(s) {', '.join(unknown)}; known: {', '.join(walks)}"
        )
    device = torch.device(device)
    matrix = torch.eye(3, dtype=torch.float64, device=device).repeat(batch, 1, 1)
    offset = torch.zeros(batch, 3, dtype=torch.float64, device=device)
    for name in EDIT_NAMES:
        edit = EDITS.build(name)
        if not any(w in alphas for w in edit.walks):
            continue
        alpha = _edit_alphas(edit, alphas, batch, device)
        step = edit.matrix(alpha, height, width)
        if step is not None:
            matrix = step @ matrix
        shift = edit.offset(alpha)
        if shift is not None:
            offset = offset + shift
    return matrix, offset


def minification(matrix: torch.Tensor) -> torch.Tensor:
    """How many source pixels map onto one output pixel side, at the image center (B,)."""
    a, t, g, i = matrix[:, :2, :2], matrix[:, :2, 2:], matrix[:, 2:, :2], matrix[:, 2, 2]
    jacobian = (a * i[:, None, None] - t @ g) / (i**2)[:, None, None]
    return torch.linalg.det(jacobian).abs().clamp_min(1e-12) ** -0.5


def blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable gaussian blur (sigma in pixels, B,), reflect-padded; 0 leaves an image as is."""
    if not bool((sigma > 0).any()):
        return images
    batch, channels, height, width = images.shape
    radius = min(math.ceil(3 * float(sigma.max())), height - 1, width - 1)
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float64)
    s = sigma.to(images.device, torch.float64).clamp_min(1e-3)[:, None]
    kernel = torch.exp(-0.5 * (x / s) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(images.dtype)
    kernel = kernel.repeat_interleave(channels, 0)  # B*C, K
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=batch * channels)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


def warp(
    images: torch.Tensor, matrix: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample images (B x C x H x W) through homographies (B x 3 x 3, source -> output pixels).

    Returns the warped images (zero outside the frame) and their validity mask (B x 1 x H x W, 0/1):
    a pixel is valid if it comes from in front of the camera and all its bilinear taps lie in the
    incoming valid region (`mask`, all ones if None).
    """
    batch, _, height, width = images.shape
    device = images.device
    inverse = torch.linalg.inv(matrix.to(device, torch.float64))
    ys = torch.arange(height, device=device, dtype=torch.float64) + 0.5 - height / 2
    xs = torch.arange(width, device=device, dtype=torch.float64) + 0.5 - width / 2
    points = torch.stack(
        [
            xs.expand(height, width),
            ys[:, None].expand(height, width),
            torch.ones(height, width, device=device, dtype=torch.float64),
        ],
        -1,
    )
    source = torch.einsum("bij,hwj->bhwi", inverse, points)
    depth = source[..., 2]
    in_front = depth > 1e-9
    depth = torch.where(in_front, depth, torch.ones_like(depth))
    grid = torch.stack(
        [source[..., 0] / depth / (width / 2), source[..., 1] / depth / (height / 2)], -1
    )
    grid = torch.where(in_front[..., None], grid, torch.full_like(grid, 4.0)).to(images.dtype)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if mask is None:
        mask = torch.ones(batch, 1, height, width, device=device, dtype=images.dtype)
    coverage = F.grid_sample(
        mask.to(images.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    valid = (coverage >= 1 - 1e-4) & in_front[:, None]
    return warped, valid.to(images.dtype)


def apply_edits(
    images: torch.Tensor,
    alphas: Mapping[str, torch.Tensor | np.ndarray | float],
    mask: torch.Tensor | None = None,
    antialias: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """T(images, alpha): all edits of `alphas` (walk name -> B step sizes) composed; walks left out
    are not applied. Returns the edited images, clamped to [-1, 1], and their validity mask.

    With `antialias`, images are low-passed before a zoom out (or any warp that shrinks the center)
    as a resize would, so the target does not alias.
    """
    batch, channels, height, width = images.shape
    if channels != 3 and any(w.startswith("color_") for w in alphas):
        raise ValueError(f"color edits need RGB images, got {channels} channels")
    matrix, offset = compose(alphas, batch, height, width, images.device)
    if antialias:
        shrink = minification(matrix)
        images = blur(images, 0.5 * (shrink**2 - 1).clamp_min(0).sqrt())
    edited, valid = warp(images, matrix, mask)
    if bool(offset.any()):
        edited = edited + offset.to(edited.dtype)[:, :, None, None]
    return edited.clamp(-1, 1), valid


def masked_mse(images: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the valid pixels of `mask` (B x 1 x H x W) only."""
    valid = mask.sum() * images.shape[1]
    return ((images - targets) ** 2 * mask).sum() / valid.clamp_min(1)
