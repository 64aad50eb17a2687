"""`genrep-shards`: look at, check and preview a shard folder someone handed you."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image

from genrep.errors import DataError, Group, ShardFormatError
from genrep.io import sha256_file
from genrep.manifest import find_dataset, read_manifest
from genrep.options import config_option
from genrep.shards import decode_sample, iter_raw_samples, stored_frame

#: largest side of an image in a contact sheet, in pixels
PREVIEW_CELL = 256


def _dataset(folder: str) -> tuple[Path, dict[str, Any]]:
    path = find_dataset(folder)
    return path, read_manifest(path)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Inspect, verify and preview genrep shard folders."""


@main.command()
@config_option
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
def inspect(folder: str) -> None:
    """Summarize a dataset: generator, view, size and shards."""
    path, m = _dataset(folder)
    g, image = m["generator"], m["image"]
    frame = stored_frame(m)
    samples = sum(entry["samples"] for entry in m["shards"])
    size = sum(entry["bytes"] for entry in m["shards"])
    lines = [
        f"dataset     {path}",
        f"format      {m['format']} v{m['format_version']}"
        + ("" if m["complete"] else "  (INCOMPLETE: rerun its genrep-generate command)"),
        f"generator   {g['name']}  z_dim={g['z_dim']}  classes={g['num_classes'] or 'unconditional'}"
        f"  weights sha256={g['weights_sha256'][:16]}",
        f"view        {m['view']['name']}  {m['view']['params']}  neighbors={m['neighbors']}",
        f"anchors     {samples} of {m['n']}  (seed {m['seed']}, truncation {m['truncation']})",
        f"images      {frame.describe()}, {image['format']} q{image['quality']}",
        f"shards      {len(m['shards'])} of {m['num_shards']}, {size / 2**20:.1f} MiB",
    ]
    click.echo("\n".join(lines))


def verify_shard(path: Path, entry: dict[str, Any], neighbors: int) -> str | None:
    """What is wrong with one shard (checksum, size, sample count, decodability), or None."""
    if not path.exists():
        return "missing"
    if path.stat().st_size != entry["bytes"]:
        return f"size {path.stat().st_size} != {entry['bytes']} in the manifest"
    if sha256_file(path) != entry["sha256"]:
        return "sha256 differs from the manifest"
    count = 0
    try:
        for raw in iter_raw_samples(path):
            sample = decode_sample(raw)
            if len(sample.neighbors) != neighbors:
                return f"sample {sample.key} has {len(sample.neighbors)} neighbors, expected {neighbors}"
            count += 1
    except (ShardFormatError, OSError, ValueError) as err:
        return str(err)
    if count != entry["samples"]:
        return f"{count} samples, manifest says {entry['samples']}"
    return None


@main.command()
@config_option
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
def verify(folder: str) -> None:
    """Check every shard's checksum and decode every sample; exit 1 naming each bad shard."""
    path, m = _dataset(folder)
    bad = 0
    for entry in m["shards"]:
        problem = verify_shard(path / entry["name"], entry, m["neighbors"])
        if problem:
            bad += 1
            click.echo(f"BAD {entry['name']}: {problem}", err=True)
    listed = {entry["name"] for entry in m["shards"]}
    for stray in sorted(p.name for p in path.glob("shard-*.tar") if p.name not in listed):
        bad += 1
        click.echo(f"BAD {stray}: not in the manifest", err=True)
    if not m["complete"]:
        click.echo(f"INCOMPLETE: {len(m['shards'])} of {m['num_shards']} shards", err=True)
    if bad or not m["complete"]:
        sys.exit(1)
    click.echo(f"OK {len(m['shards'])} shards, {sum(e['samples'] for e in m['shards'])} samples")


@main.command()
@config_option
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="preview.png", show_default=True, help="PNG file to write.")
@click.option(
    "--rows", type=click.IntRange(min=1), default=8, show_default=True, help="Anchors to show."
)
@click.option(
    "--columns", type=click.IntRange(min=0), default=None, help="Neighbors per row [default: all]."
)
def preview(folder: str, out: str, rows: int, columns: int | None) -> None:
    """A contact sheet: each row an anchor followed by its neighbor views."""
    path, m = _dataset(folder)
    grid: list[list[Image.Image]] = []
    for entry in m["shards"]:
        for raw in iter_raw_samples(path / entry["name"]):
            sample = decode_sample(raw)
            grid.append([sample.anchor, *sample.neighbors[:columns]])
            if len(grid) == rows:
                break
        if len(grid) == rows:
            break
    if not grid:
        raise DataError(f"{path} holds no samples yet")
    frame, gap = stored_frame(m), 2
    scale = min(1.0, PREVIEW_CELL / max(frame.width, frame.height))
    cell_w, cell_h = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
    width = max(len(row) for row in grid)
    sheet = np.full(
        (len(grid) * (cell_h + gap) - gap, width * (cell_w + gap) - gap, 3), 255, np.uint8
    )
    for r, row in enumerate(grid):
        for c, image in enumerate(row):
            y, x = r * (cell_h + gap), c * (cell_w + gap)
            sheet[y : y + cell_h, x : x + cell_w] = np.asarray(image.resize((cell_w, cell_h)))
    Image.fromarray(sheet).save(out)
    click.echo(f"wrote {out}: {len(grid)} anchors x {width - 1} neighbors")
