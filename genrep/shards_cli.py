"""`genrep-shards`: look at, check and preview a shard folder someone handed you; cut it down or
reshard it (`genrep.reshape`); publish one to the Hugging Face Hub (`genrep.hub`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image, ImageDraw

from genrep.errors import (
    DataError,
    Group,
    ShardFormatError,
    UsageError,
    printable,
    refuse_to_replace,
    warn,
)
from genrep.images import MAX_IMAGE_PIXELS
from genrep.io import atomic_open
from genrep.manifest import CONFIG, dataset_at
from genrep.options import RegistryChoice, check_number, config_option
from genrep.remote import DatasetLocation, Location, dataset_name, is_remote, locate
from genrep.shards import (
    SHARD_RE,
    Expected,
    ShardFile,
    decode_sample,
    format_members,
    stored_frame,
)

#: largest side of an image in a contact sheet, in pixels
PREVIEW_CELL = 256


def _tx_recipes() -> Any:
    """genrep-train's Tx recipes, imported when --tx is used or listed (stage 2 is slow to load)."""
    from genrep.train.tx import TX_RECIPES

    return TX_RECIPES


def _dataset(folder: str) -> tuple[Location, dict[str, Any]]:
    return dataset_at(folder)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Inspect, verify, preview, reshape and publish genrep dataset folders."""


@main.command()
@config_option
@click.argument("folder", type=DatasetLocation())
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
    parent = m.get("parent")
    if isinstance(parent, dict):
        lines.append(
            f"parent      {parent.get('name')} ({parent.get('operation')} of its "
            f"{parent.get('n')} anchors, content sha256={str(parent.get('content_hash'))[:16]})"
        )
    click.echo("\n".join(printable(line) for line in lines))


def verify_shard(path: Location, entry: dict[str, Any], m: dict[str, Any]) -> str | None:
    """What is wrong with one shard of the dataset of manifest `m`, in a folder or at a URL (size,
    checksum, members, decodability, sample count), or None.

    One pass: the samples are checked and decoded as the file streams through the hash."""
    problem, count, expected = None, 0, Expected.of(m)
    try:
        with ShardFile(path, entry) as shard:
            try:
                for raw in shard.samples():
                    decode_sample(format_members(raw, expected), expected)
                    count += 1
            except ShardFormatError as err:
                problem = str(err)
            if not shard.checksum_matches():
                return "sha256 differs from the manifest" + (f"; {problem}" if problem else "")
    except ShardFormatError as err:  # missing, not a regular file, not the manifest's size
        return str(err)
    if problem is None and count != entry["samples"]:
        problem = f"{count} samples, manifest says {entry['samples']}"
    return problem


def repair_advice(path: Location, m: dict[str, Any]) -> str:
    """What rewrites a bad shard: the command that made the dataset, rerun, writes the shards that
    are missing (and leaves those present alone, so the bad one goes first)."""
    if is_remote(path):
        return "ask whoever serves the dataset to replace it, or fetch the dataset from its source"
    parent = m.get("parent")
    if isinstance(parent, dict):
        made_by = f"the `genrep-shards {parent.get('operation', 'subset')}` command that made it"
    elif os.path.lexists(Path(path) / CONFIG):
        made_by = f"`genrep-generate --config {Path(path) / CONFIG} --out {path}`"
    else:
        made_by = "the dataset's genrep-generate command"
    return f"to repair, delete the shard and rerun {made_by}, or copy it again from its source"


def dataset_problems(path: Location, m: dict[str, Any]) -> list[str]:
    """Everything wrong with a dataset (folder or URL), one line each (empty: it verifies); shards
    not in the manifest are found in a folder only (a URL is not listed)."""
    problems = []
    for entry in m["shards"]:
        problem = verify_shard(locate(path, entry["name"]), entry, m)
        if problem:
            problems.append(f"BAD {entry['name']}: {problem}; {repair_advice(path, m)}")
    listed = {entry["name"] for entry in m["shards"]}
    names = []
    if not is_remote(path):
        with os.scandir(path) as entries:
            names = [entry.name for entry in entries]
    for stray in sorted(name for name in names if SHARD_RE.match(name) and name not in listed):
        problems.append(f"BAD {stray}: not in the manifest")
    if not m["complete"]:
        problems.append(f"INCOMPLETE: {len(m['shards'])} of {m['num_shards']} shards")
    return problems


@main.command()
@config_option
@click.argument("folder", type=DatasetLocation())
def verify(folder: str) -> None:
    """Check every shard's checksum and decode every sample; exit 1 naming each bad shard."""
    path, m = _dataset(folder)
    problems = dataset_problems(path, m)
    for problem in problems:
        click.echo(printable(problem), err=True)
    if problems:
        sys.exit(1)
    click.echo(f"OK {len(m['shards'])} shards, {sum(e['samples'] for e in m['shards'])} samples")


