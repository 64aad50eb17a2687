"""StyleGAN2 from small checkpoints in both published layouts.

One set of random tensors is written (1) as a rosinality `.pt` (`g_ema` state dict + `latent_avg`)
and (2) as a stylegan2-ada-pytorch `.pkl`: objects pickled exactly as `torch_utils.persistence`
pickles them (`_reconstruct_persistent_obj(meta)` with the class source and `__dict__`), made here
without NVIDIA's code through stand-in modules that carry the real global names. Both must load
strictly and give the same images.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import itertools
import math
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from genrep.errors import UsageError, WeightsError
from genrep.generate.models import build_generator
from genrep.generate.models.stylegan2 import blur_kernel

Z_DIM = W_DIM = 8
MLP = 2
LR_MUL = 0.01


def make_tensors(channels: list[int], seed: int = 0) -> dict:
    """Random parameters of a StyleGAN2 generator, by role (layout-independent)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(shape, generator=gen) * scale

    def layer(cin, cout, res):
        return {
            "weight": randn(cout, cin, 3, 3),
            "affine_w": randn(cin, W_DIM),
            "affine_b": 1 + randn(cin, scale=0.1),
            "noise_strength": randn(scale=0.1),
            "bias": randn(cout, scale=0.1),
            "noise": randn(res, res),
        }

    def torgb(cin):
        return {
            "weight": randn(3, cin, 1, 1),
            "affine_w": randn(cin, W_DIM),
            "affine_b": 1 + randn(cin, scale=0.1),
            "bias": randn(3, scale=0.1),
        }

    blocks = [
        {
            "const": randn(channels[0], 4, 4),
            "conv1": layer(channels[0], channels[0], 4),
            "torgb": torgb(channels[0]),
        }
    ]
    for i, (cin, cout) in enumerate(itertools.pairwise(channels)):
        res = 8 * 2**i
        blocks.append(
            {"conv0": layer(cin, cout, res), "conv1": layer(cout, cout, res), "torgb": torgb(cout)}
        )
    mapping = [
        (randn(W_DIM, Z_DIM if i == 0 else W_DIM, scale=1 / LR_MUL), randn(W_DIM))
        for i in range(MLP)
    ]
    return {"blocks": blocks, "mapping": mapping, "w_avg": randn(W_DIM, scale=0.3)}


def rosinality_checkpoint(t: dict) -> dict:
    """The `{"g_ema": ..., "latent_avg": ...}` file of rosinality/stylegan2-pytorch."""
    sd = {}
    for i, (weight, bias) in enumerate(t["mapping"]):
        sd[f"style.{i + 1}.weight"], sd[f"style.{i + 1}.bias"] = weight, bias

    def conv(prefix, layer, noise_index, upsample):
        sd[prefix + "conv.weight"] = layer["weight"][None]
        sd[prefix + "conv.modulation.weight"] = layer["affine_w"]
        sd[prefix + "conv.modulation.bias"] = layer["affine_b"]
        if upsample:
            sd[prefix + "conv.blur.kernel"] = blur_kernel(4.0)
        sd[prefix + "noise.weight"] = layer["noise_strength"].reshape(1)
        sd[prefix + "activate.bias"] = layer["bias"]
        sd[f"noises.noise_{noise_index}"] = layer["noise"][None, None]

    def rgb(prefix, layer, upsample):
        sd[prefix + "conv.weight"] = layer["weight"][None]
        sd[prefix + "conv.modulation.weight"] = layer["affine_w"]
        sd[prefix + "conv.modulation.bias"] = layer["affine_b"]
        sd[prefix + "bias"] = layer["bias"].reshape(1, 3, 1, 1)
        if upsample:
            sd[prefix + "upsample.kernel"] = blur_kernel(4.0)

    first, *rest = t["blocks"]
    sd["input.input"] = first["const"][None]
    conv("conv1.", first["conv1"], 0, False)
    rgb("to_rgb1.", first["torgb"], False)
    for k, block in enumerate(rest):
        conv(f"convs.{2 * k}.", block["conv0"], 2 * k + 1, True)
        conv(f"convs.{2 * k + 1}.", block["conv1"], 2 * k + 2, False)
        rgb(f"to_rgbs.{k}.", block["torgb"], True)
    return {"g_ema": sd, "latent_avg": t["w_avg"]}


# --- a stylegan2-ada-pytorch snapshot, pickled the way torch_utils.persistence pickles ---------


def _reconstruct_persistent_obj(meta):  # never called: only its pickled name matters
    raise AssertionError("the test pickle is written, not read, with this stand-in")


class EasyDict(dict):
    pass


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
EasyDict.__module__ = "dnnlib.util"


