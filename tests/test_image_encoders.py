"""`genrep-generate --encoder`: JPEG bytes from Pillow (CPU pool) or torchvision (the generator's
device: nvJPEG on CUDA, libjpeg on CPU, the same code path)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_generate

from genrep.manifest import load_dataset
from genrep.shards import decode_sample, iter_raw_samples


def _images(folder) -> np.ndarray:
    _, paths = load_dataset(folder)
    views = []
    for path in paths:
        for raw in iter_raw_samples(path):
            sample = decode_sample(raw)
            views += [np.asarray(image) for image in (sample.anchor, *sample.neighbors)]
    return np.stack(views).astype(np.float64)


def _shard_bytes(folder) -> list[bytes]:
    _, paths = load_dataset(folder)
    return [path.read_bytes() for path in paths]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The same 6 anchors (+1 neighbor) at 64 px: lossless PNG, and JPEG from each encoder."""
    root = tmp_path_factory.mktemp("encoders")
    made = {}
    for name, flags in {
        "png": ("--format", "png"),
        "pil": ("--encoder", "pil"),
        "torchvision": ("--encoder", "torchvision"),
    }.items():
        made[name] = root / name
        run_generate(
            "--n", "6", "--shard-size", "4", "--size", "64", "--device", "cpu", "--workers", "0",
            "--out", str(made[name]), *flags,
        )  # fmt: skip
    return made


def _psnr(images: np.ndarray, truth: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((images - truth) ** 2)))


def test_torchvision_encoder_is_as_faithful_as_pillow(datasets):
    """Both encoders' JPEGs against the lossless pixels: torchvision's is a little further off
    (it subsamples chroma 4:2:0 where Pillow keeps 4:4:4 at quality >= 90) but close."""
    truth = _images(datasets["png"])
    pil, torchvision = _images(datasets["pil"]), _images(datasets["torchvision"])
    assert pil.shape == torchvision.shape == truth.shape == (12, 64, 64, 3)
    assert _psnr(pil, truth) > 35
    assert _psnr(torchvision, truth) > max(30, _psnr(pil, truth) - 8)
    assert np.abs(torchvision - truth).mean() < 5
    assert _psnr(torchvision, pil) > 30
    assert _shard_bytes(datasets["pil"]) != _shard_bytes(datasets["torchvision"])


def test_encoder_is_part_of_the_dataset_identity(datasets):
    manifest, _ = load_dataset(datasets["torchvision"])
    assert manifest["image"]["encoder"] == "torchvision-cpu"
    assert load_dataset(datasets["pil"])[0]["image"]["encoder"] == "pil"
    result = run_generate(
        "--n", "6", "--shard-size", "4", "--size", "64", "--device", "cpu", "--encoder", "pil",
        "--out", str(datasets["torchvision"]), expect_ok=False,
    )  # fmt: skip
    assert result.exit_code == 2 and "differs in: image" in result.output


def test_torchvision_encoder_is_byte_reproducible(datasets, tmp_path):
    again = tmp_path / "again"
    run_generate(
        "--n", "6", "--shard-size", "4", "--size", "64", "--device", "cpu",
        "--encoder", "torchvision", "--batch-size", "5", "--out", str(again),
    )  # fmt: skip
    assert _shard_bytes(again) == _shard_bytes(datasets["torchvision"])


def test_torchvision_encoder_writes_jpeg_only(tmp_path):
    result = run_generate(
        "--n", "2", "--encoder", "torchvision", "--format", "png", "--out", str(tmp_path / "x"),
        expect_ok=False,
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "--format jpg" in result.output
