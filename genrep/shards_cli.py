"""`genrep-shards`: look at, check and preview a shard folder someone handed you."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image, ImageDraw

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
@click.option(
    "--training-view",
    type=click.Choice(["plain", "tx"]),
    default=None,
    help="Show beside each stored image the view genrep-train makes of it, its crop outlined on "
    "the image: plain (no Tx: App. A's central 128 px of a whole frame) or tx (the --tx "
    "recipe's random square crop and pixel Tx).",
)
@click.option(
    "--tx",
    default="genrep",
    show_default=True,
    help="Tx recipe of the training views (genrep-train --tx).",
)
@click.option(
    "--input-size",
    type=click.IntRange(min=1),
    default=None,
    help="Side of the training views [default: genrep-train's for this dataset and --tx].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the Tx draws.")
def preview(
    folder: str,
    out: str,
    rows: int,
    columns: int | None,
    training_view: str | None,
    tx: str,
    input_size: int | None,
    seed: int,
) -> None:
    """A contact sheet: each row an anchor followed by its neighbor views (with --training-view,
    each beside what training sees of it)."""
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
    view = training_view_maker(path, training_view, tx, input_size) if training_view else None
    cells: list[list[Image.Image]] = []
    for r, row in enumerate(grid):
        cells.append([])
        for c, image in enumerate(row):
            shown = image.resize((cell_w, cell_h))
            if view is not None:
                box, seen = view(image, seed + r * len(row) + c)
                if box is not None:
                    top, left, height, width = (round(v * scale) for v in box)
                    outline = (left, top, left + width - 1, top + height - 1)
                    ImageDraw.Draw(shown).rectangle(outline, outline=(255, 0, 0), width=2)
                cells[-1] += [shown, seen.resize((cell_h, cell_h), Image.NEAREST)]
            else:
                cells[-1].append(shown)
    widths = [sum(cell.width for cell in row) + gap * (len(row) - 1) for row in cells]
    sheet = np.full((len(cells) * (cell_h + gap) - gap, max(widths), 3), 255, np.uint8)
    for r, row in enumerate(cells):
        x, y = 0, r * (cell_h + gap)
        for cell in row:
            sheet[y : y + cell_h, x : x + cell.width] = np.asarray(cell)
            x += cell.width + gap
    Image.fromarray(sheet).save(out)
    summary = f"{len(grid)} anchors x {max(len(row) for row in grid) - 1} neighbors"
    if view is not None:
        summary += f", each beside its {training_view} training view ({view.describe})"
    click.echo(f"wrote {out}: {summary}")


class _TrainingViews:
    """(crop box or None, view image) of a stored image, made by genrep-train's own transform."""

    def __init__(self, transform: Any, crop: Any, describe: str) -> None:
        self.transform, self.crop, self.describe = transform, crop, describe

    def __call__(self, image: Image.Image, seed: int) -> tuple[Any, Image.Image]:
        import torch

        with torch.random.fork_rng(devices=[]):
            box = None
            if hasattr(self.crop, "crop_with_box"):  # whole frames and Tx crops; not format 1's
                torch.manual_seed(seed)
                box = self.crop.crop_with_box(image)[0]
            torch.manual_seed(seed)  # the transform draws that same crop again
            pixels = self.transform(image)
        return box, Image.fromarray(pixels.permute(1, 2, 0).numpy())


def training_view_maker(
    folder: Path, training_view: str, tx: str, input_size: int | None
) -> _TrainingViews:
    """The views genrep-train makes of this dataset (stage 2's code, imported only here)."""
    from genrep.train.data import open_data
    from genrep.train.tx import build_recipe

    info = open_data([folder], None, None)
    recipe = build_recipe(tx)
    size = input_size or recipe.default_input_size(info.train_side)
    augment = training_view == "tx"
    transform = recipe.view_transform(augment, size, info.image_size, info.center_crop)
    what = f"{size} px, Tx recipe {recipe.name}" if augment else f"{size} px"
    if not augment and info.center_crop:
        what += f", from the central {info.center_crop} px"
    return _TrainingViews(transform, transform.transforms[0], what)
