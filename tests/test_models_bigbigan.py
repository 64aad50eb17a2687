"""BigBiGAN: a small checkpoint in the layout of the published conversion (`BigBiGAN_x1.pth`,
Brock's BigGAN-PyTorch generator state dict: G_ch 4 instead of 96, everything else as published)."""

from __future__ import annotations

import hashlib
import itertools

import pytest
import torch

from genrep.errors import WeightsError
from genrep.generate.models import build_generator
from genrep.generate.models.bigbigan import fold_spectral_norm

WIDTH = 4  # G_ch
CHANNELS = [16 * WIDTH, 16 * WIDTH, 8 * WIDTH, 4 * WIDTH, 2 * WIDTH, WIDTH]  # 4 px -> 128 px
CHUNK, EMBED, ATTENTION_BLOCK = 20, 128, 3


def _sn(
    state: dict, prefix: str, shape: tuple[int, ...], gen: torch.Generator, bias: bool = True
) -> None:
    """An SNConv2d/SNLinear of BigGAN-PyTorch: weight, bias, u0 (and the logged sv0)."""
    state[prefix + "weight"] = torch.randn(shape, generator=gen) * 0.2
    if bias:
        state[prefix + "bias"] = torch.randn(shape[0], generator=gen) * 0.1
    u = torch.randn(1, shape[0], generator=gen)
    state[prefix + "u0"] = u / u.norm()
    state[prefix + "sv0"] = torch.ones(1)


def bigbigan_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {"shared.weight": torch.randn(1, EMBED, generator=gen).repeat(1000, 1)}
    _sn(state, "linear.", (CHANNELS[0] * 16, CHUNK), gen)
    for i, (cin, cout) in enumerate(itertools.pairwise(CHANNELS)):
        block = f"blocks.{i}.0."
        _sn(state, block + "conv1.", (cout, cin, 3, 3), gen)
        _sn(state, block + "conv2.", (cout, cout, 3, 3), gen)
        _sn(state, block + "conv_sc.", (cout, cin, 1, 1), gen)
        for bn, channels in (("bn1.", cin), ("bn2.", cout)):
            _sn(state, block + bn + "gain.", (channels, EMBED + CHUNK), gen, bias=False)
            _sn(state, block + bn + "bias.", (channels, EMBED + CHUNK), gen, bias=False)
            state[block + bn + "stored_mean"] = torch.randn(channels, generator=gen) * 0.1
            state[block + bn + "stored_var"] = torch.rand(channels, generator=gen) + 0.5
        if i == ATTENTION_BLOCK:
            attention = f"blocks.{i}.1."
            _sn(state, attention + "theta.", (cout // 8, cout, 1, 1), gen, bias=False)
            _sn(state, attention + "phi.", (cout // 8, cout, 1, 1), gen, bias=False)
            _sn(state, attention + "g.", (cout // 2, cout, 1, 1), gen, bias=False)
            _sn(state, attention + "o.", (cout, cout // 2, 1, 1), gen, bias=False)
            state[attention + "gamma"] = torch.tensor(0.7)
    state["output_layer.0.gain"] = torch.rand(WIDTH, generator=gen) + 0.5
    state["output_layer.0.bias"] = torch.randn(WIDTH, generator=gen) * 0.1
    state["output_layer.0.stored_mean"] = torch.randn(WIDTH, generator=gen) * 0.1
    state["output_layer.0.stored_var"] = torch.rand(WIDTH, generator=gen) + 0.5
    _sn(state, "output_layer.2.", (3, WIDTH, 3, 3), gen)
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("bigbigan") / "BigBiGAN_x1.pth"
    torch.save(bigbigan_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return build_generator("bigbigan", weights=str(checkpoint))


def test_loads_published_layout(model, checkpoint):
    assert (model.z_dim, model.resolution, model.num_classes) == (120, 128, 0)
    assert not model.conditional and model.default_truncation == 2.0
    assert model.default_sigma == 0.2  # unconditional gaussian views (paper, Sec. 4.1)
    assert model.weights_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    with torch.no_grad():
        images = model(torch.randn(2, 120))
    assert images.shape == (2, 3, 128, 128)
    assert images.abs().max() <= 1 and images.std() > 0.01


def test_deterministic_and_batch_independent(model):
    z = torch.randn(3, 120, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batch = model(z)
        again = model(z)
        alone = model(z[1:2])
    assert torch.equal(batch, again)
    torch.testing.assert_close(alone[0], batch[1], atol=1e-5, rtol=0)  # eval-mode batch norm


def test_every_z_chunk_is_used(model):
    z = torch.randn(1, 120, generator=torch.Generator().manual_seed(2)).repeat(7, 1)
    for chunk in range(6):  # row chunk + 1 moves one chunk of z; row 0 is the original
        z[chunk + 1, chunk * CHUNK : (chunk + 1) * CHUNK] += 1.0
    with torch.no_grad():
        images = model(z)
    for chunk in range(6):
        assert not torch.allclose(images[chunk + 1], images[0], atol=1e-4), chunk


def test_logged_singular_values_are_optional(checkpoint, model, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    path = tmp_path / "no_sv.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("sv0")}, path)
    z = torch.randn(2, 120)
    with torch.no_grad():
        assert torch.equal(build_generator("bigbigan", weights=str(path))(z), model(z))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update({"blocks.0.0.extra": torch.zeros(1)}), "unexpected: blocks.0.0.extra"),
        (lambda s: s.pop("blocks.2.0.bn1.stored_var"), "missing: blocks.2.0.bn1.stored_var"),
        (lambda s: s.pop("blocks.1.0.conv2.u0"), "blocks.1.0.conv2.u0 is missing"),
        (lambda s: s["shared.weight"].__setitem__(5, 0.0), "class-conditional"),
    ],
    ids=["extra-key", "missing-key", "missing-u0", "conditional"],
)
def test_strict_loading(checkpoint, tmp_path, change, message):
    state = torch.load(checkpoint, weights_only=True)
    change(state)
    path = tmp_path / "changed.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=message):
        build_generator("bigbigan", weights=str(path))


def test_spectral_norm_of_converged_u_is_one():
    weight = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(3))
    u_top = torch.linalg.svd(weight.flatten(1))[0][:, 0]
    folded = fold_spectral_norm(weight, u_top[None])
    assert torch.linalg.matrix_norm(folded.flatten(1), ord=2) == pytest.approx(1.0, rel=1e-5)


def test_channels_last_under_autocast(model):
    """What `--precision bf16` does on CUDA (autocast + channels_last), exercised on CPU."""
    z = torch.randn(2, 120, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = model(z)
        fast = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            images = fast(z)
        model.to(memory_format=torch.contiguous_format)
    assert images.shape == reference.shape and torch.isfinite(images).all()
    assert (images.float() - reference).abs().mean() < 0.05
