"""Writing datasets when things go wrong: folders genrep does not own, configs from elsewhere,
numbers that make no sense, full disks, and processes racing into one folder. Nothing that was
there before is changed, and the manifest always matches the shards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

from genrep.errors import OutputError
from genrep.generate.cli import main as generate_main
from genrep.generate.cli import steer_main
from genrep.generate.pipeline import base_manifest, generate, make_plan
from genrep.io import StagedFile, sha256_file, tmp_path_for
from genrep.manifest import LOCK, DatasetWriter, dataset_lock, read_manifest
from genrep.shards_cli import main as shards_main

from .conftest import TINY
from .helpers import cli, only_line, refused


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below `folder` with its bytes and modification time (but the lock file, which
    taking the lock truncates)."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != LOCK
    }


def test_a_folder_that_is_not_a_genrep_dataset_is_never_written(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("my notes")
    (notes / "config.yaml").write_text("mine: true\n")
    before = snapshot(notes)
    message = only_line(cli(generate_main, "--no-progress", *TINY, "--out", notes), 2)
    assert "holds files but no manifest (README.md, config.yaml)" in message
    assert snapshot(notes) == before and sorted(p.name for p in notes.iterdir()) == [
        "README.md",
        "config.yaml",
    ]  # not even a lock file
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file" in only_line(cli(generate_main, *TINY, "--out", a_file), 2)
    assert a_file.read_text() == "x"


def test_a_received_config_never_chooses_where_to_write(tiny_dataset, tmp_path, monkeypatch):
    """Replaying a dataset's config.yaml whose author set `out:` writes to the default folder (or
    to --out), never to the author's path."""
    victim = tmp_path / "victim"
    config = tmp_path / "received.yaml"
    received = yaml.safe_load((tiny_dataset / "config.yaml").read_text())
    config.write_text(yaml.safe_dump({**received, "out": str(victim), "progress": False}))
    monkeypatch.chdir(tmp_path)
    result = cli(generate_main, "--config", config)
    assert result.exit_code == 0, result.output
    assert f"ignoring out: {victim}" in result.output
    assert not victim.exists()
    replayed = tmp_path / "shards" / "embedded-gaussian"
    assert read_manifest(replayed)["shards"] == read_manifest(tiny_dataset)["shards"]
    chosen = tmp_path / "chosen"
    assert cli(generate_main, "--config", config, "--out", chosen).exit_code == 0
    assert read_manifest(chosen)["complete"] and not victim.exists()


def _alias_bomb(key: str) -> str:
    """YAML whose `key` holds 10 ** 8 values in 9 lines, by aliases of aliases (billion laughs)."""
    lines = [f"{key}:", "  a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def _special_config(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.yaml"
    if kind == "fifo":
        os.mkfifo(path)  # reading waits for a writer forever
    elif kind == "device":
        path.symlink_to("/dev/zero")  # endless bytes
    elif kind == "huge":
        with open(path, "wb") as handle:  # sparse: no disk used
            handle.truncate(1 << 30)
    elif kind == "aliases":
        path.write_text(_alias_bomb("model-option"))
    else:  # a value that is not YAML, set by the file
        path.write_text("model-option:\n  z_dim: '[1'\n")
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("fifo", "fifo.yaml is a FIFO, not a regular file"),
        ("device", "device.yaml is a device, not a regular file"),
        ("huge", "huge.yaml is larger than the 1 MiB a YAML file may be"),
        ("aliases", "YAML aliases (*name) are not read: write the value out"),
        ("not-yaml", "'z_dim=[1': VALUE is not YAML"),
    ],
)
def test_a_received_config_file_is_read_within_bounds(tmp_path, deadline, kind, message):
    """A config.yaml that came with a dataset, replayed with --config: it never blocks, streams
    without end or expands to billions of values; one line, and nothing is written."""
    deadline(120)
    config = _special_config(tmp_path, kind)
    result = cli(generate_main, "--config", config, "--n", "2", "--out", tmp_path / "ds")
    assert message in refused(result, 2)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sigma", "nan"], "--sigma must be a finite number > 0, got nan"),
        (["--sigma", "inf"], "--sigma must be a finite number > 0, got inf"),
        (["--truncation", "nan"], "--truncation must be a finite number > 0, got nan"),
        (["--truncation", "-inf"], "--truncation must be a finite number > 0"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--n", str(10**12)], "makes 500000000000 shards, over the 100000"),
        (["--shard-size", str(10**9)], "images per shard, over the 100000"),
        (["--neighbors", str(10**6)], "images per shard, over the 100000"),
        (["--frame", "resize", "--size", "100000"], "over the 67108864 pixels"),
        (["--shards", "50:60"], "--shards starts at shard 50, past the last one"),
        (["--model-option", "resolution=0"], "--model-option resolution must be >= 8"),
        (["--model-option", "resolution=64.5"], "resolution must be a whole number"),
        (["--model-option", "z_dim=10000000"], "--model-option z_dim must be >= 16 and <= 4096"),
        (["--classes", str(10**9)], "--classes must be >= 1 and <= 10000"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--device", "toaster"], "--device 'toaster' is not a device"),
        (["--workers", "100000"], "100000 is not in the range"),
    ],
)
def test_generate_checks_every_number_before_writing(tmp_path, flags, message):
    out = tmp_path / "ds"
    assert message in refused(cli(generate_main, "--no-progress", *TINY, *flags, "--out", out), 2)
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--step-scale", "rotate_3d=-1"], "--step-scale rotate_3d must be > 0, got -1"),
        (["--step-scale", "rotate_3d=nan"], "--step-scale rotate_3d must be a number"),
        (["--step-scale", "spin=2"], "spin"),
        (["--size", "1000"], "would enlarge the generator's 16x16 frame"),
        (["--shards", "50:60"], "--shards starts at shard 50, past the last one"),
        (["--format", "bmp"], "bmp"),
    ],
)
def test_view_steer_checks_everything_before_learning_walks(tmp_path, monkeypatch, flags, message):
    """Learning the walks takes hours on a CPU: a typo must not wait for it."""

    def learn(*_args, **_kwargs):
        raise AssertionError("walks learned before the flags were checked")

    monkeypatch.setattr("genrep.generate.pipeline.cached_walks", learn)
    out = tmp_path / "ds"
    result = cli(generate_main, "--no-progress", *TINY, "--view", "steer", *flags, "--out", out)
    assert message in refused(result, 2)
    assert not out.exists()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    result = cli(generate_main, "--no-progress", *TINY, "--view", "steer", "--out", notes)
    assert "it is not a genrep dataset" in only_line(result, 2)


