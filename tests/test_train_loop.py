"""genrep-train end to end on tiny datasets: learning, the run folder, kill and resume, DDP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torchvision
import yaml
from click.testing import CliRunner
from train_helpers import FAST, read_log

from genrep.train.cli import export_main
from genrep.train.cli import main as train_main
from genrep.train.data import open_data
from genrep.train.trainer import CosineSchedule, TrainError, resolve, train

pytest_plugins = ["train_fixtures"]

#: objective -> (dataset, extra flags); supcon and classifier need the class-conditional dataset
OBJECTIVE_RUNS = {
    "simclr": ("gauss", ["--views", "2", "--lr", "0.5"]),
    "supcon": ("cond", ["--lr", "0.5"]),
    "inverter": ("cond", ["--lr", "0.25"]),
    "classifier": ("cond", ["--lr", "0.25"]),
}


def invoke(command, args):
    result = CliRunner().invoke(command, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(datasets, tmp_path_factory):
    """`runs(objective)` -> folder of a 20-step run (made once per module)."""
    made: dict[str, Path] = {}

    def get(objective: str) -> Path:
        if objective not in made:
            name, flags = OBJECTIVE_RUNS[objective]
            out = tmp_path_factory.mktemp("runs") / objective
            config = out.parent / f"{objective}.yaml"
            # Everything but the output folder comes from a YAML config, as users may do.
            config.write_text(
                yaml.safe_dump(
                    {
                        "objective": objective,
                        "shards": [str(datasets(name))],
                        "batch_size": 16,
                        "steps": 20,
                        "augment": False,
                    }
                )
            )
            invoke(
                train_main, ["--config", config, *FAST, "--log-every", "5", *flags, "--out", out]
            )
            made[objective] = out
        return made[objective]

    return get


@pytest.mark.parametrize("objective", list(OBJECTIVE_RUNS))
def test_every_objective_decreases_its_loss(runs, objective):
    records = read_log(runs(objective))
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    losses = [r["loss"] for r in records]
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2  # means over steps 1-10 and 11-20
    assert last < 0.95 * first, losses
    config = yaml.safe_load((runs(objective) / "config.yaml").read_text())
    assert config["objective"] == objective and config["augment"] is False


def test_run_folder_holds_a_strict_torchvision_backbone(runs, tmp_path):
    run = runs("simclr")
    state = torch.load(run / "backbone.pth", weights_only=True)
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.load_state_dict(state, strict=True)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 20 and checkpoint["config"]["arch"] == "resnet18"
    assert checkpoint["manifest_hash"] == checkpoint["config"]["manifest_hash"] is not None
    assert checkpoint["backbone"].keys() == state.keys()
    assert {"optimizer", "scheduler", "rng"} <= checkpoint.keys()
    assert yaml.safe_load((run / "config.yaml").read_text())["arch"] == "resnet18"
    assert (run / "tensorboard").is_dir() and any((run / "tensorboard").iterdir())
    invoke(export_main, [run / "checkpoint.pt", tmp_path / "exported.pth"])
    exported = torch.load(tmp_path / "exported.pth", weights_only=True)
    assert all(torch.equal(exported[k], state[k]) for k in state)
    # Rerunning a finished command changes nothing.
    before = (run / "checkpoint.pt").stat().st_mtime_ns
    result = CliRunner().invoke(
        train_main,
        [
            "--config",
            run.parent / "simclr.yaml",
            *FAST,
            "--log-every",
            "5",
            *OBJECTIVE_RUNS["simclr"][1],
            "--out",
            run,
        ],
    )
    assert result.exit_code == 0 and "already trained" in result.output
    assert (run / "checkpoint.pt").stat().st_mtime_ns == before


def test_a_changed_command_does_not_resume_another_run(runs, datasets):
    run = runs("simclr")
    result = CliRunner().invoke(
        train_main,
        [
            str(datasets("gauss")),
            *FAST,
            "--views",
            "2",
            "--lr",
            "0.1",
            "--steps",
            "20",
            "--no-augment",
            "--batch-size",
            "16",
            "--out",
            str(run),
        ],
    )
    assert result.exit_code == 2 and "other settings" in result.output and "lr" in result.output


def _last_logged_step(run: Path) -> int:
    try:
        return read_log(run)[-1]["step"]
    except (OSError, ValueError, IndexError):  # no log yet, or a line being written
        return 0


def test_kill_and_resume_continues_at_the_saved_step(datasets, tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "genrep.train.cli",
        str(datasets("gauss")),
        *FAST,
        "--views",
        "2",
        "--no-augment",
        "--batch-size",
        "16",
        "--lr",
        "0.5",
        "--steps",
        "20",
        "--checkpoint-every",
        "6",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        # Kill it a few steps after its first checkpoint, before the second.
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "checkpoint.pt").exists() and _last_logged_step(out) >= 8:
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert saved in (6, 12, 18)  # 6 unless the run outpaced the polling
    killed = {r["step"]: r for r in read_log(out)}
    assert max(killed) >= 8 and max(killed) < 20  # killed past its first checkpoint, unfinished

    invoke(train_main, command[3:])
    records = read_log(out)
    assert [r["step"] for r in records] == list(range(1, 21))  # no lost or repeated steps
    schedule = CosineSchedule(0.5 * 16 / 256, 20)
    for record in records:
        assert record["lr"] == pytest.approx(schedule(record["step"] - 1), rel=1e-12)
    # The resumed steps redo exactly what the killed run did after its checkpoint.
    for step in range(saved + 1, max(killed) + 1):
        assert records[step - 1]["lr"] == killed[step]["lr"]
        assert records[step - 1]["loss"] == pytest.approx(killed[step]["loss"], rel=1e-4)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_rank(rank: int, world: int, port: int, args: list[str], out: str) -> None:
    """One torchrun-like rank: environment variables, then the trainer with a key-recording hook."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)  # as torchrun does: two ranks share the CPU
    options = train_main.make_context("genrep-train", args).params
    options["shards"] = list(options["shards"])
    seen: list[str] = []
    steps: list[int] = []

    def record(step: int, batch: dict) -> None:
        steps.append(step)
        seen.extend(batch["key"])

    train(options, hooks=[record], log=lambda _message: None)
    torch.save({"keys": seen, "steps": steps}, f"{out}.{rank}")


