"""Tx on the training device: a recipe's augmentations on a whole batch of uint8 frames at once.

`genrep-train --tx-on device` has the DataLoader workers only decode the stored frames; the
random crop, flip, color jitter, grayscale and blur of the recipe then run here, batched, on
the device the model trains on (a GPU keeps up where a few CPU cores cannot). Every view draws
its own parameters, from the same distributions as the per-image PIL path of `base.py`
(`tests/test_train_tx_device.py` compares the two statistically): the crop is drawn the way
`SquareRandomResizedCrop` draws it, the pixel ops are the recipe's own torchvision transforms,
read through `BATCHED_OPS`, which maps each transform class to its batched form.

The crop resamples with `torchvision.ops.roi_align` (bilinear, averaging ceil(crop / output)
samples per output pixel: antialiased like the PIL path's resize); colors are float in [0, 1]
until the uint8 result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchvision import transforms as T
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as F

from genrep.errors import UsageError

#: a batched Tx step: float images [n, 3, H, W] in [0, 1] and a generator -> the images changed
BatchedOp = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
#: torchvision transform class -> builder of its batched form from a configured instance
BATCHED_OPS: dict[type, Callable[[object], BatchedOp]] = {}
#: tries of RandomResizedCrop before it falls back to a central crop (torchvision's number)
CROP_TRIES = 10


def batched_op(kind: type) -> Callable:
    """Register the builder of `kind`'s batched form."""

    def register(builder: Callable[[object], BatchedOp]) -> Callable[[object], BatchedOp]:
        BATCHED_OPS[kind] = builder
        return builder

    return register


def to_batched(transform: object) -> BatchedOp:
    """The batched form of one of a recipe's torchvision transforms."""
    builder = BATCHED_OPS.get(type(transform))
    if builder is None:
        raise UsageError(
            f"the Tx step {type(transform).__name__} has no batched form for --tx-on device; "
            "pass --tx-on workers"
        )
    return builder(transform)


def _uniform(
    n: int, low: float, high: float, like: torch.Tensor, g: torch.Generator
) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=like.device)


def _chance(n: int, p: float, like: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, device=like.device) < p


