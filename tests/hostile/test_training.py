"""Training on damaged data: it never hangs, a damaged shard is skipped and counted (and skipped
again after a resume), checksums are checked while streaming, data with nothing usable stops with
one line, on every rank at once under DDP."""

from __future__ import annotations

import gzip
import json
import os
import socket
import tarfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from genrep.errors import UserError
from genrep.evaluate.datasets.base import DATASETS
from genrep.images import image_files
from genrep.train.cli import main as train_main
from genrep.train.config import TrainConfig
from genrep.train.trainer import train

from .helpers import cli, noise, only_line, refused, replace_shard, tar_bytes, tar_members

FAST = ["--arch", "resnet18", "--batch-size", "2", "--workers", "0", "--no-progress"]
FAST += ["--log-every", "1"]


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _garbage_anchors(folder: Path, name: str) -> None:
    members = [
        (member, b"\xff\xd8 not a jpeg" if member.endswith("anchor.jpg") else data)
        for member, data in tar_members(folder / name)
    ]
    replace_shard(folder, name, tar_bytes(members))


def _special(folder: Path, name: str) -> None:
    path = folder / name
    path.unlink()
    if name.endswith("0.tar") or name.endswith("2.tar"):
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


DAMAGE = {
    "undecodable-anchors": _garbage_anchors,
    "empty-tars": lambda folder, name: replace_shard(folder, name, tar_bytes([])),
    "garbage": lambda folder, name: replace_shard(folder, name, noise(4096)),
    "gzip": lambda folder, name: replace_shard(
        folder, name, gzip.compress((folder / name).read_bytes())
    ),
    "fifos-and-devices": _special,
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_data_with_no_usable_sample_stops_with_one_line(dataset, tmp_path, deadline, damage):
    deadline(300)
    for k in range(4):
        DAMAGE[damage](dataset, f"shard-{k:06d}.tar")
    workers = ["--workers", "1"] if damage == "fifos-and-devices" else []  # a DataLoader worker
    result = cli(train_main, dataset, *FAST, *workers, "--steps", "3", "--out", tmp_path / "run")
    message = refused(result, 1)
    assert "tiny: no usable sample in a whole pass over its 8 samples (8 bad in a row" in message


def test_real_images_with_nothing_decodable_stop_with_one_line(tmp_path, deadline):
    deadline(300)
    for label in ("a", "b"):
        (tmp_path / "real" / label).mkdir(parents=True)
        (tmp_path / "real" / label / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    os.mkfifo(tmp_path / "real" / "a" / "waits.jpg")
    result = cli(
        train_main, "--real", tmp_path / "real", *FAST, "--steps", "2", "--out", tmp_path / "r"
    )
    assert "no usable sample in a whole pass over its 3 samples" in refused(result, 1)


def _truncate(folder: Path, name: str) -> None:
    (folder / name).write_bytes((folder / name).read_bytes()[:3000])


SHARD_DAMAGE = {
    "truncated": _truncate,
    "empty-file": lambda folder, name: replace_shard(folder, name, b""),
    "garbage": lambda folder, name: replace_shard(folder, name, noise(4096)),
}


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("damage", SHARD_DAMAGE, ids=list(SHARD_DAMAGE))
def test_a_damaged_shard_is_skipped_and_a_resumed_run_goes_past_it(dataset, tmp_path, damage):
    """Shard 1 of 4 is damaged: the run skips it and counts its samples; interrupted after step
    5 (last checkpoint at 4) and rerun, it resumes and finishes, past the shard again."""
    SHARD_DAMAGE[damage](dataset, "shard-000001.tar")
    run = tmp_path / "run"
    args = [dataset, *FAST, "--steps", "8", "--checkpoint-every", "4", "--out", run]
    config = TrainConfig(**train_main.make_context("genrep-train", [str(a) for a in args]).params)

    def interrupt(step: int, _batch: dict) -> None:
        if step == 5:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train(config, hooks=[interrupt], log=lambda _message: None)
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
    result = cli(train_main, *args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "resuming" in result.output
    assert "tiny/shard-000001.tar: " in result.output  # the warning names it
    records = log(run)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert records[-1]["skipped_samples"] >= 2
    assert "skipped" in result.output and "bad samples" in result.output


def test_strict_stops_at_a_damaged_shard(dataset, tmp_path):
    replace_shard(dataset, "shard-000002.tar", noise(4096))
    result = cli(train_main, dataset, *FAST, "--steps", "8", "--strict", "--out", tmp_path / "r")
    message = refused(result, 1)
    assert "shard-000002.tar: not a readable tar" in message and "drop --strict" in message


def _edit_json(folder: Path, name: str) -> None:
    """Change one byte of a sample's json: the shard stays a valid tar whose samples train
    (training does not read the json), and only its checksum tells."""
    path = folder / name
    data = bytearray(path.read_bytes())
    at = data.index(b'"view":"gaussian"')
    data[at + 8] = ord("G")
    path.write_bytes(bytes(data))
    with tarfile.open(path) as tar:  # still a readable tar
        assert len(tar.getmembers()) == 10


def test_checksums_are_checked_while_streaming_unless_no_verify(dataset, tmp_path):
    _edit_json(dataset, "shard-000003.tar")
    steps = ["--steps", "8", "--log-every", "8"]  # two epochs: the shard is met twice
    checked = cli(train_main, dataset, *FAST, *steps, "--out", tmp_path / "checked")
    assert checked.exit_code == 0, checked.output
    assert "tiny/shard-000003.tar: sha256 differs from the manifest; skipping it" in checked.output
    assert log(tmp_path / "checked")[-1]["skipped_samples"] >= 2
    trusted = cli(train_main, dataset, *FAST, *steps, "--no-verify", "--out", tmp_path / "trusted")
    assert trusted.exit_code == 0 and "sha256" not in trusted.output, trusted.output
    assert log(tmp_path / "trusted")[-1]["skipped_samples"] == 0
    strict = cli(train_main, dataset, *FAST, *steps, "--strict", "--out", tmp_path / "strict")
    assert "shard-000003.tar: sha256 differs from the manifest" in refused(strict, 1)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--input-size", "100000"], "--input-size must be >= 1 and <= 2048, got 100000"),
        (["--views", "1000"], "--views must be >= 1 and <= 64, got 1000"),
        (["--projection-dim", str(10**9)], "--projection-dim must be >= 1 and <= 65536"),
        (["--projection-dim", "0"], "--projection-dim must be >= 1 and <= 65536, got 0"),
        (["--temperature", "-1"], "--temperature must be a finite number > 0, got -1.0"),
        (["--temperature", "nan"], "--temperature must be a finite number > 0, got nan"),
        (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
        (["--momentum", "-1"], "--momentum must be a finite number >= 0, got -1.0"),
        (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0, got -1.0"),
        (["--device", "toaster"], "--device 'toaster' is not a device"),
    ],
)
def test_train_checks_every_number_before_writing(tiny_dataset, tmp_path, flags, message):
    out = tmp_path / "run"
    result = cli(train_main, tiny_dataset, *FAST, "--steps", "1", *flags, "--out", out)
    assert message in only_line(result, 2)
    assert not out.exists()


def test_cuda_without_a_gpu_is_one_line_in_train(tiny_dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    result = cli(train_main, tiny_dataset, *FAST, "--device", "cuda", "--out", tmp_path / "r")
    assert "torch sees no CUDA GPU here" in only_line(result, 2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, port: int, args: list[str], out: str) -> None:
    """One torchrun-like rank of 2; writes how its run ended to OUT.RANK."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    config = TrainConfig(**train_main.make_context("genrep-train", args).params)
    try:
        train(config, log=lambda _message: None)
        outcome = "finished"
    except UserError as err:
        outcome = f"{type(err).__name__}: {err}"
    Path(f"{out}.{rank}").write_text(outcome)


def test_under_ddp_a_rank_whose_data_fails_stops_every_rank(dataset, tmp_path):
    """--strict and one damaged shard: the rank that meets it stops, and so does the other one,
    which would otherwise wait forever in the gradient all-reduce."""
    replace_shard(dataset, "shard-000001.tar", noise(4096))
    args = [str(dataset), *FAST, "--steps", "8", "--strict", "--device", "cpu"]
    args += ["--out", str(tmp_path / "run")]
    context = mp.start_processes(
        _rank, args=(_free_port(), args, str(tmp_path / "outcome")), nprocs=2, join=False
    )
    for _ in range(60):  # five minutes at most (a hang waits forever)
        if context.join(timeout=5):
            break
    else:
        for process in context.processes:
            process.kill()
        pytest.fail("the ranks are still running: one waits for the other")
    outcomes = sorted((tmp_path / f"outcome.{rank}").read_text() for rank in (0, 1))
    assert all(outcome.startswith("DataError: ") for outcome in outcomes), outcomes
    assert any("shard-000001.tar: not a readable tar" in outcome for outcome in outcomes)
    assert any("stopped: " in outcome for outcome in outcomes), outcomes


def _looping_image_folder(root: Path, elsewhere: Path) -> Path:
    """Classes a and b of two images each; a holds two links to itself and b one to its parent
    (walked naively: 2^depth paths), and class c is a link to the folder `elsewhere`."""
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (100 * i, 0, 0)).save(root / label / f"{i}.png")
    (root / "a" / "x").symlink_to(".")
    (root / "a" / "y").symlink_to(".")
    (root / "b" / "up").symlink_to("..")
    elsewhere.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(elsewhere / "0.png")
    (root / "c").symlink_to(elsewhere)
    return root


def test_an_image_folder_whose_links_loop_is_listed_once(tmp_path, deadline):
    """Links that loop had hung --real and the probe's imagefolder in os.walk(followlinks=True);
    every folder is entered once, and a class folder that is a link is still read."""
    deadline(300)
    root = _looping_image_folder(tmp_path / "real", tmp_path / "elsewhere")
    files = image_files(root, {"a": 0, "b": 1, "c": 2}, (".png",))
    listed = [(os.path.relpath(path, root), label) for path, label in files]
    assert listed == [  # b/up is the whole folder: each of its folders once more, as b
        ("a/0.png", 0),
        ("a/1.png", 0),
        ("b/0.png", 1),
        ("b/1.png", 1),
        ("b/up/a/0.png", 1),
        ("b/up/a/1.png", 1),
        ("b/up/c/0.png", 1),
        ("c/0.png", 2),
    ]
    result = cli(train_main, "--real", root, *FAST, "--steps", "1", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    for split in ("train", "val"):
        _looping_image_folder(tmp_path / "probe" / split, tmp_path / "elsewhere")
    dataset = DATASETS.build("imagefolder", root=tmp_path / "probe")
    assert dataset.load_image("train", 4).size == (8, 8)