def test_a_dataset_of_another_view_is_refused_before_learning_walks(dataset, monkeypatch):
    def learn(*_args, **_kwargs):
        raise AssertionError("walks learned before the --out dataset was checked")

    monkeypatch.setattr("genrep.generate.pipeline.cached_walks", learn)
    before = snapshot(dataset)
    result = cli(generate_main, "--no-progress", *TINY, "--view", "steer", "--out", dataset)
    assert "differs in: view gaussian, not steer" in only_line(result, 2)
    assert snapshot(dataset) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [generate_main, steer_main])
def test_cuda_without_a_gpu_is_one_line(tmp_path, command):
    message = only_line(cli(command, "--device", "cuda", "--out", tmp_path / "x"), 2)
    assert "torch sees no CUDA GPU here; use --device cpu" in message
    assert not (tmp_path / "x").exists()


def test_a_full_disk_is_one_line_and_leaves_nothing_partial(tmp_path):
    """Writing shard 0 fails with ENOSPC (its temporary file is /dev/full): one line naming the
    shard, exit 1, and no shard, temporary file or 'Exception ignored' noise left behind."""
    out = tmp_path / "ds"
    out.mkdir()
    script = (
        "import os\n"
        "from genrep.generate.cli import main\n"
        "from genrep.io import tmp_path_for\n"
        f"os.symlink('/dev/full', tmp_path_for('{out / 'shard-000000.tar'}'))\n"
        "main()\n"
    )
    args = ["--no-progress", *TINY, "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"Error: No space left on device ({out / 'shard-000000.tar'})"
    ]
    assert not list(out.glob("shard-*")) and not read_manifest(out)["shards"]


def test_a_full_disk_while_writing_the_manifest_keeps_the_old_one(dataset, monkeypatch):
    """The manifest update fails with ENOSPC: one line, the old manifest intact."""
    (dataset / "shard-000003.tar").unlink()
    before = (dataset / "manifest.json").read_bytes()
    tmp_path_for(dataset / "manifest.json").symlink_to("/dev/full")
    result = cli(generate_main, "--no-progress", *TINY, "--out", dataset)
    assert "No space left on device" in only_line(result, 1)
    assert (dataset / "manifest.json").read_bytes() == before


def _options(out: Path, **changes) -> dict:
    options = {
        "model": "embedded",
        "model_option": {"resolution": 16},
        "n": 8,
        "shard_size": 2,
        "out": str(out),
        "device": "cpu",
    }
    return {**options, **changes}