def crop_boxes(
    n: int,
    frame: tuple[int, int],
    scale: Sequence[float],
    ratio: Sequence[float],
    g: torch.Generator,
    square: bool = True,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(top, left, height, width) of `n` random resized crops of a `frame` (height, width), as
    float [n, 4]: each drawn as `SquareRandomResizedCrop.get_params` (`square`) or torchvision's
    RandomResizedCrop (not `square`) draws one, all tries of all crops at once."""
    height, width = frame
    bound_h, bound_w = (min(frame),) * 2 if square else frame
    draws = torch.rand(n, CROP_TRIES, 2, generator=g, device=device, dtype=torch.float64)
    area = bound_h * bound_w * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * draws[..., 1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= bound_w) & (h > 0) & (h <= bound_h)
    first = fits.to(torch.int8).argmax(1, keepdim=True)  # the first try that fits
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    # No try fits: the whole bound, cut to the nearest allowed aspect (torchvision's fallback).
    shape = bound_w / bound_h
    fallback_w = bound_w if shape <= ratio[1] else round(bound_h * ratio[1])
    fallback_h = bound_h if shape >= ratio[0] else round(bound_w / ratio[0])
    missed = ~fits.any(1)
    h = torch.where(missed, torch.full_like(h, fallback_h), h)
    w = torch.where(missed, torch.full_like(w, fallback_w), w)
    offsets = torch.rand(n, 2, generator=g, device=device, dtype=torch.float64)
    top = torch.floor(offsets[:, 0] * (height - h + 1))
    left = torch.floor(offsets[:, 1] * (width - w + 1))
    if not square:  # torchvision centers its fallback; the square crop's long axis stays random
        top = torch.where(missed, torch.floor((height - h) / 2), top)
        left = torch.where(missed, torch.floor((width - w) / 2), left)
    return torch.stack([top, left, h, w], 1).float()


class BatchedTx:
    """A recipe's Tx (random resized crop, then its pixel ops) on batches of uint8 frames."""

    def __init__(self, crop: T.RandomResizedCrop, pixel_ops: Sequence[object], square: bool):
        self.size = tuple(crop.size)
        self.scale, self.ratio, self.square = tuple(crop.scale), tuple(crop.ratio), square
        self.ops = [to_batched(op) for op in pixel_ops]

    def __call__(self, frames: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """uint8 frames [n, 3, H, W] -> uint8 views [n, 3, size, size], on the frames' device;
        `g` (a generator on that device) draws every parameter."""
        n, _, height, width = frames.shape
        boxes = crop_boxes(
            n, (height, width), self.scale, self.ratio, g, self.square, frames.device
        )
        top, left, h, w = boxes.unbind(1)
        rois = torch.stack(
            [
                torch.arange(n, device=frames.device, dtype=boxes.dtype),
                left,
                top,
                left + w,
                top + h,
            ],
            1,
        )
        images = roi_align(frames.float(), rois, self.size, aligned=True) / 255
        for op in self.ops:
            images = op(images, g)
        return images.mul(255).round_().clamp_(0, 255).to(torch.uint8)


@batched_op(T.RandomHorizontalFlip)
def _flip(transform: T.RandomHorizontalFlip) -> BatchedOp:
    def flip(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        chosen = _chance(images.shape[0], transform.p, images, g)
        return torch.where(chosen.view(-1, 1, 1, 1), F.horizontal_flip(images), images)

    return flip


@batched_op(T.RandomApply)
def _random_apply(transform: T.RandomApply) -> BatchedOp:
    inner = [to_batched(op) for op in transform.transforms]

    def apply(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        chosen = _chance(images.shape[0], transform.p, images, g).nonzero()[:, 0]
        if not len(chosen):
            return images
        part = images[chosen]
        for op in inner:
            part = op(part, g)
        return images.index_copy(0, chosen, part)

    return apply


@batched_op(T.RandomGrayscale)
def _random_grayscale(transform: T.RandomGrayscale) -> BatchedOp:
    def gray(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        chosen = _chance(images.shape[0], transform.p, images, g)
        grays = F.rgb_to_grayscale(images, num_output_channels=3)
        return torch.where(chosen.view(-1, 1, 1, 1), grays, images)

    return gray


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """images x factor + other x (1 - factor), per image, clamped as torchvision's `_blend`."""
    factor = factor.view(-1, 1, 1, 1)
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def _shift_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by its `shift` (a fraction of the circle) in HSV space."""
    red, green, blue = images.unbind(1)
    value, _ = images.max(1)
    delta = value - images.min(1)[0]
    saturation = torch.where(value > 0, delta / value.clamp_min(1e-8), torch.zeros_like(value))
    spread = delta.clamp_min(1e-8)
    rc, gc, bc = (value - red) / spread, (value - green) / spread, (value - blue) / spread
    hue = torch.where(value == red, bc - gc, torch.where(value == green, 2 + rc - bc, 4 + gc - rc))
    hue = torch.remainder(hue / 6 + shift.view(-1, 1, 1), 1.0) * 6
    sector = torch.floor(hue)
    frac = hue - sector
    p = value * (1 - saturation)
    q = value * (1 - saturation * frac)
    t = value * (1 - saturation * (1 - frac))
    sector = sector.long().remainder(6).unsqueeze(1)
    choices = torch.stack(  # [n, 3 channels, 6 sectors, H, W]
        [
            torch.stack([value, q, p, p, t, value], 1),
            torch.stack([t, value, value, q, p, p], 1),
            torch.stack([p, p, t, value, value, q], 1),
        ],
        1,
    )
    return choices.gather(2, sector.unsqueeze(1).expand(-1, 3, 1, -1, -1))[:, :, 0]


@batched_op(T.ColorJitter)
def _color_jitter(transform: T.ColorJitter) -> BatchedOp:
    def brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        return _blend(images, torch.zeros_like(images), factor)

    def contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        mean = F.rgb_to_grayscale(images).mean((1, 2, 3), keepdim=True)
        return _blend(images, mean.expand_as(images), factor)

    def saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        return _blend(images, F.rgb_to_grayscale(images, num_output_channels=3), factor)

    adjustments = [
        (transform.brightness, brightness),
        (transform.contrast, contrast),
        (transform.saturation, saturation),
        (transform.hue, _shift_hue),
    ]

    def jitter(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = images.shape[0]
        # Each image applies the four adjustments in an order of its own, as ColorJitter does.
        order = torch.rand(n, len(adjustments), generator=g, device=images.device).argsort(1)
        factors = [
            _uniform(n, bounds[0], bounds[1], images, g) if bounds is not None else None
            for bounds, _ in adjustments
        ]
        for position in range(len(adjustments)):
            for index, (_, adjust) in enumerate(adjustments):
                chosen = (order[:, position] == index).nonzero()[:, 0]
                factor = factors[index]
                if factor is None or not len(chosen):
                    continue
                changed = adjust(images[chosen], factor[chosen])
                images = images.index_copy(0, chosen, changed)
        return images

    return jitter


@batched_op(T.GaussianBlur)
def _gaussian_blur(transform: T.GaussianBlur) -> BatchedOp:
    kernel_w, kernel_h = transform.kernel_size
    low, high = transform.sigma

    def kernels(size: int, sigma: torch.Tensor) -> torch.Tensor:
        x = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size, device=sigma.device)
        weights = torch.exp(-0.5 * (x / sigma.view(-1, 1)) ** 2)
        return (weights / weights.sum(1, keepdim=True)).repeat_interleave(3, 0)

    def blur(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, channels, height, width = images.shape
        sigma = _uniform(n, low, high, images, g)
        padding = [kernel_w // 2, kernel_w // 2, kernel_h // 2, kernel_h // 2]
        planes = torch.nn.functional.pad(
            images.reshape(1, n * channels, height, width), padding, mode="reflect"
        )
        planes = torch.nn.functional.conv2d(
            planes, kernels(kernel_w, sigma).view(-1, 1, 1, kernel_w), groups=n * channels
        )
        planes = torch.nn.functional.conv2d(
            planes, kernels(kernel_h, sigma).view(-1, 1, kernel_h, 1), groups=n * channels
        )
        return planes.view(n, channels, height, width)

    return blur
