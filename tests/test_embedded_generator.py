"""The embedded generator: a fixed, steerable, offline function of z with neighborhood structure."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from genrep.errors import UsageError
from genrep.generate.models import GENERATORS, build_generator
from genrep.generate.models.embedded import COLOR_PER_UNIT, SHIFT_PER_UNIT


@pytest.fixture(scope="module")
def generator():
    return build_generator("embedded", resolution=64)


def test_registered_as_default_model_with_paper_like_defaults(generator):
    assert "embedded" in GENERATORS.names()
    assert generator.z_dim >= 64
    assert not generator.conditional and generator.default_sigma == 0.2
    assert build_generator("embedded").resolution == 128


def test_fixed_function_of_z(generator):
    z = torch.randn(4, generator.z_dim, generator=torch.Generator().manual_seed(1))
    first, again = generator(z), build_generator("embedded", resolution=64)(z)
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
