"""genrep-train end to end on tiny datasets: learning, the run folder, kill and resume, DDP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torchvision
import yaml
from click.testing import CliRunner
from train_helpers import FAST, copy_dataset, read_log

from genrep.errors import UsageError
from genrep.train.cli import export_main
from genrep.train.cli import main as train_main
from genrep.train.config import TrainConfig
from genrep.train.data import open_data
from genrep.train.trainer import CosineSchedule, train

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


def test_the_saved_config_replays_the_run(runs):
    # config.yaml records what `resolve` derived (lr_scaled, dataset, ...) beside the flags:
    # --config skips those, so the file replays the same command (here: nothing left to do)
    run = runs("simclr")
    assert "lr_scaled" in yaml.safe_load((run / "config.yaml").read_text())
    result = invoke(train_main, ["--config", run / "config.yaml", "--out", run])
    assert "already trained" in result.output


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
    config = TrainConfig(**train_main.make_context("genrep-train", args).params)
    seen: list[str] = []
    steps: list[int] = []

    def record(step: int, batch: dict) -> None:
        steps.append(step)
        seen.extend(batch["key"])

    train(config, hooks=[record], log=lambda _message: None)
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
    cpu = torch.device("cpu")
    options = TrainConfig(shards=[datasets("gauss")], batch_size=32, out="run")
    config = options.resolve(gauss, 2, cpu)
    assert config.lr_scaled == pytest.approx(0.03 * 32 / 256)  # linear in the batch
    assert config.views == 3 and config.augment is True  # anchor + its 2 neighbors
    assert config.input_size == 28 and config.local_batch_size == 16
    assert config.epochs == 20 and config.steps == 20 * 2  # 64 anchors, 2 batches each
    assert config.precision == "fp32" and config.device == "cpu"
    assert (config.temperature, config.projection_dim) == (0.1, 128)  # simclr's own defaults
    assert config.base_temperature == 0.07  # the released loss: x 0.1 / 0.07
    assert config.center_crop == 32  # whole 128 px frames stored at 32 px: all of it
    assert options.temperature is None  # resolving makes a new config
    saved = config.to_plain()
    assert saved["dataset"]["neighbors"] == 2 and saved["shards"] == [str(datasets("gauss"))]
    inverter = replace(options, objective="inverter", batch_size=16, steps=7).resolve(gauss, 1, cpu)
    assert inverter.views == 1 and inverter.augment is False and inverter.steps == 7
    assert inverter.temperature is None and inverter.projection_dim is None  # takes neither
    assert inverter.base_temperature is None
    with pytest.raises(UsageError, match="stores 2"):
        replace(options, views=4).resolve(gauss, 1, cpu)
    with pytest.raises(UsageError, match="simclr needs 2 or more views"):
        replace(options, views=1).resolve(gauss, 1, cpu)
    with pytest.raises(UsageError, match="identical copies"):
        replace(options, augment=False).resolve(open_data([datasets("none")], None, None), 1, cpu)
    with pytest.raises(UsageError, match="divisible"):
        replace(options, batch_size=15).resolve(gauss, 2, cpu)
    with pytest.raises(UsageError, match="not both"):
        replace(options, epochs=2, steps=5).resolve(gauss, 1, cpu)
    with pytest.raises(UsageError, match="'inverter' does not take --temperature"):
        replace(options, objective="inverter", temperature=0.2).resolve(gauss, 1, cpu)


def test_a_run_saved_by_the_previous_version_resumes(datasets):
    """Before objectives declared their options, every run recorded temperature 0.1 and
    projection_dim 128; an inverter run saved so is still the same run."""
    gauss = open_data([datasets("gauss")], None, None)
    config = TrainConfig(objective="inverter", batch_size=16, steps=7, workers=0)
    config = config.resolve(gauss, 1, torch.device("cpu"))
    previous = {**config.to_plain(), "temperature": 0.1, "projection_dim": 128, "device": "auto"}
    assert config.changes_from(previous) == []
    assert config.changes_from({**previous, "lr": 0.1}) == ["lr: 0.1 -> 0.03"]
    simclr = TrainConfig(batch_size=16, steps=7).resolve(gauss, 1, torch.device("cpu"))
    assert simclr.changes_from({**simclr.to_plain(), "temperature": 0.2}) == [
        "temperature: 0.2 -> 0.1"
    ]


def _one_line_error(result) -> str:
    """The CLI's error: one `Error: ...` line and nothing else (no usage text, no traceback)."""
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
        (["--lr", "-0.1"], "--lr must be a finite number > 0, got -0.1"),
        (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["--momentum", "-0.5"], "--momentum must be a finite number >= 0"),
        (["--weight-decay", "-1e-4"], "--weight-decay must be a finite number >= 0"),
        (["--temperature", "0"], "--temperature must be a finite number > 0"),
        (["--temperature", "inf"], "--temperature must be a finite number > 0"),
        (["--projection-dim", "0"], "--projection-dim must be >= 1 and <= 65536, got 0"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--warmup-steps", "-1"], "--warmup-steps must be >= 0, got -1"),
        (
            ["--warmup-steps", "1", "--batch-size", "8"],
            "--warmup-steps 1 is not below the run's 1 steps",
        ),
        (["--objective", "inverter", "--temperature", "0.5"], "does not take --temperature"),
        (["--objective", "classifier", "--projection-dim", "64"], "it takes: no options"),
    ],
)
def test_bad_numbers_and_options_are_one_line_usage_errors(datasets, tmp_path, flags, message):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        train_main, [str(datasets("cond")), *FAST, "--steps", "1", *flags, "--out", str(out)]
    )
    assert result.exit_code == 2
    assert message in _one_line_error(result)
    assert not out.exists()  # refused before anything is written


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def test_out_must_be_a_run_folder_of_genrep_train(datasets, tmp_path):
    dataset = copy_dataset(datasets("gauss"), tmp_path / "gauss")
    before = _snapshot(dataset)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    refusals = {
        dataset: "is a dataset folder (it holds manifest.json)",
        dataset / "manifest.json": "is a file",
        other: "is not a genrep-train run folder",
    }
    for out, message in refusals.items():
        result = CliRunner().invoke(
            train_main,
            [str(dataset), *FAST, "--batch-size", "16", "--steps", "1", "--out", str(out)],
        )
        assert result.exit_code == 2 and message in _one_line_error(result)
    assert _snapshot(dataset) == before
    assert [p.name for p in other.iterdir()] == ["todo.txt"]


