"""BigGAN-deep against its reference implementation, pytorch_pretrained_biggan (a test dependency).

The reference network of each published config is built with random weights, its state dict saved
and loaded by our loader; outputs must agree. Numerics are compared at channel width 8 (the
layouts, resolutions and attention placement of the three configs are kept) so the 256 and 512 px
configs run in seconds on CPU; the full-width configs are compared key by key and shape by shape on
the meta device, and biggan-deep-128 is run at full size through the registry and the CLI.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import pytorch_pretrained_biggan as pretrained  # the reference; a test extra
import torch

from genrep.errors import UsageError, WeightsError
from genrep.generate.models import GENERATORS, build_generator
from genrep.generate.models._layers import read_json
from genrep.generate.models.biggan import (
    BigGANDeep,
    bn_statistics_index,
    convert_state_dict,
    load_biggan_deep,
)

NAMES = ["biggan-deep-128", "biggan-deep-256", "biggan-deep-512"]


def _reference(config: dict, seed: int = 0) -> torch.nn.Module:
    """pytorch_pretrained_biggan's network with random weights and batch-norm statistics."""
    torch.manual_seed(seed)
    model = pretrained.BigGAN(pretrained.BigGANConfig.from_dict(copy.deepcopy(config)))
    with torch.no_grad():
        for name, tensor in model.named_buffers():
            if name.endswith("running_means"):
                tensor.normal_(0, 0.2)
            elif name.endswith("running_vars"):
                tensor.uniform_(0.5, 2.0)
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.fill_(0.5)  # attention on
            elif name.startswith("generator.bn."):
                param.normal_(1.0, 0.2)  # left uninitialised by the package
        # One training-mode pass runs spectral norm's power iteration, so u, v are consistent.
        model.train()(torch.zeros(1, config["z_dim"]), torch.eye(config["num_classes"])[:1], 1.0)
    return model.eval()


@pytest.mark.parametrize(
    "name, truncation, batch",
    [
        ("biggan-deep-128", 0.4, 2),
        ("biggan-deep-128", 0.415, 1),  # between grid points: the reference's own mixing
        ("biggan-deep-128", 0.58, 1),
        ("biggan-deep-256", 1.0, 1),
        ("biggan-deep-512", 0.6, 1),
    ],
)
def test_outputs_match_reference(name, truncation, batch, tmp_path):
    config = {**read_json(f"{name}-config.json"), "channel_width": 4}
    reference = _reference(config)
    path = tmp_path / "pytorch_model.bin"
    torch.save(reference.state_dict(), path)
    z = torch.randn(batch, 128).clamp(-2, 2) * truncation  # z ~ truncation * N_t(0, 1, 2)
    classes = torch.tensor([15, 994][:batch])
    ours = load_biggan_deep(path, config, bn_truncation=truncation)
    with torch.no_grad():
        expected = reference(z, torch.eye(1000)[classes], truncation)
        got = ours(z, classes)
    assert got.shape == (batch, 3, config["output_dim"], config["output_dim"])
    assert expected.std() > 0.1  # not saturated: the comparison means something
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_published_layouts_fit_full_size_network(name):
    config = read_json(f"{name}-config.json")
    with torch.device("meta"):
        reference = pretrained.BigGAN(pretrained.BigGANConfig.from_dict(copy.deepcopy(config)))
        ours = BigGANDeep(config)
    converted = convert_state_dict(reference.state_dict(), name)
    own = ours.state_dict()
    assert sorted(converted) == sorted(own)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in own.items()}
    assert (ours.z_dim, ours.num_classes, ours.resolution) == (128, 1000, config["output_dim"])


def test_statistics_between_grid_points_follow_the_reference(tmp_path):
    config = {**read_json("biggan-deep-128-config.json"), "channel_width": 4}
    path = tmp_path / "pytorch_model.bin"
    torch.save(_reference(config).state_dict(), path)
    model = load_biggan_deep(path, config, bn_truncation=0.415)  # 0.415 / 0.02 = 20.75
    bn = model.generator.layers[0].bn_0
    mean = bn.running_means[20] * 0.75 + bn.running_means[21] * 0.25  # as the reference: swapped
    var = bn.running_vars[20] * 0.75 + bn.running_vars[21] * 0.25
    torch.testing.assert_close(bn.inv_std, torch.rsqrt(var + 1e-4))
    torch.testing.assert_close(bn.shift, -mean * torch.rsqrt(var + 1e-4))
    row, weight = bn_statistics_index(0.58, 51)  # 0.58 / 0.02 = 28.999...: modf floors it
    assert row == 28 and weight < 1e-9  # so 0.58 uses the statistics of 0.56, as the reference
    assert bn_statistics_index(1.0, 51) == (50, 0.0)