@pytest.fixture
def nvidia_modules(monkeypatch):
    """`torch_utils.persistence` and `dnnlib.util` stand-ins, so pickle writes the real names."""
    names = {
        "torch_utils": {},
        "torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
        "dnnlib": {},
        "dnnlib.util": {"EasyDict": EasyDict},
    }
    for name, members in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(members)
        monkeypatch.setitem(sys.modules, name, module)


class Persistent:
    """Pickles like a persistent_class instance: (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, class_name, params=(), buffers=(), modules=(), source="", **attrs):
        self.class_name, self.source = class_name, source
        self.state = {
            "training": False,
            "_init_args": (),
            "_init_kwargs": EasyDict(attrs),
            "_parameters": collections.OrderedDict(
                (k, torch.nn.Parameter(v, requires_grad=False)) for k, v in params
            ),
            "_buffers": collections.OrderedDict(buffers),
            "_non_persistent_buffers_set": set(),
            "_modules": collections.OrderedDict(modules),
            "_forward_hooks": collections.OrderedDict(),
            **attrs,
        }

    def __reduce__(self):
        meta = {
            "type": "class",
            "version": 4,
            "module_src": self.source,
            "class_name": self.class_name,
            "state": self.state,
        }
        return _reconstruct_persistent_obj, (meta,)


def nvidia_snapshot(t: dict, source: str = "", conv_clamp=None) -> dict:
    resample = blur_kernel()

    def fc(weight, bias, lr=1.0, activation="linear"):
        return Persistent(
            "FullyConnectedLayer",
            params=[("weight", weight), ("bias", bias)],
            source=source,
            activation=activation,
            bias_gain=lr,
            weight_gain=np.float64(lr / math.sqrt(weight.shape[1])),
        )

    def layer(lay, up):
        return Persistent(
            "SynthesisLayer",
            source=source,
            params=[
                ("weight", lay["weight"]),
                ("noise_strength", lay["noise_strength"]),
                ("bias", lay["bias"]),
            ],
            buffers=[("resample_filter", resample), ("noise_const", lay["noise"])],
            modules=[("affine", fc(lay["affine_w"], lay["affine_b"]))],
            up=up,
            use_noise=True,
            activation="lrelu",
            conv_clamp=conv_clamp,
            act_gain=np.float64(math.sqrt(2)),
        )

    def torgb(lay):
        return Persistent(
            "ToRGBLayer",
            params=[("weight", lay["weight"]), ("bias", lay["bias"])],
            modules=[("affine", fc(lay["affine_w"], lay["affine_b"]))],
            conv_clamp=conv_clamp,
            source=source,
        )

    blocks = []
    for i, block in enumerate(t["blocks"]):
        res = 4 * 2**i
        modules = (
            [("conv1", layer(block["conv1"], 1))]
            if i == 0
            else [("conv0", layer(block["conv0"], 2)), ("conv1", layer(block["conv1"], 1))]
        )
        modules.append(("torgb", torgb(block["torgb"])))
        blocks.append(
            (
                f"b{res}",
                Persistent(
                    "SynthesisBlock",
                    params=[("const", block["const"])] if i == 0 else [],
                    buffers=[("resample_filter", resample)],
                    modules=modules,
                    in_channels=0 if i == 0 else 1,
                    architecture="skip",
                    resolution=res,
                    source=source,
                ),
            )
        )
    mapping = Persistent(
        "MappingNetwork",
        source=source,
        buffers=[("w_avg", t["w_avg"])],
        modules=[(f"fc{i}", fc(w, b, LR_MUL, "lrelu")) for i, (w, b) in enumerate(t["mapping"])],
        z_dim=Z_DIM,
        c_dim=0,
        w_dim=W_DIM,
        num_layers=MLP,
    )
    synthesis = Persistent("SynthesisNetwork", modules=blocks, source=source)
    res = 4 * 2 ** (len(t["blocks"]) - 1)
    g_ema = Persistent(
        "Generator",
        modules=[("synthesis", synthesis), ("mapping", mapping)],
        z_dim=Z_DIM,
        c_dim=0,
        w_dim=W_DIM,
        img_resolution=res,
        img_channels=3,
        source=source,
    )
    discriminator = Persistent(
        "Discriminator", params=[("b4.fc.weight", torch.randn(2, 2))], source=source
    )
    return {
        "G": g_ema,
        "D": discriminator,
        "G_ema": g_ema,
        "augment_pipe": None,
        "training_set_kwargs": EasyDict(path="lsun-car.zip", resolution=res),
    }


CHANNELS = [8, 8, 4]  # 4, 8, 16 px


@pytest.fixture(scope="module")
def tensors():
    return make_tensors(CHANNELS)


@pytest.fixture
def rosinality_file(tensors, tmp_path):
    path = tmp_path / "stylegan2-tiny.pt"
    torch.save(rosinality_checkpoint(tensors), path)
    return path


@pytest.fixture
def nvidia_file(tensors, tmp_path, nvidia_modules):
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(pickle.dumps(nvidia_snapshot(tensors)))
    return path


def test_rosinality_checkpoint(rosinality_file):
    model = build_generator("stylegan2", weights=str(rosinality_file))
    assert (model.z_dim, model.resolution, model.num_classes) == (Z_DIM, 16, 0)
    assert model.default_truncation is None and model.default_sigma == 0.2
    assert model.weights_sha256 == hashlib.sha256(rosinality_file.read_bytes()).hexdigest()
    z = torch.randn(3, Z_DIM)
    with torch.no_grad():
        images = model(z)
        assert torch.equal(images, model(z))  # constant noise maps: deterministic
        torch.testing.assert_close(model(z[2:]), images[2:], atol=1e-5, rtol=0)
    assert images.shape == (3, 3, 16, 16) and images.abs().max() <= 1 and images.std() > 0.01


def test_nvidia_snapshot_gives_the_same_images(rosinality_file, nvidia_file):
    z = torch.randn(4, Z_DIM)
    for psi in ("1", "0.7"):
        ours = build_generator("stylegan2", weights=str(rosinality_file), truncation_psi=psi)
        nvidia = build_generator("stylegan2", weights=str(nvidia_file), truncation_psi=psi)
        with torch.no_grad():
            torch.testing.assert_close(nvidia(z), ours(z), atol=1e-6, rtol=0)
    assert nvidia.weights_sha256 == hashlib.sha256(nvidia_file.read_bytes()).hexdigest()


def test_truncation_psi_pulls_towards_average_w(rosinality_file, tensors):
    z = torch.randn(2, Z_DIM)
    plain = build_generator("stylegan2", weights=str(rosinality_file))
    average = build_generator("stylegan2", weights=str(rosinality_file), truncation_psi="0")
    with torch.no_grad():
        assert not torch.allclose(plain(z)[0], plain(z)[1])
        images = average(z)  # psi 0: every z maps to w_avg, so to one image
        torch.testing.assert_close(images[0], images[1])
        w_avg_image = plain.net.synthesize(tensors["w_avg"][None]).clamp(-1, 1)
    torch.testing.assert_close(images[:1], w_avg_image)
    with pytest.raises(UsageError, match="truncation_psi"):
        build_generator("stylegan2", weights=str(rosinality_file), truncation_psi="strong")


def test_conv_clamp_of_ada_snapshots(tensors, tmp_path, nvidia_modules):
    clamped = tmp_path / "clamped.pkl"
    clamped.write_bytes(pickle.dumps(nvidia_snapshot(tensors, conv_clamp=0.5)))
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(nvidia_snapshot(tensors)))
    z = torch.randn(2, Z_DIM)
    with torch.no_grad():
        a = build_generator("stylegan2", weights=str(clamped))(z)
        b = build_generator("stylegan2", weights=str(plain))(z)
    assert not torch.allclose(a, b)


def test_rosinality_strict_loading(tensors, tmp_path):
    for change, message in [
        (lambda sd: sd.update({"convs.0.extra": torch.zeros(1)}), "unexpected: convs.0.extra"),
        (lambda sd: sd.pop("noises.noise_3"), "missing: noises.noise_3"),
        (lambda sd: sd.pop("to_rgb1.conv.modulation.bias"), "missing: to_rgb1.conv.modulation"),
    ]:
        checkpoint = rosinality_checkpoint(tensors)
        change(checkpoint["g_ema"])
        path = tmp_path / "changed.pt"
        torch.save(checkpoint, path)
        with pytest.raises(WeightsError, match=message):
            build_generator("stylegan2", weights=str(path))
    del checkpoint["g_ema"]
    torch.save(checkpoint, path)
    with pytest.raises(WeightsError, match="no g_ema"):
        build_generator("stylegan2", weights=str(path))


def test_missing_latent_avg_only_matters_with_truncation(tensors, tmp_path):
    """rosinality's train.py checkpoints: no latent_avg, and the options as a Namespace."""
    path = tmp_path / "train-checkpoint.pt"
    torch.save(
        {
            "g_ema": rosinality_checkpoint(tensors)["g_ema"],
            "args": argparse.Namespace(size=16, latent=8, n_mlp=2),
        },
        path,
    )
    assert build_generator("stylegan2", weights=str(path)).resolution == 16
    with pytest.raises(WeightsError, match="latent_avg"):
        build_generator("stylegan2", weights=str(path), truncation_psi="0.9")


