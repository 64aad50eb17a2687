"""`genrep-shards`: look at, check and preview a shard folder someone handed you."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image

from genrep.errors import DataError, Group, ShardFormatError, UsageError, warn
from genrep.images import MAX_IMAGE_PIXELS
from genrep.io import atomic_open
from genrep.manifest import find_dataset, read_manifest
from genrep.options import config_option
from genrep.shards import SHARD_RE, Expected, ShardFile, decode_sample, stored_frame

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


def verify_shard(
    path: Path, entry: dict[str, Any], expected: Expected, neighbors: int
) -> str | None:
    """What is wrong with one shard (size, checksum, decodability, sample count), or None.

    One pass: the samples are decoded as the file streams through the hash."""
    problem, count = None, 0
    try:
        with ShardFile(path, entry) as shard:
            try:
                for raw in shard.samples():
                    sample = decode_sample(raw, expected)
                    if len(sample.neighbors) != neighbors:
                        problem = (
                            f"sample {sample.key} has {len(sample.neighbors)} neighbors, "
                            f"expected {neighbors}"
                        )
                        break
                    count += 1
            except ShardFormatError as err:
                problem = str(err)
            if not shard.checksum_matches():
                return "sha256 differs from the manifest" + (f" ({problem})" if problem else "")
    except ShardFormatError as err:  # not a regular file, or not the manifest's size
        return str(err)
    if problem is None and count != entry["samples"]:
        problem = f"{count} samples, manifest says {entry['samples']}"
    return problem


@main.command()
@config_option
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
def verify(folder: str) -> None:
    """Check every shard's checksum and decode every sample; exit 1 naming each bad shard."""
    path, m = _dataset(folder)
    bad, expected = 0, Expected.of(m)
    for entry in m["shards"]:
        problem = verify_shard(path / entry["name"], entry, expected, m["neighbors"])
        if problem:
            bad += 1
            click.echo(f"BAD {entry['name']}: {problem}", err=True)
    listed = {entry["name"] for entry in m["shards"]}
    with os.scandir(path) as entries:
        names = [entry.name for entry in entries]
    for stray in sorted(name for name in names if SHARD_RE.match(name) and name not in listed):
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
@click.option("--out", default="preview.png", show_default=True, help="Image file to write.")
@click.option(
    "--rows", type=click.IntRange(min=1), default=8, show_default=True, help="Anchors to show."
)
@click.option(
    "--columns", type=click.IntRange(min=0), default=None, help="Neighbors per row [default: all]."
)
def preview(folder: str, out: str, rows: int, columns: int | None) -> None:
    """A contact sheet: each row an anchor followed by its neighbor views (bad samples skipped)."""
    image_format = Image.registered_extensions().get(Path(out).suffix.lower())
    if image_format not in Image.SAVE:
        raise UsageError(f"--out {out}: name an image file (.png, .jpg or .webp) for the sheet")
    path, m = _dataset(folder)
    frame, gap = stored_frame(m), 2
    scale = min(1.0, PREVIEW_CELL / max(frame.width, frame.height))
    cell_w, cell_h = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
    width = 1 + min(m["neighbors"], m["neighbors"] if columns is None else columns)
    shape = (rows * (cell_h + gap) - gap, width * (cell_w + gap) - gap)
    if shape[0] * shape[1] > MAX_IMAGE_PIXELS:
        raise UsageError(
            f"a sheet of {rows} rows of {width} images would be {shape[1]}x{shape[0]} px; "
            "lower --rows or --columns"
        )
    grid: list[list[np.ndarray]] = []
    skipped, problem = 0, ""
    expected = Expected.of(m)
    for entry in m["shards"]:
        try:
            with ShardFile(path / entry["name"]) as shard:
                for raw in shard.samples():
                    try:
                        sample = decode_sample(raw, expected)
                    except ShardFormatError as err:
                        skipped, problem = skipped + 1, str(err)
                        continue
                    views = [sample.anchor, *sample.neighbors[: width - 1]]
                    grid.append([np.asarray(v.resize((cell_w, cell_h))) for v in views])
                    if len(grid) == rows:
                        break
        except ShardFormatError as err:
            skipped, problem = skipped + 1, f"{entry['name']}: {err}"
        if len(grid) == rows:
            break
    if skipped:
        warn(
            f"skipped {skipped} bad samples or shards (the last: {problem}); see genrep-shards verify"
        )
    if not grid:
        raise DataError(f"{path} holds no readable samples")
    width = max(len(row) for row in grid)
    sheet = np.full(
        (len(grid) * (cell_h + gap) - gap, width * (cell_w + gap) - gap, 3), 255, np.uint8
    )
    for r, row in enumerate(grid):
        for c, pixels in enumerate(row):
            y, x = r * (cell_h + gap), c * (cell_w + gap)
            sheet[y : y + cell_h, x : x + cell_w] = pixels
    with atomic_open(out) as handle:
        Image.fromarray(sheet).save(handle, format=image_format)
    click.echo(f"wrote {out}: {len(grid)} anchors x {width - 1} neighbors")
