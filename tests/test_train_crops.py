"""App. A in genrep-train: which pixels of a stored image each training view holds.

Whole stored frames: a view with Tx is a random square crop anywhere in the frame, a view without
Tx the native frame's central 128 px. Stored crops (format 1) train exactly as they always did.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import as_format_v1, run_generate
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T
from train_helpers import FAST

from genrep.errors import DataError
from genrep.manifest import load_dataset
from genrep.shards import decode_sample, iter_raw_samples
from genrep.train.cli import main as train_main
from genrep.train.config import TrainConfig
from genrep.train.data import TrainingStream, ViewSpec, open_data
from genrep.train.trainer import train
from genrep.train.tx import SquareRandomResizedCrop

pytest_plugins = ["train_fixtures"]

PLUGIN = Path(__file__).with_name("frame_plugins.py")
ONE_STEP = ("--batch-size", "4", "--steps", "1")


def generate(out: Path, *flags: str) -> Path:
    """4 anchors with 1 gaussian neighbor, png (lossless, so pixels compare exactly)."""
    run_generate("--n", "4", "--format", "png", "--workers", "0", "--out", str(out), *flags)
    return out


def stored_anchors(folder: Path) -> dict[str, Image.Image]:
    """Sample key -> anchor image of a dataset."""
    _, paths = load_dataset(folder)
    samples = (decode_sample(raw) for path in paths for raw in iter_raw_samples(path))
    return {sample.key: sample.anchor for sample in samples}


def views_seen(run: Path, *args: str | Path) -> tuple[dict, list[dict]]:
    """Train like `genrep-train ARGS --out RUN`: the run's saved config and every batch the
    trainer was handed."""
    args = [*map(str, args), *FAST, "--out", str(run)]
    seen: list[dict] = []
    config = TrainConfig(**train_main.make_context("genrep-train", args).params)
    train(config, hooks=[lambda _step, batch: seen.append(batch)], log=lambda _message: None)
    return yaml.safe_load((run / "config.yaml").read_text()), seen


def test_views_without_tx_of_whole_frames_are_the_native_center_crop(tmp_path):
    """App. A: the central 128 px of the native frame, a crop and not a downsample."""
    native = ("--model-option", "resolution=160")
    full = generate(tmp_path / "full", *native)
    crop = generate(tmp_path / "crop", *native, "--frame", "center-crop", "--size", "128")
    crops = stored_anchors(crop)
    assert next(iter(stored_anchors(full).values())).size == (160, 160)
    for flags, side in [((), 112), (("--input-size", "128"), 128)]:
        config, seen = views_seen(
            tmp_path / str(side), full, "--objective", "inverter", *ONE_STEP, *flags
        )
        # genrep's default input: 0.875 of the paper's 128 px (the released code's 112)
        assert (config["input_size"], config["center_crop"], config["augment"]) == (
            side,
            128,
            False,
        )
        (batch,) = seen
        for key, views in zip(batch["key"], batch["images"], strict=True):
            expected = crops[key.split(":")[1]].resize((side, side), Image.BILINEAR)
            assert torch.equal(views[0], T.PILToTensor()(expected))


def test_default_input_size_of_whole_frames_is_the_paper_side(datasets, tmp_path):
    cpu = torch.device("cpu")
    full = open_data([generate(tmp_path / "full", "--model-option", "resolution=160")], None, None)
    assert (full.image_size, full.center_crop, full.train_side) == (160, 128, 128)
    for tx, side in [("genrep", 112), ("simclr", 128)]:
        assert TrainConfig(tx=tx, batch_size=4).resolve(full, 1, cpu).input_size == side
    # Frames stored smaller than 128 px (the tests' 32 px datasets) train at their own scale.
    small = open_data([datasets("gauss")], None, None)
    assert (small.center_crop, small.train_side) == (32, 32)
    assert TrainConfig(batch_size=4).resolve(small, 1, cpu).input_size == 28


def test_datasets_that_app_a_crops_differently_do_not_mix(tmp_path, make_dataset):
    full = make_dataset("full", "--n", "2")
    crops = make_dataset("crops", "--n", "2", "--frame", "center-crop")
    with pytest.raises(DataError, match="App. A crops differently.*--frame and --size"):
        open_data([full, crops], None, None)


def assert_same_batches(seen: list[dict], info, transform, neighbors: int) -> None:
    """The trainer's batches are those of a stream of 2 views made by `transform`."""
    spec = ViewSpec(2, transform, neighbors, False, False, None, strict=False, seed=0)
    stream = TrainingStream(info, spec, 0, 1, len(seen[0]["key"]), 0, shuffle_buffer=1000)
    loader = DataLoader(stream, batch_size=len(seen[0]["key"]), num_workers=0)
    for got, expected in zip(seen, itertools.islice(loader, len(seen)), strict=True):
        assert got["key"] == expected["key"]
        assert torch.equal(got["images"], expected["images"])