def test_ddp_ranks_take_equal_steps_over_disjoint_data(datasets, tmp_path):
    # Shards of 20, 20, 20 and 4 anchors; 2 ranks x 2 workers; global batch 8 -> 8 steps/epoch.
    run = tmp_path / "ddp"
    args = [
        str(datasets("gauss")),
        "--arch",
        "resnet18",
        "--no-progress",
        "--views",
        "2",
        "--no-augment",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--workers",
        "2",
        "--log-every",
        "4",
        "--device",
        "cpu",
        "--out",
        str(run),
    ]
    mp.spawn(_ddp_rank, args=(2, _free_port(), args, str(tmp_path / "seen")), nprocs=2)
    ranks = [torch.load(tmp_path / f"seen.{rank}", weights_only=True) for rank in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == list(range(1, 9))
    keys = [set(r["keys"]) for r in ranks]
    assert len(ranks[0]["keys"]) == len(keys[0]) == 32 and len(keys[1]) == 32
    assert not keys[0] & keys[1]
    assert len(keys[0] | keys[1]) == 64  # one epoch: every anchor exactly once
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 8
    assert [r["step"] for r in read_log(run)] == [4, 8]


def test_resolve_fills_the_paper_defaults(datasets):
    gauss = open_data([datasets("gauss")], None, None)
    options = {
        "objective": "simclr",
        "tx": "genrep",
        "batch_size": 32,
        "lr": 0.03,
        "precision": "auto",
        "epochs": None,
        "steps": None,
        "seed": 0,
    }
    config = resolve(options, gauss, world=2)
    assert config["lr_scaled"] == pytest.approx(0.03 * 32 / 256)  # linear in the batch
    assert config["views"] == 3 and config["augment"] is True  # anchor + its 2 neighbors
    assert config["input_size"] == 28 and config["local_batch_size"] == 16
    assert config["epochs"] == 20 and config["steps"] == 20 * 2  # 64 anchors, 2 batches each
    inverter = resolve({**options, "objective": "inverter", "batch_size": 16, "steps": 7}, gauss, 1)
    assert inverter["views"] == 1 and inverter["augment"] is False and inverter["steps"] == 7
    with pytest.raises(TrainError, match="stores 2"):
        resolve({**options, "views": 4}, gauss, 1)
    with pytest.raises(TrainError, match="identical copies"):
        resolve({**options, "augment": False}, open_data([datasets("none")], None, None), 1)
    with pytest.raises(TrainError, match="divisible"):
        resolve({**options, "batch_size": 15}, gauss, 2)
    with pytest.raises(TrainError, match="not both"):
        resolve({**options, "epochs": 2, "steps": 5}, gauss, 1)
