"""genrep-train and genrep-export write only their own output: never into a dataset, a file or a
folder of someone else's, never over the checkpoint being exported, and a config file received
from someone else never chooses where they write."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from genrep.generate.cli import steer_main
from genrep.train.cli import export_main
from genrep.train.cli import main as train_main

from .helpers import cli, only_line
from .test_writing import snapshot

FAST = ["--arch", "resnet18", "--batch-size", "2", "--workers", "0", "--no-progress"]


def test_train_never_writes_into_a_dataset_a_file_or_a_foreign_folder(dataset, tmp_path, deadline):
    deadline(120)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "config.yaml").write_text("mine: true\n")  # a config.yaml, not a run's
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    os.mkfifo(pipe / "config.yaml")  # reading it to see whether it is a run's would block
    a_file = tmp_path / "file"
    a_file.write_text("x")
    before = {folder: snapshot(folder) for folder in (dataset, notes)}
    refusals = {
        dataset: "is a dataset folder (it holds manifest.json)",
        dataset / "manifest.json": "is a file; pass a folder for the run",
        a_file: "is a file; pass a folder for the run",
        notes: "holds files and is not a genrep-train run folder",
        pipe: "holds files and is not a genrep-train run folder",
    }
    for out, message in refusals.items():
        result = cli(train_main, dataset, *FAST, "--steps", "1", "--out", out)
        assert message in only_line(result, 2)
    assert {folder: snapshot(folder) for folder in (dataset, notes)} == before
    assert a_file.read_text() == "x"


def test_a_received_train_config_never_chooses_where_to_write(tiny_dataset, tmp_path, monkeypatch):
    """A config file from someone else whose `out:` points at someone's folder."""
    victim = tmp_path / "victim"
    config = tmp_path / "received.yaml"
    settings = {"shards": [str(tiny_dataset)], "arch": "resnet18", "batch_size": 2, "steps": 1}
    settings.update(workers=0, progress=False, out=str(victim))
    config.write_text(yaml.safe_dump(settings))
    monkeypatch.chdir(tmp_path)
    result = cli(train_main, "--config", config)
    assert result.exit_code == 0, result.output
    assert f"ignoring out: {victim}" in result.output
    assert not victim.exists() and list((tmp_path / "runs").iterdir())


def test_export_writes_only_a_new_file_or_with_overwrite(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    checkpoint = run / "checkpoint.pt"
    (tmp_path / "link.pt").symlink_to(checkpoint)
    (tmp_path / "kept.pth").write_bytes(b"keep me")
    (tmp_path / "folder").mkdir()
    before = snapshot(run)
    refusals = [
        (checkpoint, True, "is the checkpoint being exported"),
        (tmp_path / "link.pt", True, "is the checkpoint being exported"),
        (tmp_path / "kept.pth", False, "exists; pass --overwrite to replace it"),
        (tmp_path / "missing" / "b.pth", True, "missing does not exist; create it first"),
        (tmp_path / "folder", True, "is a folder; OUT is the file to write"),
    ]
    for out, overwrite, message in refusals:
        flags = ["--overwrite"] if overwrite else []
        for source in (run, checkpoint):
            assert message in only_line(cli(export_main, source, out, *flags), 2)
    assert snapshot(run) == before
    assert (tmp_path / "kept.pth").read_bytes() == b"keep me"
    assert not (tmp_path / "missing").exists()
    assert cli(export_main, run, tmp_path / "kept.pth", "--overwrite").exit_code == 0
    assert (tmp_path / "kept.pth").read_bytes() != b"keep me"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--truncation", "nan"], "--truncation must be a finite number > 0, got nan"),
        (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
        (["--init-std", "inf"], "--init-std must be a finite number >= 0, got inf"),
        (["--batch-size", "0"], "--batch-size must be > 0 and <= --num-samples"),
        (["--device", "toaster"], "--device 'toaster' is not a device"),
    ],
)
def test_steer_checks_every_number_before_writing(tmp_path, flags, message):
    out = tmp_path / "walks.pt"
    args = ["--model-option", "resolution=16", "--num-samples", "2", "--batch-size", "1"]
    assert message in only_line(cli(steer_main, *args, *flags, "--out", out), 2)
    assert not out.exists() and list(tmp_path.iterdir()) == []