def test_channels_last_under_autocast(tmp_path):
    """What `--precision bf16` does on CUDA (autocast + channels_last), exercised on CPU."""
    config = {**read_json("biggan-deep-128-config.json"), "channel_width": 4}
    path = tmp_path / "pytorch_model.bin"
    torch.save(_reference(config).state_dict(), path)
    model = load_biggan_deep(path, config)
    z, classes = torch.randn(2, 128).clamp(-2, 2), torch.tensor([1, 2])
    with torch.no_grad():
        reference = model(z, classes)
        model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            images = model(z, classes)
    assert images.shape == reference.shape and torch.isfinite(images).all()
    assert (images.float() - reference).abs().mean() < 0.05


def test_builder_checks_options_before_loading():
    for bad in ("1.5", "0", "abc"):
        with pytest.raises(UsageError, match="bn_truncation"):
            build_generator("biggan-deep-128", weights="/nonexistent", bn_truncation=bad)
    with pytest.raises(
        UsageError,
        match="'biggan-deep-128' does not take --model-option truncation_psi; "
        "it takes: --model-option bn_truncation",
    ):
        build_generator("biggan-deep-128", weights="/nonexistent", truncation_psi="0.5")


def test_registry_names_and_class_subsets():
    assert GENERATORS.canonical("biggan") == "biggan-deep-256"
    subset = BigGANDeep.class_subsets["imagenet100"]
    assert len(subset) == len(set(subset)) == 100 and all(0 <= c < 1000 for c in subset)
    assert {15, 151, 281, 407, 994} <= set(subset)  # robin, Chihuahua, tabby, ambulance, stinkhorn
    assert BigGANDeep.default_truncation == 2.0


@pytest.fixture(scope="module")
def full_size_128(tmp_path_factory) -> Path:
    """A biggan-deep-128 checkpoint in the published layout, random values (no reference init)."""
    config = read_json("biggan-deep-128-config.json")
    with torch.device("meta"):
        layout = pretrained.BigGAN(pretrained.BigGANConfig.from_dict(copy.deepcopy(config)))
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, meta in layout.state_dict().items():
        value = torch.randn(meta.shape, generator=generator)
        if key.endswith("running_vars"):
            value = value.abs() + 0.5
        elif key.endswith(("weight", "running_means")):
            value = value * 0.05
        state[key] = value
    for key in [k for k in state if k.endswith("weight_orig")]:  # u, v: one power iteration
        prefix, matrix = key[: -len("orig")], state[key].flatten(1)
        state[prefix + "v"] = torch.nn.functional.normalize(matrix.t() @ state[prefix + "u"], dim=0)
        state[prefix + "u"] = torch.nn.functional.normalize(matrix @ state[prefix + "v"], dim=0)
    path = tmp_path_factory.mktemp("biggan") / "biggan-deep-128-pytorch_model.bin"
    torch.save(state, path)
    return path


def test_full_size_128_through_registry(full_size_128):
    model = build_generator("biggan-deep-128", weights=str(full_size_128.parent))  # a folder
    assert model.weights_sha256 == hashlib.sha256(full_size_128.read_bytes()).hexdigest()
    assert model.describe()["bn_truncation"] == 1.0
    with torch.no_grad():
        z = torch.randn(1, 128)
        image = model(z, torch.tensor([207]))
        again = model(z, torch.tensor([207]))
    assert image.shape == (1, 3, 128, 128) and torch.isfinite(image).all()
    assert image.abs().max() <= 1 and torch.equal(image, again)
    with pytest.raises(ValueError, match="class-conditional"):
        model(z)


def test_strict_loading_reports_unknown_and_missing_keys(full_size_128, tmp_path):
    state = torch.load(full_size_128, weights_only=True)
    extra = tmp_path / "extra.bin"
    torch.save({**state, "generator.extra.weight": torch.zeros(1)}, extra)
    with pytest.raises(WeightsError, match="unexpected: generator.extra.weight"):
        build_generator("biggan-deep-128", weights=str(extra))
    missing = tmp_path / "missing.bin"
    del state["generator.layers.0.bn_0.running_means"]
    torch.save(state, missing)
    with pytest.raises(WeightsError, match="missing: generator.layers.0.bn_0.running_means"):
        build_generator("biggan-deep-128", weights=str(missing))


def test_generate_cli_with_biggan_imagenet100(full_size_128, tmp_path):
    from conftest import run_generate

    from genrep.manifest import load_dataset
    from genrep.shards import decode_sample, iter_raw_samples

    out = tmp_path / "ds"
    run_generate(
        "--model",
        "biggan-deep-128",
        "--weights",
        str(full_size_128),
        "--classes",
        "imagenet100",
        "--n",
        "2",
        "--view",
        "independent",
        "--size",
        "32",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--out",
        str(out),
    )
    manifest, shards = load_dataset(out)
    assert manifest["generator"]["name"] == "biggan-deep-128"
    assert (
        manifest["generator"]["weights_sha256"]
        == hashlib.sha256(full_size_128.read_bytes()).hexdigest()
    )
    samples = [decode_sample(raw) for shard in shards for raw in iter_raw_samples(shard)]
    assert len(samples) == 2
    for sample in samples:
        assert sample.label in BigGANDeep.class_subsets["imagenet100"]
        assert sample.anchor.size == (32, 32) and len(sample.neighbors) == 1
    json.dumps(manifest)  # the manifest stays plain JSON
