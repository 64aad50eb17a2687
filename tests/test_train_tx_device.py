"""`genrep-train --tx-on device`: Tx batched on the training device, run here on the CPU (the same
code as on CUDA), against the per-image PIL path of the DataLoader workers.

Random Tx cannot match image for image, so the two paths are compared as distributions: crop
areas, aspects and positions, and the colors of many views of one image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image
from scipy.stats import ks_2samp
from train_helpers import FAST

from genrep.train.cli import main as train_main
from genrep.train.config import TrainConfig
from genrep.train.trainer import Distributed, device_tx_generator, train
from genrep.train.tx import BatchedTx, SquareRandomResizedCrop, build_recipe
from genrep.train.tx.batched import crop_boxes

pytest_plugins = ["train_fixtures"]

RATIO = (3 / 4, 4 / 3)
VIEWS = 800


def crop_statistics(boxes: torch.Tensor, side: int) -> dict[str, np.ndarray]:
    top, left, h, w = boxes.double().unbind(1)
    return {
        "area": (h * w / side**2).numpy(),
        "log aspect": torch.log(w / h).numpy(),
        "top": top.numpy(),
        "left": left.numpy(),
    }


@pytest.mark.parametrize(("frame", "scale"), [((48, 64), (0.08, 1.0)), ((40, 40), (0.2, 1.0))])
def test_crop_boxes_are_drawn_as_the_pil_path_draws_them(frame, scale):
    """Areas, aspects and positions of the batched crops follow SquareRandomResizedCrop's
    (a 4:3 frame too: the square crop lies anywhere along its long axis)."""
    torch.manual_seed(0)
    reference = torch.tensor(
        [
            SquareRandomResizedCrop.get_params(torch.empty(3, *frame), scale, RATIO)
            for _ in range(3000)
        ]
    )
    batched = crop_boxes(6000, frame, scale, RATIO, torch.Generator().manual_seed(1))
    side = min(frame)
    ours, theirs = crop_statistics(batched, side), crop_statistics(reference, side)
    for name in ours:
        assert ks_2samp(ours[name], theirs[name]).statistic < 0.05, name
    top, left, h, w = batched.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= frame[0]).all() and (left + w <= frame[1]).all()
    assert (left + w).max() == frame[1]  # crops reach the far end of the long axis


def test_crop_boxes_fall_back_to_the_whole_square():
    """A scale no try can meet falls back, as torchvision does, to the largest allowed crop."""
    boxes = crop_boxes(50, (32, 48), (2.0, 3.0), RATIO, torch.Generator().manual_seed(0))
    assert (boxes[:, 2] == 32).all() and (boxes[:, 3] == 32).all()
    assert len(set(boxes[:, 1].tolist())) > 5  # still anywhere along the long axis


def smooth_frame() -> np.ndarray:
    """A 64 px frame of smooth, varied colors (every Tx step changes it measurably)."""
    y, x = np.mgrid[0:64, 0:64]
    return np.stack([x * 4, y * 4, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)


def color_statistics(views: torch.Tensor) -> dict[str, np.ndarray]:
    """Per view: mean and spread of each channel, and whether it is gray."""
    views = views.double()
    return {
        "mean": views.mean((2, 3)).numpy(),
        "std": views.std((2, 3)).numpy(),
        "gray": (views[:, 0] == views[:, 1]).all(2).all(1).double().numpy()[:, None],
    }


def pil_views(recipe: str, frame: np.ndarray, size: int) -> torch.Tensor:
    transform = build_recipe(recipe).augment(size)
    image = Image.fromarray(frame)
    torch.manual_seed(0)
    return torch.stack([transform(image) for _ in range(VIEWS)])


def device_views(recipe: str, frame: np.ndarray, size: int) -> torch.Tensor:
    frames = torch.from_numpy(frame).permute(2, 0, 1).expand(VIEWS, -1, -1, -1).contiguous()
    return build_recipe(recipe).batched(size)(frames, torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def views() -> dict[tuple[str, str], torch.Tensor]:
    frame = smooth_frame()
    return {
        (recipe, path): make(recipe, frame, 56)
        for recipe in ("genrep", "simclr")
        for path, make in (("pil", pil_views), ("device", device_views))
    }


def distance(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """The largest KS statistic over channels of each color statistic of two sets of views."""
    ours, theirs = color_statistics(a), color_statistics(b)
    return {
        name: max(
            ks_2samp(ours[name][:, c], theirs[name][:, c], method="asymp").statistic
            for c in range(ours[name].shape[1])
        )
        for name in ours
    }


@pytest.mark.parametrize("recipe", ["genrep", "simclr"])
def test_device_tx_colors_follow_the_pil_path(views, recipe):
    """Jitter, grayscale, blur and crop give views whose colors are distributed as the PIL
    path's; the other recipe's views are far off by the same measure (the test can fail)."""
    device = views[recipe, "device"]
    assert device.dtype == torch.uint8 and device.shape == (VIEWS, 3, 56, 56)
    same = distance(device, views[recipe, "pil"])
    assert max(same.values()) < 0.1, same
    other = "simclr" if recipe == "genrep" else "genrep"
    assert max(distance(device, views[other, "pil"]).values()) > 0.15


def test_device_tx_is_a_function_of_the_step():
    """A resumed run draws the same Tx at a step (same device); another step draws others."""
    config = TrainConfig(seed=3)
    env = Distributed(0, 1, 0, torch.device("cpu"))
    frames = torch.from_numpy(smooth_frame()).permute(2, 0, 1).expand(8, -1, -1, -1).contiguous()
    tx = build_recipe("simclr").batched(32)
    first = tx(frames, device_tx_generator(config, env, 5))
    assert torch.equal(first, tx(frames, device_tx_generator(config, env, 5)))
    assert not torch.equal(first, tx(frames, device_tx_generator(config, env, 6)))


def run(datasets, tmp_path, monkeypatch, *flags: str) -> tuple[dict, list, list]:
    """Train 2 steps; the run's config, the batches the workers delivered and what the batched
    Tx returned."""
    made: list[torch.Tensor] = []
    call = BatchedTx.__call__
    monkeypatch.setattr(
        BatchedTx, "__call__", lambda self, *a: made.append(call(self, *a)) or made[-1]
    )
    out = tmp_path / "run"
    args = [str(datasets("gauss")), "--batch-size", "4", "--steps", "2", *FAST, *flags]
    seen: list[dict] = []
    config = TrainConfig(
        **train_main.make_context("genrep-train", [*args, "--out", str(out)]).params
    )
    train(config, hooks=[lambda _step, batch: seen.append(batch)], log=lambda _message: None)
    return yaml.safe_load((out / "config.yaml").read_text()), seen, made


def test_tx_on_device_trains_on_frames_the_workers_only_decode(datasets, tmp_path, monkeypatch):
    saved, seen, made = run(datasets, tmp_path, monkeypatch, "--tx-on", "device")
    assert saved["tx_on"] == "device"
    assert [tuple(batch["images"].shape) for batch in seen] == [(4, 3, 3, 32, 32)] * 2
    assert [tuple(views.shape) for views in made] == [(12, 3, 28, 28)] * 2


def test_tx_on_auto_keeps_the_workers_on_cpu(datasets, tmp_path, monkeypatch):
    saved, seen, made = run(datasets, tmp_path, monkeypatch)
    assert saved["tx_on"] == "workers" and not made
    assert tuple(seen[0]["images"].shape) == (4, 3, 3, 28, 28)


def test_tx_on_device_refuses_real_images(tmp_path):
    """Photos differ in size: they cannot be batched before their crop."""
    (tmp_path / "real" / "a").mkdir(parents=True)
    Image.fromarray(smooth_frame()).save(tmp_path / "real" / "a" / "x.png")
    args = ["--real", str(tmp_path / "real"), "--tx-on", "device", "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(train_main, [*args, *FAST])
    assert result.exit_code == 2, result.output
    assert "--tx-on workers" in result.output and len(result.output.strip().splitlines()) == 1
