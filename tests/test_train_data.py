"""The training input stream: splitting over ranks and workers, resuming, bad samples, safety."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch.utils.data import DataLoader
from train_helpers import FAST, copy_dataset, read_log, rewrite_shard

from genrep.errors import DataError, UsageError
from genrep.train.cli import main as train_main
from genrep.train.config import TrainConfig
from genrep.train.data import TrainingStream, ViewSpec, open_data
from genrep.train.tx import build_recipe

pytest_plugins = ["train_fixtures"]


def batches(
    info,
    *,
    rank=0,
    world=1,
    workers=0,
    batch=4,
    steps=8,
    start=0,
    augment=False,
    views=1,
    strict=False,
    labels=False,
):
    recipe = build_recipe("genrep")
    spec = ViewSpec(
        views=views,
        transform=recipe.augment(28) if augment else recipe.plain(28, 32),
        neighbors=info.neighbors,
        needs_latents=False,
        needs_labels=labels,
        label_index={c: i for i, c in enumerate(info.classes or [])} or None,
        strict=strict,
        seed=0,
    )
    stream = TrainingStream(info, spec, rank, world, batch, start, shuffle_buffer=16)
    return list(itertools.islice(DataLoader(stream, batch_size=batch, num_workers=workers), steps))


def keys(batch_list) -> list[str]:
    return [key for batch in batch_list for key in batch["key"]]


def test_ranks_and_workers_split_uneven_shards_disjointly(datasets):
    # 3 shards (30, 30, 4 anchors) for 2 ranks x 2 workers = 4 streams: more streams than shards.
    info = open_data([datasets("cond")], None, None)
    per_rank = info.epoch_size // 2 // 4  # batches of 4 in one epoch of one rank
    seen = [keys(batches(info, rank=rank, world=2, workers=2, steps=per_rank)) for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 32
    assert len(set(seen[0])) == len(set(seen[1])) == 32  # no repeats within the epoch
    assert not set(seen[0]) & set(seen[1])  # disjoint ranks
    assert len(set(seen[0]) | set(seen[1])) == info.epoch_size  # every sample once


def test_epochs_reshuffle_and_a_resumed_stream_continues_exactly(datasets):
    info = open_data([datasets("gauss")], None, None)
    full = batches(info, workers=2, steps=32, augment=True, views=2)  # two epochs
    first, second = keys(full[:16]), keys(full[16:])
    assert len(set(first)) == info.epoch_size and set(first) == set(second)
    assert first != second  # each epoch comes in its own order
    resumed = batches(info, workers=2, steps=10, start=14, augment=True, views=2)
    assert len(resumed) == 10
    for expected, got in zip(full[14:24], resumed, strict=True):
        assert expected["key"] == got["key"]
        assert torch.equal(expected["images"], got["images"])  # same Tx too


def _break_samples(raw):
    key = int(raw["__key__"])
    if key == 60:
        raw["anchor.jpg"] = b"not a jpeg"
    elif key == 61:
        del raw["neighbor_1.jpg"]  # K=2 dataset, one view missing
    elif key == 62:
        del raw["neighbor_0.jpg"]
    return raw


def test_bad_samples_are_skipped_and_counted_or_fatal_with_strict(datasets, tmp_path):
    folder = copy_dataset(datasets("gauss"), tmp_path / "broken")
    rewrite_shard(folder, "shard-000003.tar", _break_samples)
    info = open_data([folder], None, None)
    epoch = batches(info, steps=16, batch=4, views=3)  # 64 raw samples, 3 of them bad
    seen = keys(epoch)
    assert sum(int(b["skipped"].sum()) for b in epoch) == 3
    assert not {"broken/shard-000003.tar:0000000" + k for k in ("60", "61", "62")} & set(seen)
    with pytest.raises(DataError, match="shard-000003.tar"):
        batches(info, steps=16, batch=4, views=3, strict=True, workers=1)
    # From a DataLoader worker to the command line: one line naming the shard, no traceback.
    result = CliRunner().invoke(
        train_main,
        [
            str(folder),
            *FAST,
            "--workers",
            "1",
            "--strict",
            "--batch-size",
            "64",
            "--steps",
            "1",
            "--input-size",
            "16",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    # A DataError (exit 1) rebuilt from the worker's traceback text: only its own message is left.
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert line.startswith(f"Error: {folder / 'shard-000003.tar'}: sample 0000000")
    assert line.endswith("(drop --strict to skip such samples)")


class _CreatesFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_pickle_payload_in_a_shard_never_runs(datasets, tmp_path):
    # The payload is live: unpickling it creates a file.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_CreatesFile(probe))).close()
    assert probe.exists()

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesFile(marker))
    folder = copy_dataset(datasets("gauss"), tmp_path / "payload")

    def add_payload(raw):
        raw.update({"payload.pyd": payload, "payload.pickle": payload, "payload.pkl": payload})
        return raw

    for shard in ("shard-000000.tar", "shard-000003.tar"):
        rewrite_shard(folder, shard, add_payload)
    # One step of a batch of 64 is one epoch: every sample is read and decoded.
    result = CliRunner().invoke(
        train_main,
        [
            str(folder),
            *FAST,
            "--batch-size",
            "64",
            "--steps",
            "1",
            "--views",
            "2",
            "--input-size",
            "16",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    assert read_log(tmp_path / "run")[-1]["skipped_samples"] == 0


@pytest.fixture
def real_folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "real" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "real" / name / f"{i}.png")
    return tmp_path / "real"


def test_real_images_give_two_tx_views_with_folder_labels(real_folder):
    info = open_data([], real_folder, None)
    assert info.classes == ["cat", "dog"] and info.z_dim is None and info.neighbors == 0
    (batch,) = batches(info, steps=1, batch=12, augment=True, views=2, labels=True)
    assert sorted(batch["label"].tolist()) == [0] * 6 + [1] * 6
    assert batch["images"].shape == (12, 2, 3, 28, 28)
    assert not torch.equal(batch["images"][:, 0], batch["images"][:, 1])  # independent Tx


def test_real_fraction_mixes_exactly(datasets, real_folder):
    info = open_data([datasets("gauss")], real_folder, 0.25)
    mixed = keys(batches(info, steps=10, batch=4))
    is_real = [":" not in key for key in mixed]  # shard samples are "folder/shard:key"
    assert sum(is_real) == 10
    assert all(sum(is_real[:n]) == n // 4 for n in range(41))


def test_several_shard_folders_train_as_one_dataset(datasets):
    gauss, cond = (open_data([datasets(name)], None, None) for name in ("gauss", "cond"))
    both = open_data([datasets("gauss"), datasets("cond")], None, None)
    assert both.epoch_size == gauss.epoch_size + cond.epoch_size
    assert both.neighbors == 1 and both.z_dim == 128
    assert both.classes is None  # one of them is unconditional: no common labels
    assert both.manifest_hash not in (gauss.manifest_hash, cond.manifest_hash)
    seen = keys(batches(both, steps=32, batch=4))
    assert len(set(seen)) == 128 and {key.split("/")[0] for key in seen} == {"gauss", "cond"}


def test_bad_combinations_of_inputs_are_refused(datasets, real_folder):
    config = TrainConfig(objective="inverter", batch_size=8, steps=4)
    cpu = torch.device("cpu")
    with pytest.raises(DataError, match="real images have no latents"):
        config.resolve(open_data([], real_folder, None), 1, cpu)
    with pytest.raises(DataError, match="needs class labels"):
        mixed = open_data([datasets("gauss")], real_folder, 0.5)
        TrainConfig(objective="supcon", batch_size=8).resolve(mixed, 1, cpu)
    with pytest.raises(UsageError, match="--real-fraction"):
        open_data([datasets("gauss")], real_folder, None)
    with pytest.raises(DataError, match="no manifest.json"):
        open_data([real_folder], None, None)
    with pytest.raises(UsageError, match="hold the same samples"):
        open_data([datasets("gauss"), datasets("gauss")], None, None)