@main.command()
@config_option
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("repo_id")
@click.option(
    "--private/--public",
    default=None,
    help="Visibility of a repository the push creates [default: the hub's].",
)
@click.option("--message", default=None, help="Commit message [default: genrep dataset NAME].")
def push(folder: str, repo_id: str, private: bool | None, message: str | None) -> None:
    """Verify FOLDER, then upload it to the Hugging Face dataset repository REPO_ID (OWNER/NAME)
    in one commit: shards, manifest, config and card (pip install 'genrep[hub]'; a token from
    `hf auth login` or HF_TOKEN)."""
    from genrep.hub import hub_client
    from genrep.hub import push as push_to_hub

    client = hub_client(repo_id)
    path, m = _dataset(folder)
    problems = dataset_problems(path, m)
    if problems:
        raise DataError(
            f"{path} does not verify ({len(problems)} problem(s), first: {problems[0]}); "
            f"run genrep-shards verify {path}, and push a dataset that passes"
        )
    upload, url = push_to_hub(client, Path(path), m, repo_id, private=private, message=message)
    removed = f", removed {len(upload.delete)} stale shard(s)" if upload.delete else ""
    click.echo(f"pushed {len(upload.add)} files ({upload.bytes / 2**20:.1f} MiB){removed}: {url}")


@main.command()
@config_option
@click.argument("folder", type=DatasetLocation())
@click.option(
    "--out",
    default=None,
    help="Image file to write (.png, .jpg or .webp) [default: preview-DATASET.png here].",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
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
    type=RegistryChoice(_tx_recipes, "Tx recipe"),
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
    out: str | None,
    overwrite: bool,
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
    if out is None:  # here, not in a dataset folder that may be shared or read-only
        name = dataset_name(str(path)) if is_remote(path) else Path(path).resolve().name
        out = f"preview-{name}.png"
    image_format = Image.registered_extensions().get(Path(out).suffix.lower())
    if image_format not in Image.SAVE:
        raise UsageError(f"--out {out}: name an image file (.png, .jpg or .webp) for the sheet")
    refuse_to_replace(out, overwrite)
    frame, gap = stored_frame(m), 2
    scale = min(1.0, PREVIEW_CELL / max(frame.width, frame.height))
    cell_w, cell_h = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
    width = 1 + min(m["neighbors"], m["neighbors"] if columns is None else columns)
    sheet_w = width * (cell_w + gap) - gap + (width * (cell_h + gap) if training_view else 0)
    shape = (rows * (cell_h + gap) - gap, sheet_w)
    if shape[0] * shape[1] > MAX_IMAGE_PIXELS:
        raise UsageError(
            f"a sheet of {rows} rows of {width} images would be {shape[1]}x{shape[0]} px; "
            "lower --rows or --columns"
        )
    view = training_view_maker(path, training_view, tx, input_size) if training_view else None
    # Each stored image becomes its cells as it is read: memory is the sheet's, not the images'.
    cells: list[list[Image.Image]] = []
    skipped, problem = 0, ""
    expected = Expected.of(m)
    for entry in m["shards"]:
        try:
            with ShardFile(locate(path, entry["name"]), size=entry["bytes"]) as shard:
                for raw in shard.samples():
                    try:
                        sample = decode_sample(raw, expected)
                    except ShardFormatError as err:
                        skipped, problem = skipped + 1, str(err)
                        continue
                    views = [sample.anchor, *sample.neighbors[: width - 1]]
                    first_seed = seed + len(cells) * len(views)
                    cells.append(
                        [
                            cell
                            for c, image in enumerate(views)
                            for cell in _cells(image, (cell_w, cell_h), scale, view, first_seed + c)
                        ]
                    )
                    if len(cells) == rows:
                        break
        except ShardFormatError as err:
            skipped, problem = skipped + 1, f"{entry['name']}: {err}"
        if len(cells) == rows:
            break
    if skipped:
        warn(
            f"skipped {skipped} bad samples or shards (the last: {problem}); see genrep-shards verify"
        )
    if not cells:
        raise DataError(f"{path} holds no readable samples")
    widths = [sum(cell.width for cell in row) + gap * (len(row) - 1) for row in cells]
    sheet = np.full((len(cells) * (cell_h + gap) - gap, max(widths), 3), 255, np.uint8)
    for r, row in enumerate(cells):
        x, y = 0, r * (cell_h + gap)
        for cell in row:
            sheet[y : y + cell_h, x : x + cell.width] = np.asarray(cell)
            x += cell.width + gap
    with atomic_open(out) as handle:
        Image.fromarray(sheet).save(handle, format=image_format)
    shown = max(len(row) for row in cells) // (2 if view is not None else 1)
    summary = f"{len(cells)} anchors x {shown - 1} neighbors"
    if view is not None:
        summary += f", each beside its {training_view} training view ({view.describe})"
    click.echo(f"wrote {out}: {summary}")


def _cells(
    image: Image.Image,
    size: tuple[int, int],
    scale: float,
    view: _TrainingViews | None,
    seed: int,
) -> list[Image.Image]:
    """A stored image as shown in the sheet, and beside it (with a view) its training view, the
    crop outlined on the image."""
    shown = image.resize(size)
    if view is None:
        return [shown]
    box, seen = view(image, seed)
    if box is not None:
        top, left, height, width = (round(v * scale) for v in box)
        outline = (left, top, left + width - 1, top + height - 1)
        ImageDraw.Draw(shown).rectangle(outline, outline=(255, 0, 0), width=2)
    return [shown, seen.resize((size[1], size[1]), Image.Resampling.NEAREST)]


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
    folder: Location, training_view: str, tx: str, input_size: int | None
) -> _TrainingViews:
    """The views genrep-train makes of this dataset (stage 2's code, imported only here)."""
    from genrep.train.config import MAX_INPUT_SIZE
    from genrep.train.data import open_data
    from genrep.train.tx import build_recipe

    check_number("--input-size", input_size, at_least=1, at_most=MAX_INPUT_SIZE)
    info = open_data([folder], None, None)
    recipe = build_recipe(tx)
    size = input_size or recipe.default_input_size(info.train_side)
    augment = training_view == "tx"
    transform = recipe.view_transform(augment, size, info.image_size, info.center_crop)
    what = f"{size} px, Tx recipe {recipe.name}" if augment else f"{size} px"
    if not augment and info.center_crop:
        what += f", from the central {info.center_crop} px"
    return _TrainingViews(transform, transform.transforms[0], what)


