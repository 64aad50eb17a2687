"""genrep-train --generator: online training sees exactly the offline run's images, resumes at the
step, splits disjoint indices over ranks, and streams fresh samples with --stream."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from click.testing import CliRunner
from test_train_loop import _ddp_rank, _free_port
from train_helpers import generate

from genrep.generate.pipeline import ShardGenerator
from genrep.train.cli import main as train_main
from genrep.train.config import TrainConfig
from genrep.train.trainer import train

#: the samples, as genrep-generate flags (units of 10, 10 and 4 anchors, 2 neighbors each)
SAMPLES = ["--n", "24", "--neighbors", "2", "--shard-size", "10", "--size", "32"]
#: a short simclr run with Tx on, a shuffle buffer, and more than one epoch (3 steps of 8 anchors)
RUN = [
    "--arch",
    "resnet18",
    "--no-progress",
    "--log-every",
    "1",
    "--batch-size",
    "8",
    "--views",
    "2",
    "--shuffle-buffer",
    "5",
    "--steps",
    "5",
]


def config_of(*args: str) -> TrainConfig:
    return TrainConfig(**train_main.make_context("genrep-train", [str(a) for a in args]).params)


def record_batches(config: TrainConfig) -> list[dict]:
    """Run `config` and return what the trainer saw at every step."""
    seen: list[dict] = []

    def record(step: int, batch: dict) -> None:
        seen.append({"step": step, "key": list(batch["key"]), "images": batch["images"].clone()})

    train(config, hooks=[record], log=lambda _message: None)
    return seen


def assert_same_batches(online: list[dict], offline: list[dict]) -> None:
    assert [b["step"] for b in online] == [b["step"] for b in offline]
    for got, expected in zip(online, offline, strict=True):
        assert got["key"] == expected["key"]
        assert torch.equal(got["images"], expected["images"]), f"step {got['step']}"


def test_online_training_sees_the_images_of_offline_training(tmp_path):
    # The shards genrep-generate writes with the same flags, in its default --out folder name.
    shards = generate(tmp_path / "embedded-gaussian", *SAMPLES, "--format", "png")
    common = [*RUN, "--workers", "2"]  # online: each DataLoader worker runs a generator
    offline = record_batches(config_of(shards, *common, "--out", tmp_path / "offline"))
    # Every online flag from a YAML config, as users may do.
    config = tmp_path / "online.yaml"
    config.write_text(
        yaml.safe_dump({"generator": "embedded", "n": 24, "neighbors": 2, "shard_size": 10})
    )
    online = record_batches(
        config_of("--config", config, "--size", "32", *common, "--out", tmp_path / "online")
    )
    assert len(online) == 5 and len({k for b in online for k in b["key"]}) == 24
    assert_same_batches(online, offline)

    saved = yaml.safe_load((tmp_path / "online" / "config.yaml").read_text())
    identity = saved["generator_identity"]
    assert identity["generator"]["name"] == "embedded"
    assert len(identity["generator"]["weights_sha256"]) == 64
    assert identity["view"]["name"] == "gaussian" and identity["seed"] == 0
    assert (saved["generator"], saved["n"], saved["stream"]) == ("embedded", 24, False)
    offline_config = yaml.safe_load((tmp_path / "offline" / "config.yaml").read_text())
    assert offline_config["generator_identity"] is None and offline_config["view"] is None


def test_online_run_resumes_at_the_step_without_regenerating_used_samples(tmp_path, monkeypatch):
    args = ["--generator", "embedded", *SAMPLES, *RUN, "--workers", "0"]
    whole = record_batches(config_of(*args, "--out", tmp_path / "whole"))

    class Killed(Exception):
        pass

    def kill_after_step_3(step: int, batch: dict) -> None:
        if step == 3:
            raise Killed

    interrupted = config_of(*args, "--checkpoint-every", "2", "--out", tmp_path / "resumed")
    with pytest.raises(Killed):
        train(interrupted, hooks=[kill_after_step_3], log=lambda _message: None)
    generated: list[int] = []
    samples = ShardGenerator.samples

    def count(self, indices):
        generated.extend(indices)
        return samples(self, indices)

    monkeypatch.setattr(ShardGenerator, "samples", count)
    # Forward passes of 6 images (2 anchors) instead of 64: the same images, in batches of 2.
    resumed = record_batches(replace(interrupted, generator_batch_size=6))
    assert [b["step"] for b in resumed] == [3, 4, 5]  # from the checkpoint of step 2
    assert_same_batches(resumed, whole[2:])
    # The 16 samples of steps 1-2 are skipped without being generated again.
    assert 3 * 8 <= len(generated) <= 3 * 8 + 1


def test_ddp_ranks_stream_disjoint_fresh_samples(tmp_path):
    # 2 ranks, global batch 8, --n 24 per epoch, 2 epochs of fresh samples with --stream.
    args = ["--generator", "embedded", *SAMPLES, "--stream", *RUN[:-2], "--epochs", "2"]
    args += ["--workers", "0", "--device", "cpu", "--out", str(tmp_path / "run")]
    mp.spawn(_ddp_rank, args=(2, _free_port(), args, str(tmp_path / "keys")), nprocs=2)
    ranks = [torch.load(tmp_path / f"keys.{rank}", weights_only=True)["keys"] for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 24  # 6 steps x 4 anchors per rank
    indices = [int(key.rsplit(":", 1)[1]) for keys in ranks for key in keys]
    assert len(set(indices)) == 48  # no sample twice, on any rank, in any epoch
    assert set(indices) == set(range(24)) | set(range(30, 54))  # epoch 2: the next units


@pytest.mark.parametrize(
    "args, message",
    [
        (["--view", "none"], "--view is a flag of online training: add --generator MODEL"),
        (["--generator", "embedded"], "--generator needs --n"),
        (["--generator", "embedded", "--n", "8", "SHARDS"], "without shard folders and --real"),
        (["--generator", "embedded", "--n", "8", "--sigma", "-1"], "--sigma must be"),
    ],
)
def test_online_flag_mistakes_are_one_line_errors(tmp_path, args, message):
    shards = tmp_path / "shards"
    shards.mkdir()
    args = [str(shards) if a == "SHARDS" else a for a in args]
    if "--generator" not in args:
        args.insert(0, str(shards))
    result = CliRunner().invoke(
        train_main, [*args, "--no-progress", "--out", str(tmp_path / "run")]
    )
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and message in lines[0]
    assert not Path(tmp_path / "run").exists()
