"""Helpers for the genrep-train tests: tiny datasets made by the real genrep-generate, shard edits.

The `datasets` fixture (tests/train_fixtures.py) makes them once per session; a test that edits
shards copies a dataset first (`copy_dataset`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from genrep.generate.cli import main as generate_main
from genrep.io import sha256_file
from genrep.manifest import read_manifest, write_manifest
from genrep.shards import iter_raw_samples, write_shard

#: name -> genrep-generate flags of the shared datasets (shard sizes chosen to be uneven)
DATASETS = {
    # unconditional, 2 gaussian neighbors, shards of 20, 20, 20, 4 anchors
    "gauss": ["--n", "64", "--neighbors", "2", "--shard-size", "20"],
    # class-conditional with 4 classes, 1 neighbor, shards of 30, 30, 4 anchors
    "cond": ["--n", "64", "--classes", "4", "--neighbors", "1", "--shard-size", "30"],
    # no latent view: Tx of the anchor only
    "none": ["--n", "24", "--view", "none", "--shard-size", "24"],
}

#: common fast settings of the training runs in tests
FAST = ["--arch", "resnet18", "--no-progress", "--log-every", "1", "--workers", "0"]


def generate(out: Path, *flags: str) -> Path:
    result = CliRunner().invoke(
        generate_main,
        ["--no-progress", "--size", "32", "--workers", "0", "--out", str(out), *flags],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return out


def copy_dataset(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def rewrite_shard(
    folder: Path, shard: str, edit: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> None:
    """Rewrite one shard of a dataset through `edit(raw) -> raw` and update its manifest entry."""
    path = folder / shard
    samples = []
    for raw in iter_raw_samples(path):
        raw = {k: v for k, v in raw.items() if k != "__url__"}
        edited = edit(raw)
        if edited is not None:
            samples.append(edited)
    with open(path, "wb") as handle:
        write_shard(handle, samples)
    manifest = read_manifest(folder)
    for entry in manifest["shards"]:
        if entry["name"] == shard:
            entry.update(samples=len(samples), bytes=path.stat().st_size, sha256=sha256_file(path))
    write_manifest(folder, manifest)


def read_log(run: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
