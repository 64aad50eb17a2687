"""Pixel-space edits T_i(G(z), alpha) of App. B, batched on the images' device, with validity masks.

Every geometric edit is a 3x3 homography in centered pixel coordinates (x right, y down, origin at
the image center), so the composition of shifts, zoom and rotations is one matrix product and the
target is resampled once: no content is lost at an intermediate crop, and a pixel is valid exactly
when the composite transform brings it from inside the frame. The mask follows the same warp as the
image (a pixel is valid only if all its bilinear taps lie inside the incoming valid region), so
out-of-frame regions never count in the loss.

Step sizes alpha, per walk name (units are those of `UNITS`):

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
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from genrep.registry import Registry


class Edit:
    """One pixel-space transformation T_i: how its step sizes are drawn, enter z, and act on pixels."""

    #: names of the latent walks this edit owns (color owns one per channel)
    walks: ClassVar[tuple[str, ...]]
    #: alpha that leaves the image unchanged
    identity: ClassVar[float] = 0.0
    #: largest |alpha| (zoom: largest factor) drawn when none is given (GenRep's values, App. B)
    default_range: ClassVar[float]
    #: position in the composition T = T_shift o T_zoom o T_rot2d o T_rot3d o T_color (as in GenRep)
    order: ClassVar[int]
    #: what alpha measures
    unit: ClassVar[str]

    @classmethod
    def check_range(cls, value: float) -> None:
        if not value > 0:
            raise ValueError(f"the {cls.walks[0].split('_')[0]} range must be > 0, got {value}")

    def draw(self, rng: np.random.Generator, n: int, max_step: float) -> np.ndarray:
        """n x len(walks) step sizes, uniform in [-max_step, max_step]."""
        return rng.uniform(-max_step, max_step, (n, len(self.walks)))

    def coefficient(self, alpha: np.ndarray, max_step: float) -> np.ndarray:
        """The step along the latent walk for pixel-space step `alpha` (1 at the largest step)."""
        return alpha / max_step

    def matrix(self, alpha: torch.Tensor, height: int, width: int) -> torch.Tensor | None:
        """B x 3 x 3 homography taking source pixels to edited pixels, or None (not geometric)."""
        return None

    def offset(self, alpha: torch.Tensor) -> torch.Tensor | None:
        """B x 3 per-channel offset, or None (not a color edit)."""
        return None


EDITS: Registry[type[Edit]] = Registry("steering transformation")


def _matrices(alpha: torch.Tensor) -> torch.Tensor:
    return torch.eye(3, dtype=torch.float64, device=alpha.device).repeat(len(alpha), 1, 1)


@EDITS.register("shift_x")
class ShiftX(Edit):
    walks = ("shift_x",)
    default_range = 0.4  # GenRep: +-100 px of 256
    order = 4
    unit = "fraction of the width, + moves content right"

    @classmethod
    def check_range(cls, value: float) -> None:
        if not 0 < value < 1:
            raise ValueError(
                f"the shift range is a fraction of the image side in (0, 1), got {value}"
            )

    def matrix(self, alpha, height, width):
        m = _matrices(alpha)
        m[:, 0, 2] = alpha[:, 0] * width
        return m


@EDITS.register("shift_y")
class ShiftY(ShiftX):
    walks = ("shift_y",)
    order = 5
    unit = "fraction of the height, + moves content down"

    def matrix(self, alpha, height, width):
        m = _matrices(alpha)
        m[:, 1, 2] = alpha[:, 0] * height
        return m


@EDITS.register("zoom")
class Zoom(Edit):
    walks = ("zoom",)
    identity = 1.0
    default_range = 4.0  # Jahanian et al. 2020 and GenRep: alpha in [1/4, 4]
    order = 3
    unit = "crop (<1, zoom in) or pad (>1, zoom out) factor"

    @classmethod
    def check_range(cls, value: float) -> None:
        if not value > 1:
            raise ValueError(f"the zoom range is the largest factor, > 1, got {value}")

    def draw(self, rng, n, max_step):
        # As in Jahanian et al.: zoom in or out with equal odds, uniform within each side.
        zoom_out = rng.random(n) < 0.5
        inside = rng.random(n)
        alpha = np.where(
            zoom_out, 1 + inside * (max_step - 1), 1 / max_step + inside * (1 - 1 / max_step)
        )
        return alpha[:, None]

    def coefficient(self, alpha, max_step):
        return np.log(alpha)

    def matrix(self, alpha, height, width):
        m = _matrices(alpha)
        m[:, 0, 0] = m[:, 1, 1] = 1 / alpha[:, 0]
        return m


@EDITS.register("rotate_2d", aliases=["rot2d"])
class Rotate2D(Edit):
    walks = ("rotate_2d",)
    default_range = 30.0  # GenRep: +-30 degrees
    order = 2
    unit = "degrees, counter-clockwise"

    @classmethod
    def check_range(cls, value: float) -> None:
        if not 0 < value <= 180:
            raise ValueError(f"the 2D rotation range is in degrees, in (0, 180], got {value}")

    def matrix(self, alpha, height, width):
        theta = torch.deg2rad(alpha[:, 0].double())
        m = _matrices(alpha)
        # y points down, so a counter-clockwise turn on screen is (x, y) -> (x c + y s, -x s + y c).
        m[:, 0, 0], m[:, 0, 1] = torch.cos(theta), torch.sin(theta)
        m[:, 1, 0], m[:, 1, 1] = -torch.sin(theta), torch.cos(theta)
        return m


@EDITS.register("rotate_3d", aliases=["rot3d"])
class Rotate3D(Edit):
    walks = ("rotate_3d",)
    default_range = 60.0  # GenRep: +-60 degrees
    order = 1
    unit = "degrees about the vertical axis"

    @classmethod
    def check_range(cls, value: float) -> None:
        if not 0 < value < 90:
            raise ValueError(f"the 3D rotation range is in degrees, in (0, 90), got {value}")

    def matrix(self, alpha, height, width):
        phi = torch.deg2rad(alpha[:, 0].double())
        focal = math.hypot(height, width) / 2
        m = _matrices(alpha)
        # The plane point (x, y, 0) turns to (x cos, y, x sin), sits at depth `focal` and is
        # projected with that focal length: x' = f x cos / (x sin + f), y' = f y / (x sin + f).
        m[:, 0, 0] = focal * torch.cos(phi)
        m[:, 1, 1] = focal
        m[:, 2, 0] = torch.sin(phi)
        m[:, 2, 2] = focal
        return m


@EDITS.register("color")
class Color(Edit):
    walks = ("color_r", "color_g", "color_b")
    default_range = 0.5  # Jahanian et al. and GenRep: uniform in [-0.5, 0.5) per channel
    order = 0
    unit = "offset of the channel in [-1, 1] units"

    def coefficient(self, alpha, max_step):
        return alpha

    def offset(self, alpha):
        return alpha


#: canonical edit names, in composition order
EDIT_NAMES: tuple[str, ...] = tuple(
    sorted(
        (name for name in EDITS.names() if EDITS.canonical(name) == name),
        key=lambda name: EDITS.get(name).order,
    )
)
#: walk name -> unit of its alpha
UNITS: dict[str, str] = {
    walk: EDITS.get(name).unit for name in EDIT_NAMES for walk in EDITS.get(name).walks
}


def _edit_alphas(
    edit: Edit, alphas: Mapping[str, torch.Tensor], batch: int, device: torch.device
) -> torch.Tensor:
    columns = [
        torch.as_tensor(alphas[w], dtype=torch.float64, device=device).reshape(batch)
        if w in alphas
        else torch.full((batch,), edit.identity, dtype=torch.float64, device=device)
        for w in edit.walks
    ]
    return torch.stack(columns, 1)


def compose(
    alphas: Mapping[str, torch.Tensor],
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
        edit = EDITS.get(name)()
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