#: genrep-train's transforms before App. A cropping, as they were written (input 28 of 32 px)
OLD_TRANSFORMS = {
    ("genrep", True): T.Compose(
        [
            T.RandomResizedCrop(28, scale=(0.2, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.PILToTensor(),
        ]
    ),
    ("simclr", True): T.Compose(
        [
            T.RandomResizedCrop(32, scale=(0.08, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5),
            T.PILToTensor(),
        ]
    ),
    ("genrep", False): T.Compose([T.Resize(32), T.CenterCrop(28), T.PILToTensor()]),
}


@pytest.fixture(scope="module")
def v1(tmp_path_factory) -> Path:
    """A format 1 dataset: 32 px center crops of the 128 px frames, 1 gaussian neighbor."""
    out = tmp_path_factory.mktemp("v1") / "v1"
    run_generate("--n", "12", "--frame", "center-crop", "--size", "32", "--out", str(out))
    return as_format_v1(out)


@pytest.mark.parametrize("tx, augment", list(OLD_TRANSFORMS))
def test_format_1_datasets_train_exactly_as_before(v1, tmp_path, tx, augment):
    flags = ["--tx", tx, "--augment" if augment else "--no-augment", "--batch-size", "4"]
    config, seen = views_seen(tmp_path / "run", v1, *flags, "--steps", "3")
    assert config["center_crop"] is None and config["input_size"] == (32 if tx == "simclr" else 28)
    assert_same_batches(seen, open_data([v1], None, None), OLD_TRANSFORMS[tx, augment], 1)


def test_real_images_train_exactly_as_before(tmp_path):
    """Photos keep torchvision's RandomResizedCrop of the whole (here 48x40) image at 112 px."""
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "real" / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "real" / name / f"{i}.png")
    flags = ["--real", str(tmp_path / "real"), "--batch-size", "4", "--steps", "2"]
    config, seen = views_seen(tmp_path / "run", *flags)
    assert config["input_size"] == 112 and config["center_crop"] is None
    old = T.Compose(
        [T.RandomResizedCrop(112, scale=(0.2, 1.0)), *OLD_TRANSFORMS["genrep", True].transforms[1:]]
    )
    assert_same_batches(seen, open_data([], tmp_path / "real", None), old, 0)


def test_square_crop_of_a_square_frame_is_torchvisions_draw_for_draw():
    pixels = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    ours = SquareRandomResizedCrop(40, scale=(0.2, 1.0))
    theirs = T.RandomResizedCrop(40, scale=(0.2, 1.0))
    for seed in range(50):
        torch.manual_seed(seed)
        box, view = ours.crop_with_box(image)
        torch.manual_seed(seed)
        assert box == theirs.get_params(image, theirs.scale, theirs.ratio)
        torch.manual_seed(seed)
        assert np.array_equal(np.asarray(view), np.asarray(theirs(image)))


def test_square_crop_of_a_384x512_frame_is_square_and_reaches_the_whole_frame():
    """App. A's "random square crop" of the LSUN Car frames: area and aspect as on a 384 px square,
    anywhere in the 512 px width; torchvision's crop of the whole frame is larger and wider."""
    frame, scale, ratio = Image.new("RGB", (512, 384)), (0.2, 1.0), (3 / 4, 4 / 3)
    torch.manual_seed(0)
    boxes = np.array([SquareRandomResizedCrop.get_params(frame, scale, ratio) for _ in range(3000)])
    top, left, height, width = boxes.T
    area, aspect = height * width / 384**2, width / height
    assert area.min() >= 0.19 and area.max() <= 1.0  # scale 0.2-1 of the largest square
    assert aspect.min() >= 0.74 and aspect.max() <= 1.35  # ratio 3/4-4/3 (rounded to pixels)
    assert abs(np.log(aspect).mean()) < 0.02  # as often tall as wide
    assert (top + height).max() <= 384 and (left + width).max() == 512 and left.min() == 0
    # Crops of one size land anywhere along the width: the left and right thirds alike.
    large = width >= 300
    assert (left[large] < 40).any() and (left[large] + width[large] > 472).any()
    torch.manual_seed(0)
    theirs = np.array([T.RandomResizedCrop.get_params(frame, scale, ratio) for _ in range(3000)])
    their_area = theirs[:, 2] * theirs[:, 3] / 384**2
    assert their_area.max() > 1.25  # wider than any square that fits: squeezed into the input
    assert np.log(theirs[:, 3] / theirs[:, 2]).mean() > 0.03  # and wide more often than tall


def test_a_non_square_dataset_trains_on_square_views(tmp_path):
    frames = generate(tmp_path / "car-like", "--model", f"{PLUGIN}:build")
    assert next(iter(stored_anchors(frames).values())).size == (64, 48)
    info = open_data([frames], None, None)
    assert (info.image_size, info.center_crop, info.train_side) == (48, 48, 48)
    for flags in [(), ("--no-augment",)]:
        config, seen = views_seen(tmp_path / str(len(flags)), frames, *ONE_STEP, *flags)
        assert config["input_size"] == math.floor(48 * 0.875)
        assert seen[0]["images"].shape == (4, 2, 3, 42, 42)