def test_export_refuses_to_overwrite_unless_asked(runs, tmp_path):
    run = runs("simclr")
    backbone = torch.load(run / "backbone.pth", weights_only=True)
    out = tmp_path / "backbone.pth"
    out.write_bytes(b"keep me")
    refused = CliRunner().invoke(export_main, [str(run), str(out)])
    assert refused.exit_code == 2
    assert "exists; pass --overwrite" in _one_line_error(refused)
    assert out.read_bytes() == b"keep me"
    invoke(export_main, [run, out, "--overwrite"])
    exported = torch.load(out, weights_only=True)
    assert exported.keys() == backbone.keys()
    assert all(torch.equal(exported[key], backbone[key]) for key in backbone)
    # Never onto the checkpoint it reads, never into a folder that does not exist.
    checkpoint = run / "checkpoint.pt"
    before = checkpoint.stat().st_mtime_ns
    for target, message in [
        (checkpoint, "is the checkpoint being exported"),
        (tmp_path / "missing" / "b.pth", "does not exist"),
    ]:
        result = CliRunner().invoke(export_main, [str(checkpoint), str(target), "--overwrite"])
        assert result.exit_code == 2 and message in _one_line_error(result)
    assert checkpoint.stat().st_mtime_ns == before


def test_export_takes_its_flags_from_a_config(runs, tmp_path):
    out = tmp_path / "backbone.pth"
    out.write_bytes(b"old")
    config = tmp_path / "export.yaml"
    config.write_text("overwrite: true\n")
    invoke(export_main, ["--config", config, runs("supcon"), out])
    assert torch.load(out, weights_only=True).keys() == (
        torch.load(runs("supcon") / "backbone.pth", weights_only=True).keys()
    )


def test_fp16_trains_with_gradient_scaling(datasets, tmp_path):
    out = tmp_path / "fp16"
    invoke(
        train_main,
        [datasets("gauss"), *FAST, "--precision", "fp16", "--views", "2", "--batch-size", "4"]
        + ["--steps", "1", "--input-size", "16", "--out", out],
    )
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in read_log(out))
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["config"]["precision"] == "fp16"
    assert checkpoint["grad_scaler"]["scale"] > 0  # resumes with the scale it reached