def _reshape(folder: str, out: str, selection: Any, shard_size: int | None) -> None:
    from genrep.reshape import reshape

    manifest = reshape(
        folder, out, selection, shard_size, log=lambda line: click.echo(line, err=True)
    )
    samples = sum(entry["samples"] for entry in manifest["shards"])
    click.echo(f"wrote {out}: {samples} anchors in {len(manifest['shards'])} shards; complete")


@main.command()
@config_option
@click.argument("folder", type=DatasetLocation())
@click.option("--out", required=True, help="Folder of the new dataset (new, empty, or resuming).")
@click.option("--n", type=click.IntRange(min=1), default=None, help="Keep the first N anchors.")
@click.option(
    "--classes",
    default=None,
    help="Keep the anchors of these class ids (comma list, e.g. 3,7): class-conditional datasets.",
)
@click.option(
    "--per-class", type=click.IntRange(min=1), default=None, help="With --classes: at most K each."
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=None,
    help="Anchors per shard [default: the dataset's].",
)
def subset(
    folder: str,
    out: str,
    n: int | None,
    classes: str | None,
    per_class: int | None,
    shard_size: int | None,
) -> None:
    """Write the first N anchors of FOLDER, or those of some classes, as a new dataset in --out.

    Samples are copied byte for byte and keep their keys (the parent's indices); the new manifest
    records the parent dataset in `parent`."""
    from genrep.reshape import Selection, parse_classes

    if per_class is not None and classes is None:
        raise UsageError("--per-class goes with --classes")
    if n is None and classes is None:
        raise UsageError("pass --n N and/or --classes IDS")
    selection = Selection("subset", n, parse_classes(classes), per_class)
    _reshape(folder, out, selection, shard_size)


@main.command()
@config_option
@click.argument("folder", type=DatasetLocation())
@click.option("--shard-size", type=click.IntRange(min=1), required=True, help="Anchors per shard.")
@click.option("--out", required=True, help="Folder of the new dataset (new, empty, or resuming).")
def reshard(folder: str, shard_size: int, out: str) -> None:
    """Write all of FOLDER again with --shard-size anchors per shard, into --out (samples copied
    byte for byte; the new manifest records the parent in `parent`)."""
    from genrep.reshape import Selection

    _reshape(folder, out, Selection("reshard"), shard_size)
