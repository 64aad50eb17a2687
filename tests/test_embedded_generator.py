"""The embedded generator: a fixed, steerable, offline function of z with neighborhood structure."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from genrep.errors import UsageError
from genrep.generate.models import GENERATORS, build_generator
from genrep.generate.models.embedded import COLOR_PER_UNIT, SHIFT_PER_UNIT


@pytest.fixture(scope="module", params=[0, 1], ids=["plain", "fields"])
def generator(request):
    return build_generator("embedded", resolution=64, fields=request.param)


def test_registered_as_default_model_with_paper_like_defaults(generator):
    assert "embedded" in GENERATORS.names()
    assert generator.z_dim >= 64
    assert not generator.conditional and generator.default_sigma == 0.2
    assert build_generator("embedded").resolution == 128
    assert build_generator("embedded").fields == 0


def test_fixed_function_of_z(generator):
    z = torch.randn(4, generator.z_dim, generator=torch.Generator().manual_seed(1))
    first = generator(z)
    again = build_generator("embedded", resolution=64, fields=generator.fields)(z)
    assert first.shape == (4, 3, 64, 64)
    assert torch.equal(first, again)
    assert first.min() >= -1 and first.max() <= 1
    assert first.std() > 0.2  # not a flat image


def test_parameters_are_a_function_of_the_seed():
    a = build_generator("embedded", resolution=32, seed=1)
    b = build_generator("embedded", resolution=32, seed=2)
    assert a.weights_sha256 != b.weights_sha256
    assert a.weights_sha256 == build_generator("embedded", resolution=32, seed=1).weights_sha256


def test_pixels_do_not_depend_on_the_batch(generator):
    z = torch.randn(9, generator.z_dim, generator=torch.Generator().manual_seed(2))
    assert torch.equal(
        generator(z), torch.cat([generator(z[:4]), generator(z[4:5]), generator(z[5:])])
    )


def test_distance_grows_monotonically_with_latent_step(generator):
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(32, generator.z_dim, generator=gen)
    direction = torch.randn(32, generator.z_dim, generator=gen)
    anchor = generator(z)
    steps = [0.05, 0.1, 0.2, 0.5, 1, 2]
    distance = [(generator(z + s * direction) - anchor).abs().mean().item() for s in steps]
    assert all(a < b for a, b in itertools.pairwise(distance)), distance
    independent = (generator(torch.randn(32, generator.z_dim, generator=gen)) - anchor).abs().mean()
    assert independent > 5 * distance[0]
    assert independent > 0.3


def test_class_conditional_mode_has_own_parameters_per_class():
    generator = build_generator("embedded", classes=3, resolution=32)
    assert generator.num_classes == 3 and generator.default_sigma == 1.0
    z = torch.randn(1, generator.z_dim).repeat(3, 1)
    images = generator(z, torch.arange(3))
    assert (images[0] - images[1]).abs().mean() > 0.1
    assert (images[1] - images[2]).abs().mean() > 0.1
    with pytest.raises(ValueError, match="class-conditional"):
        generator(z)
    with pytest.raises(UsageError, match="number of classes"):
        build_generator("embedded", classes="dogs")


def _phase_correlation_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(dy, dx) such that b is a shifted by it (integer peak of the phase correlation)."""
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    cross = fb * np.conj(fa)
    corr = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    dy, dx = np.unravel_index(np.argmax(corr), corr.shape)
    size = a.shape[0]
    return (dy + size // 2) % size - size // 2, (dx + size // 2) % size - size // 2


def test_part_of_z_moves_content_spatially(generator):
    """Moving z along the shift-x direction translates the image by the expected pixel count."""
    z = torch.randn(8, generator.z_dim, generator=torch.Generator().manual_seed(4))
    step = 0.5  # in units of z: SHIFT_PER_UNIT * step of the half-width
    expected = SHIFT_PER_UNIT * step * generator.resolution / 2
    for axis, direction in (("x", generator.geometry_dirs[0]), ("y", generator.geometry_dirs[1])):
        moved = generator(z + step * direction.float())
        before = generator(z)
        shifts = [
            _phase_correlation_shift(before[i].mean(0).numpy(), moved[i].mean(0).numpy())
            for i in range(len(z))
        ]
        measured = np.median([s[1] if axis == "x" else s[0] for s in shifts])
        assert abs(measured - expected) <= 1.5, (axis, measured, expected)


def test_part_of_z_sets_colors(generator):
    z = torch.randn(16, generator.z_dim, generator=torch.Generator().manual_seed(5)) * 0.5
    before = generator(z)
    for channel in range(3):
        after = generator(z + 0.3 * generator.color_dirs[channel].float())
        change = (after - before).mean(dim=(0, 2, 3))
        assert change[channel] > 0.5 * 0.3 * COLOR_PER_UNIT
        others = [c for c in range(3) if c != channel]
        assert change[others].abs().max() < 0.5 * change[channel]


def test_device_is_where_parameters_or_buffers_live(generator):
    """The pipeline sends latents to `generator.device`: right for parameter-only networks too."""
    from torch import nn

    from genrep.generate.models import Generator

    class ParametersOnly(Generator):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1, device="meta"))

    assert ParametersOnly().device.type == "meta"
    assert generator.device == torch.device("cpu")


