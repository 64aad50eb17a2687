"""Weight, checkpoint and walk files that are not what they claim: one line that says what the
file is (naming the Python global a pickle asks for), never torch's advice to load it with
weights_only=False, never a usage preamble, a warning or a traceback; and nothing runs."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from genrep.errors import CheckpointError, DataError
from genrep.evaluate.datasets.base import DATASETS
from genrep.generate.cli import main as generate_main
from genrep.generate.cli import steer_main
from genrep.runs import load_backbone
from genrep.train.cli import export_main

from .conftest import TINY
from .helpers import cli, noise, only_line


class _Payload:
    """Unpickling this creates the marker file: the sign that a file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_save_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.ones(3)}, buffer)
    return buffer.getvalue()


def _zip_with_payload(marker: Path) -> bytes:
    """A torch.save archive whose data.pkl is the payload."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(_torch_save_bytes())) as source, zipfile.ZipFile(out, "w") as z:
        for name in source.namelist():
            data = source.read(name)
            z.writestr(
                name, pickle.dumps(_Payload(marker), 2) if name.endswith("data.pkl") else data
            )
    return out.getvalue()


#: kind -> (bytes of the file, what the error says)
FILES = {
    "pickle": (lambda m: pickle.dumps(_Payload(m)), "asking for the Python global posix.system"),
    "zip-pickle": (_zip_with_payload, "it asks for the Python global posix.system"),
    "legacy-pickle": (
        lambda m: pickle.dumps(_Payload(m), 2),
        "it asks for the Python global posix.system",
    ),
    "random": (lambda m: noise(4096), "not a torch.save file"),
    "protocol-0-ids": (lambda m: b"P\xff\xfe\n.", "not a torch.save file"),
    "empty": (lambda m: b"", "truncated or not a torch.save file"),
    "truncated": (lambda m: _torch_save_bytes()[:300], "truncated or not a torch.save file"),
}


def _commands(path: Path, tmp_path: Path) -> list[tuple[object, list]]:
    """Every command that reads a file of tensors someone else may have made."""
    out = tmp_path / "out"
    return [
        (export_main, [path, tmp_path / "backbone.pth"]),
        (generate_main, [*TINY, "--view", "steer", "--walks", path, "--out", out]),
        (generate_main, ["--model", "stylegan2", "--weights", path, "--n", "2", "--out", out]),
    ]


def _check(result, marker: Path, message: str) -> None:
    line = only_line(result, 1)
    assert message in line
    assert "weights_only" not in line and "Usage:" not in result.output
    assert not marker.exists()


@pytest.mark.parametrize("kind", FILES)
def test_a_file_that_is_not_tensors_is_one_line_naming_what_it_is(tmp_path, kind):
    make, message = FILES[kind]
    marker = tmp_path / "pwned"
    path = tmp_path / "file.pt"
    path.write_bytes(make(marker))
    for command, args in _commands(path, tmp_path):
        _check(cli(command, *args), marker, message)
    assert not (tmp_path / "out").exists() and not (tmp_path / "backbone.pth").exists()


def test_a_resumed_walk_checkpoint_is_read_as_tensors_only(tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "walks.pt"
    (tmp_path / "walks.pt.ckpt").write_bytes(pickle.dumps(_Payload(marker)))
    flags = ["--model-option", "resolution=16", "--num-samples", "2", "--batch-size", "1"]
    _check(cli(steer_main, *flags, "--out", out), marker, "posix.system")
    assert not out.exists()


def test_a_torch_archive_named_as_a_pickle_snapshot_says_so(tmp_path):
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(_torch_save_bytes())
    result = cli(generate_main, "--model", "stylegan2", "--weights", path, "--n", "2")
    assert "is a torch.save archive, not a pickled network snapshot" in only_line(result, 1)


def test_fifos_and_folders_given_as_weights_never_block(tmp_path, deadline):
    deadline(300)
    os.mkfifo(tmp_path / "fifo.pt")
    (tmp_path / "folder.pt").mkdir()
    for name, kind in (("fifo.pt", "FIFO"), ("folder.pt", "folder")):
        for command, args in _commands(tmp_path / name, tmp_path):
            line = only_line(cli(command, *args), 1)
            # a folder is a run folder to export, or refused as not the checkpoint file itself
            message = "is a FIFO, not a regular file" if kind == "FIFO" else "folder"
            assert name in line and message in line, line


def test_a_fifo_in_a_probe_dataset_is_one_error_naming_it(tmp_path, deadline):
    deadline(300)
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        os.mkfifo(tmp_path / split / "a" / "waits.jpg")
    dataset = DATASETS.build("imagefolder", root=tmp_path)
    with pytest.raises(DataError, match="waits.jpg .*is a FIFO, not a regular file"):
        dataset.load_image("train", 0)


def test_a_run_folder_s_config_is_read_within_bounds(tiny_run, tmp_path, deadline):
    """A run folder someone handed over (to probe its encoder), whose config.yaml is a 1 GiB
    sparse file: one error, read no further than the cap."""
    deadline(120)
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    with open(run / "config.yaml", "r+b") as handle:
        handle.truncate(1 << 30)
    with pytest.raises(CheckpointError, match="config.yaml is larger than the 1 MiB a YAML file"):
        load_backbone(run)