def _race(out: Path, configs: list[dict], patch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """Run `generate` for each config in its own thread, all of them held at the first
    `dataset_lock` until every one has passed the checks made without the lock."""
    plans = [make_plan(_options(out, **config)) for config in configs]
    barrier = threading.Barrier(len(plans), timeout=60)
    seen: set[int] = set()

    def held_lock(folder):
        if threading.get_ident() not in seen:
            seen.add(threading.get_ident())
            barrier.wait()  # every writer has passed the early check: the race window is open
        return dataset_lock(folder)

    patch.setattr("genrep.manifest.dataset_lock", held_lock)
    outcomes: list[BaseException | None] = [None] * len(plans)

    def run(i: int) -> None:
        try:
            generate(plans[i], workers=0, progress=False)
        except BaseException as err:  # noqa: BLE001 (the test inspects it)
            outcomes[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(plans))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def test_two_configs_racing_into_a_new_folder_leave_one_dataset(tmp_path, monkeypatch):
    out = tmp_path / "race"
    outcomes = _race(out, [{"seed": 1}, {"seed": 2}], monkeypatch)
    refused = [err for err in outcomes if err is not None]
    assert len(refused) == 1 and isinstance(refused[0], OutputError), outcomes
    assert "different config (differs in: seed)" in str(refused[0])
    winner = 1 if outcomes[1] is not None else 2
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["seed"] == winner
    assert cli(shards_main, "verify", out).exit_code == 0


def test_the_copy_of_a_shard_that_stays_is_the_one_recorded(tmp_path):
    """Two writers of one dataset commit different bytes for shard 0 (as a CPU and a GPU writer
    may). The first is held for 2 s just after it made its copy visible, long enough for the second
    to replace it if it could; the manifest must record the copy that stays."""
    folder = tmp_path / "ds"
    base = base_manifest(make_plan(_options(folder)))
    writers = [DatasetWriter(folder, base) for _ in range(2)]
    for writer in writers:
        writer.open()
    visible, second_done = threading.Event(), threading.Event()

    def write(i: int) -> None:
        staged = StagedFile(folder / "shard-000000.tar")  # a temporary file of this thread
        with staged as f:
            f.write(f"copy {i}".encode() * 1000)
        if i == 0:
            make_visible = staged.commit

            def held() -> None:
                make_visible()
                visible.set()
                second_done.wait(2)  # the race window

            staged.commit = held
        else:
            assert visible.wait(60)
        try:
            writers[i].commit(0, staged)
        finally:
            staged.discard()
            if i == 1:
                second_done.set()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for writer in writers:
        writer.close()
    entry = read_manifest(folder)["shards"][0]
    assert entry["sha256"] == sha256_file(folder / "shard-000000.tar")
    assert (folder / "shard-000000.tar").read_bytes().startswith(b"copy 0")


def test_a_shard_left_without_its_entry_is_recorded_by_its_checksum(dataset):
    """A writer killed between making a shard visible and recording it: the next run records the
    shard by hashing it (once), and rewrites nothing else."""
    manifest = read_manifest(dataset)
    orphan = manifest["shards"].pop(1)
    manifest["complete"] = False
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    shard_before = (dataset / "shard-000001.tar").stat().st_mtime_ns
    assert cli(generate_main, "--no-progress", *TINY, "--out", dataset).exit_code == 0
    assert read_manifest(dataset)["shards"][1] == orphan
    assert (dataset / "shard-000001.tar").stat().st_mtime_ns == shard_before


def test_resuming_does_not_stat_or_hash_every_shard(dataset, monkeypatch):
    """The overhead of a rerun does not grow with the shards present: the folder is listed once,
    no shard is stat'ed or hashed, and a complete dataset is left untouched."""
    before = snapshot(dataset)
    calls: list[str] = []
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):
        if "shard-" in str(path):
            calls.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    monkeypatch.setattr("genrep.manifest.sha256_file", lambda path: calls.append(f"hash {path}"))
    assert cli(generate_main, "--no-progress", *TINY, "--out", dataset).exit_code == 0
    assert calls == []
    assert snapshot(dataset) == before


def test_an_edited_card_is_never_replaced(dataset):
    (dataset / "README.md").write_text("my card")
    (dataset / "shard-000002.tar").unlink()
    assert cli(generate_main, "--no-progress", *TINY, "--out", dataset).exit_code == 0
    assert (dataset / "README.md").read_text() == "my card"
    assert cli(shards_main, "verify", dataset).exit_code == 0


def test_a_folder_with_only_genrep_leftovers_is_taken(tmp_path):
    """A run killed before its manifest existed leaves the lock and a temporary file: rerunning
    the command takes the folder."""
    out = tmp_path / "ds"
    out.mkdir()
    (out / ".manifest.lock").touch()
    tmp = out / f".shard-000000.tar.{socket.gethostname()}.999999999.1.tmp"
    tmp.write_bytes(b"partial")
    assert cli(generate_main, "--no-progress", *TINY, "--out", out).exit_code == 0
    assert read_manifest(out)["complete"] and not tmp.exists()