def test_fields_are_their_own_weights_over_the_same_network():
    plain = build_generator("embedded", resolution=32)
    fields = build_generator("embedded", resolution=32, fields=1)
    weaker = build_generator("embedded", resolution=32, fields=0.5)
    assert len({plain.weights_sha256, fields.weights_sha256, weaker.weights_sha256}) == 3
    assert (
        plain.weights_sha256 == build_generator("embedded", resolution=32, fields=0).weights_sha256
    )
    for name in ("w1", "w2", "w3", "frequency", "phase", "geometry_dirs", "color_dirs"):
        assert torch.equal(getattr(plain, name), getattr(fields, name)), name
    # The field directions drive no style: moving along them changes only the fields.
    assert fields.style_phase.T @ fields.field_dirs.T == pytest.approx(0, abs=1e-9)


def test_field_neighbors_keep_colors_and_vary_bend_and_light():
    """A step of std 0.5 along each field direction (std half a cycle of its phase) changes the image
    about as much as a Gaussian neighbor at sigma 0.3 of the plain network, while its chromaticity (the
    color of the light, not its brightness) changes less than half as much as that neighbor's."""
    gen = torch.Generator().manual_seed(6)
    plain = build_generator("embedded", resolution=64)
    fields = build_generator("embedded", resolution=64, fields=1)
    z = torch.randn(32, fields.z_dim, generator=gen)
    unit_dirs = fields.field_dirs.float() / (2 * math.pi)
    bent = fields(z + 0.5 * torch.randn(32, len(unit_dirs), generator=gen) @ unit_dirs)
    neighbor = plain(z + 0.3 * torch.randn(32, plain.z_dim, generator=gen))

    def chromaticity(images):
        light = (images + 1).mean((2, 3))
        return light / light.sum(1, keepdim=True)

    def changes(after, before):
        pixels = (after - before).abs().mean()
        return pixels, (chromaticity(after) - chromaticity(before)).abs().mean()

    bent_pixels, bent_colors = changes(bent, fields(z))
    neighbor_pixels, neighbor_colors = changes(neighbor, plain(z))
    assert bent_pixels > 0.8 * neighbor_pixels
    assert bent_colors < 0.5 * neighbor_colors


def test_class_conditional_fields_keep_pixels_independent_of_the_batch():
    generator = build_generator("embedded", classes=3, resolution=24, fields=1)
    z = torch.randn(5, generator.z_dim, generator=torch.Generator().manual_seed(7))
    y = torch.tensor([0, 1, 2, 1, 0])
    images = generator(z, y)
    assert images.shape == (5, 3, 24, 24)
    assert torch.equal(images, torch.cat([generator(z[:2], y[:2]), generator(z[2:], y[2:])]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fields": -1}, "fields must be >= 0 and <= 1.25, got -1"),
        ({"fields": 2}, "fields must be >= 0 and <= 1.25, got 2"),
        ({"fields": "strong"}, "fields must be a number"),
        ({"fields": True}, "fields must be a number"),
        ({"fields": float("nan")}, "fields must be a finite number"),
        ({"fields": 1, "z_dim": 16}, "z_dim >= 25"),
    ],
)
def test_bad_fields_options_are_one_line_errors(options, message):
    with pytest.raises(UsageError, match=message):
        build_generator("embedded", resolution=16, **options)