def test_nvidia_snapshot_strict_loading(tensors, tmp_path, nvidia_modules):
    snapshot = nvidia_snapshot(tensors)
    g_ema = snapshot["G_ema"]
    block = g_ema.state["_modules"]["synthesis"].state["_modules"]["b8"]
    block.state["_buffers"]["mystery"] = torch.zeros(2)
    path = tmp_path / "extra.pkl"
    path.write_bytes(pickle.dumps(snapshot))
    with pytest.raises(WeightsError, match="synthesis.b8.mystery"):
        build_generator("stylegan2", weights=str(path))
    del block.state["_buffers"]["mystery"]
    g_ema.state["c_dim"] = 10
    path.write_bytes(pickle.dumps(snapshot))
    with pytest.raises(WeightsError, match="class-conditional"):
        build_generator("stylegan2", weights=str(path))


def test_malicious_snapshot_source_is_never_run(tensors, tmp_path, nvidia_modules):
    marker = tmp_path / "pwned"
    source = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(nvidia_snapshot(tensors, source=source)))
    model = build_generator("stylegan2", weights=str(path))  # the networks load as data...
    assert model.resolution == 16
    assert not marker.exists()  # ...and the class source shipped in the file never runs


def test_snapshot_naming_other_globals_is_refused(tmp_path, nvidia_modules):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (eval, (f"__import__('pathlib').Path({str(marker)!r}).touch()",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Evil()}))
    with pytest.raises(WeightsError, match="builtins.eval"):
        build_generator("stylegan2", weights=str(path))
    assert not marker.exists()


