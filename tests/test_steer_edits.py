"""The pixel-space edits T_i of App. B: each checked against an independent torchvision/torch reference,
their masks, their composition, and the masked loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from genrep.generate.edits import EDIT_NAMES, apply_edits, compose, masked_mse, warp


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Smooth random RGB images in [-1, 1] (upsampled noise), so interpolation errors stay small."""
    noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return 0.8 * torch.tanh(
        0.5 * F.interpolate(noise, size=48, mode="bicubic", align_corners=False)
    )


def _close_on(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    assert mask.sum() > 0
    assert float(((a - b).abs() * mask).max()) <= atol


def test_shift_moves_content_and_masks_the_uncovered_strip(images):
    out, mask = apply_edits(
        images, {"shift_x": torch.full((4,), 0.25), "shift_y": torch.full((4,), -0.125)}
    )
    # +25% of 48 px = 12 px right, -12.5% = 6 px up
    _close_on(mask, out, torch.roll(images, shifts=(-6, 12), dims=(2, 3)), 1e-5)
    assert mask[:, :, :, :12].sum() == 0 and mask[:, :, 42:, :].sum() == 0
    assert float(mask.mean()) == pytest.approx((1 - 0.25) * (1 - 0.125))


def test_zoom_in_is_a_center_crop_resized_and_zoom_out_a_padded_resize(images):
    out, mask = apply_edits(images, {"zoom": torch.full((4,), 0.5)})
    crop = F.interpolate(images[:, :, 12:36, 12:36], size=48, mode="bilinear", align_corners=False)
    assert bool(mask.all())
    # F.interpolate clamps at the crop border; inside, both sample the same points
    _close_on(mask[..., 1:-1, 1:-1], out[..., 1:-1, 1:-1], crop[..., 1:-1, 1:-1], 1e-5)

    out, mask = apply_edits(images, {"zoom": torch.full((4,), 2.0)})
    small = F.interpolate(images, size=24, mode="bilinear", align_corners=False, antialias=True)
    assert float(mask.mean()) == pytest.approx(0.25)
    assert bool(mask[..., 12:36, 12:36].all())
    # both low-pass before subsampling (gaussian here, triangle in F.interpolate): close, not equal
    assert float((out[..., 12:36, 12:36] - small).abs().mean()) < 0.02


def test_zoom_out_is_antialiased(images):
    checker = (torch.arange(48)[:, None] + torch.arange(48)[None]) % 2 * 1.6 - 0.8
    checker = checker.expand(1, 3, 48, 48).contiguous()
    factor = {"zoom": torch.tensor([3.0])}
    blurred, mask = apply_edits(checker, factor)
    aliased, _ = apply_edits(checker, factor, antialias=False)
    inside = mask.bool().expand_as(blurred)
    assert float(blurred[inside].std()) < 0.1 < float(aliased[inside].std())


def test_rotate_2d_matches_torchvision(images):
    angles = torch.tensor([20.0, -10.0, 30.0, 5.0])
    out, mask = apply_edits(images, {"rotate_2d": angles})
    ref = torch.stack(
        [
            TF.rotate(image, float(angle), interpolation=InterpolationMode.BILINEAR)
            for image, angle in zip(images, angles, strict=True)
        ]
    )
    _close_on(mask, out, ref, 1e-4)
    # the corners rotate out of the frame: never valid
    assert mask[:, :, 0, 0].sum() == 0 and mask[:, :, -1, -1].sum() == 0
    assert mask[1].mean() > mask[2].mean()  # smaller angle, less lost


def test_rotate_3d_is_the_perspective_warp_of_a_turned_plane(images):
    phi = 40.0
    matrix, _ = compose({"rotate_3d": torch.tensor([phi])}, 1, 48, 48)
    corners = torch.tensor(
        [[-24.0, -24, 1], [24, -24, 1], [24, 24, 1], [-24, 24, 1]], dtype=torch.float64
    )
    moved = corners @ matrix[0].T
    end = (moved[:, :2] / moved[:, 2:] + 24).tolist()
    start = (corners[:, :2] + 24).tolist()
    ref = TF.perspective(images[0], start, end, interpolation=InterpolationMode.BILINEAR)
    # (without the low-pass that the foreshortened side gets by default)
    out, mask = apply_edits(images[:1], {"rotate_3d": torch.tensor([phi])}, antialias=False)
    _close_on(mask[0], out[0], ref, 1e-4)
    # the edge turned away shrinks (foreshortening): its side is narrower than the near one
    rows = mask[0, 0].sum(0)
    assert 0.5 < float(mask.mean()) < 0.95
    assert rows[rows > 0][0] != rows[rows > 0][-1]
    # focal length half the diagonal, as Jahanian et al.: x' = f x cos / (x sin + f)
    f = math.hypot(48, 48) / 2
    x = 24.0
    expected = f * x * math.cos(math.radians(phi)) / (x * math.sin(math.radians(phi)) + f)
    assert float(moved[1, 0] / moved[1, 2]) == pytest.approx(expected)


def test_color_adds_per_channel_offsets_and_clamps(images):
    out, mask = apply_edits(
        images, {"color_r": torch.full((4,), 0.3), "color_b": torch.full((4,), -0.2)}
    )
    assert bool(mask.all())
    assert torch.allclose(out[:, 0], (images[:, 0] + 0.3).clamp(-1, 1), atol=1e-6)
    assert torch.allclose(out[:, 1], images[:, 1], atol=1e-6)
    assert torch.allclose(out[:, 2], (images[:, 2] - 0.2).clamp(-1, 1), atol=1e-6)
    assert float(out.max()) <= 1 and float(out.min()) >= -1


def test_per_image_alphas_in_one_batch_equal_one_image_at_a_time(images):
    alphas = {
        "shift_x": torch.tensor([0.1, -0.2, 0.0, 0.3]),
        "zoom": torch.tensor([0.7, 1.5, 2.5, 1.0]),
        "rotate_2d": torch.tensor([10.0, -25.0, 0.0, 3.0]),
        "rotate_3d": torch.tensor([0.0, 20.0, -40.0, 5.0]),
        "color_g": torch.tensor([0.1, 0.0, -0.3, 0.2]),
    }
    out, mask = apply_edits(images, alphas)
    for i in range(4):
        one, one_mask = apply_edits(images[i : i + 1], {k: v[i : i + 1] for k, v in alphas.items()})
        assert torch.allclose(out[i], one[0], atol=1e-5) and torch.equal(mask[i], one_mask[0])


def test_composite_equals_the_edits_applied_one_after_another(images):
    """The mask follows every edit: what a step pushes out of the frame stays invalid."""
    steps = [
        {"rotate_2d": torch.full((4,), 15.0)},
        {"zoom": torch.full((4,), 0.8)},
        {"shift_x": torch.full((4,), 0.1)},
    ]
    sequential, mask = images, None
    for step in steps:
        sequential, mask = apply_edits(sequential, step, mask=mask)
    composite, composite_mask = apply_edits(images, {k: v for s in steps for k, v in s.items()})
    assert bool((mask <= composite_mask).all())  # one resampling loses no more than three
    assert mask.sum() > 0.5 * mask.numel()
    # three bilinear resamplings against one: close on average, a few hundredths at most
    error = (sequential - composite).abs() * mask
    assert float(error.sum() / mask.sum() / 3) < 0.01 and float(error.max()) < 0.1


def test_masked_mse_counts_valid_pixels_only(images):
    target, mask = apply_edits(images, {"shift_x": torch.full((4,), 0.5)})
    garbage = torch.where(mask.bool(), target, torch.full_like(target, 5.0))
    assert float(masked_mse(target, garbage, mask)) == 0.0
    off = target + 0.1 * mask
    assert float(masked_mse(off, target, mask)) == pytest.approx(0.01, rel=1e-4)


def test_warp_marks_points_behind_the_camera_invalid():
    matrix = torch.eye(3, dtype=torch.float64)[None].clone()
    matrix[0, 2, 0] = 1 / 4  # x' = x / (x / 4 + 1): x' > 4 px would come from behind the camera,
    # where the projection x = x' / (1 - x' / 4) lands inside the frame again (x' = 12 -> x = -6)
    _, mask = warp(torch.ones(1, 1, 32, 32), matrix)
    columns = mask[0, 0].amax(0)
    assert columns[16 + 4 :].sum() == 0 and bool(columns[: 16 + 2].all())


def test_unknown_walk_names_are_refused(images):
    with pytest.raises(ValueError, match="unknown steering walk"):
        apply_edits(images, {"shear": torch.zeros(4)})
    assert EDIT_NAMES == ("color", "rotate_3d", "rotate_2d", "zoom", "shift_x", "shift_y")
    with pytest.raises(ValueError, match="RGB"):
        apply_edits(images[:, :1], {"color_r": np.zeros(4)})