def test_stylegan2_needs_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="--weights"):
        build_generator("stylegan2")
    with pytest.raises(WeightsError, match="folder"):
        build_generator("stylegan2", weights=str(tmp_path))


def test_car_preset_crops_letterbox_and_truncates(tmp_path):
    t = make_tensors([4] * 8, seed=1)  # 4 px ... 512 px, as LSUN Car
    path = tmp_path / "stylegan2_car.pt"
    torch.save(rosinality_checkpoint(t), path)
    car = build_generator("stylegan2-car", weights=str(tmp_path))  # the folder holds the file
    generic = build_generator("stylegan2", weights=str(path), truncation_psi="0.9")
    assert car.resolution == 512 and car.z_dim == Z_DIM and car.default_sigma == 0.25
    assert car.describe()["truncation_psi"] == 0.9
    z = torch.randn(1, Z_DIM)
    with torch.no_grad():
        image = car(z)
        full = generic(z)
    assert image.shape == (1, 3, 384, 512)
    torch.testing.assert_close(image, full[:, :, 64:448])
    small = tmp_path / "small"
    small.mkdir()
    torch.save(rosinality_checkpoint(make_tensors(CHANNELS)), small / "stylegan2_car.pt")
    with pytest.raises(WeightsError, match="rows 64:448"):
        build_generator("stylegan2-car", weights=str(small))


def test_channels_last_under_autocast(rosinality_file):
    model = build_generator("stylegan2", weights=str(rosinality_file), truncation_psi="0.8")
    z = torch.randn(2, Z_DIM)
    with torch.no_grad():
        reference = model(z)
        model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            images = model(z)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert (images - reference).abs().mean() < 0.05


def test_rosinality_layout_of_the_car_network():
    """Key names and shapes of rosinality's 512 px, config-F generator (channel multiplier 2)."""
    from genrep.generate.models.stylegan2 import StyleGAN2Network

    with torch.device("meta"):
        net = StyleGAN2Network([512, 512, 512, 512, 512, 256, 128, 64], 512, 512, 8)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    # style 8 x 2, input 1, conv1 5, to_rgb1 4, convs 14 x 5 + 7 blur kernels, to_rgbs 7 x 5,
    # noises 15: the 153 tensors of rosinality's g_ema for LSUN Car
    assert len(shapes) == 16 + 1 + 5 + 4 + 77 + 35 + 15
    assert shapes["style.8.weight"] == (512, 512)
    assert shapes["convs.12.conv.weight"] == (64, 128, 3, 3)  # rosinality's (1, 64, 128, 3, 3)
    assert shapes["convs.12.conv.blur.kernel"] == (4, 4)
    assert shapes["to_rgbs.6.conv.weight"] == (3, 64, 1, 1)
    assert shapes["to_rgbs.6.upsample.kernel"] == (4, 4)
    assert shapes["noises.noise_14"] == (1, 1, 512, 512) and "noises.noise_15" not in shapes
    assert "to_rgb1.upsample.kernel" not in shapes and "convs.13.conv.blur.kernel" not in shapes
