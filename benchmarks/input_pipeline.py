"""Training-input throughput of genrep-train: our shards vs one PNG per file vs bare decoding.

In one run, on the same images (anchor + one neighbor view per sample):

1. shards: genrep-train's input pipeline (TrainingStream: tar streaming, safe decode, genrep Tx on
   both views) through a DataLoader with genrep-train's default number of workers;
2. png-folder: the layout of the paper's released code (one PNG per view in class folders, a
   map-style Dataset that opens anchor and neighbor files), same Tx, same DataLoader settings;
3. bare-decode: decoding the shard image bytes to RGB in one process, no Tx, no DataLoader;
4. shards-device-tx: `genrep-train --tx-on device`: the workers only decode, and the same Tx runs
   batched on --device (on this process's CPU threads when it is the CPU).

The pipelines are timed in turn over several rounds (a shared machine's load drifts), and it
prints the median images/s of each and the median ratios shards/png-folder, shards/bare-decode and
shards-device-tx/shards.

    python benchmarks/input_pipeline.py                 # generates 1000 anchors at 128 px first
    python benchmarks/input_pipeline.py --data shards/demo --workers 8 --device cuda
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import click
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from genrep.options import default_workers, resolve_device
from genrep.shards import decode_image, decode_sample, iter_raw_samples
from genrep.train.data import TrainingStream, ViewSpec, open_data
from genrep.train.tx import BatchedTx, Transform, build_recipe


class PngPairs(Dataset):
    """Anchor and neighbor PNG files of one sample per item, as the released GenRep loader reads."""

    def __init__(self, pairs: list[tuple[Path, Path]], transform: Transform) -> None:
        self.pairs, self.transform = pairs, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> torch.Tensor:
        views = []
        for path in self.pairs[index]:
            with Image.open(path) as image:
                views.append(self.transform(image.convert("RGB")))
        return torch.stack(views)


def export_png_folder(shard_paths: list[Path], root: Path) -> list[tuple[Path, Path]]:
    """Write every sample's anchor and first neighbor as PNG files in ImageFolder layout."""
    pairs = []
    for shard in shard_paths:
        for raw in iter_raw_samples(shard):
            sample = decode_sample(raw)
            folder = root / str(sample.label if sample.label is not None else 0)
            folder.mkdir(parents=True, exist_ok=True)
            anchor, neighbor = folder / f"{sample.key}_anchor.png", folder / f"{sample.key}_1.png"
            sample.anchor.save(anchor)
            sample.neighbors[0].save(neighbor)
            pairs.append((anchor, neighbor))
    return pairs


def images_per_second(batches: Iterator[torch.Tensor], skip: int, count: int) -> float:
    """Views per second of `count` batches [B, views, 3, H, W].

    The first `skip` batches are taken untimed: the workers prefetched them while the other
    pipeline was being timed.
    """
    for _ in range(skip):
        next(batches)
    start, images = time.perf_counter(), 0
    for _ in range(count):
        batch = next(batches)
        images += batch.shape[0] * batch.shape[1]
    return images / (time.perf_counter() - start)


def device_tx_batches(
    loader: DataLoader, tx: BatchedTx, device: torch.device
) -> Iterator[torch.Tensor]:
    """Batches of decoded frames from `loader`, augmented by `tx` on `device` (a view per frame)."""
    generator = torch.Generator(device).manual_seed(0)
    for batch in loader:
        frames = batch["images"].to(device, non_blocking=True)
        views = tx(frames.flatten(0, 1), generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield views.unflatten(0, frames.shape[:2])


def decode_per_second(blobs: list[bytes]) -> float:
    start = time.perf_counter()
    for blob in blobs:
        decode_image(blob)
    return len(blobs) / (time.perf_counter() - start)


@click.command()
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="A dataset with >= 1 neighbor view [default: generate --n anchors].",
)
@click.option("--n", type=int, default=1000, help="Anchors to generate when --data is not given.")
@click.option("--size", type=int, default=128, help="Image side of the generated dataset.")
@click.option("--batch-size", type=int, default=64)
@click.option("--batches", type=int, default=10, help="Batches timed per pipeline and round.")
@click.option(
    "--rounds",
    type=int,
    default=5,
    help="Rounds; each times every pipeline in turn (shared machines vary over time).",
)
@click.option(
    "--workers",
    type=int,
    default=default_workers(),
    help="DataLoader workers (genrep-train's default).",
)
@click.option("--device", default="auto", help="Where shards-device-tx runs its Tx.")
def main(
    data: str | None,
    n: int,
    size: int,
    batch_size: int,
    batches: int,
    rounds: int,
    workers: int,
    device: str,
) -> None:
    target = resolve_device(device)
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            from click.testing import CliRunner

            from genrep.generate.cli import main as generate

            data = str(Path(tmp) / "shards")
            click.echo(f"generating {n} anchors + 1 neighbor at {size} px ...", err=True)
            result = CliRunner().invoke(
                generate, ["--n", str(n), "--size", str(size), "--no-progress", "--out", data]
            )
            if result.exit_code:
                raise click.ClickException(result.output)
        info = open_data([data], None, None)
        if info.neighbors < 1:
            raise click.UsageError(f"{data} has no neighbor views; pass a dataset made with a view")
        recipe = build_recipe("genrep")
        input_size = recipe.default_input_size(info.train_side)
        transform = recipe.augment(input_size)
        samples = info.epoch_size
        if samples < batch_size:
            raise click.UsageError(f"{data} has {samples} samples, fewer than --batch-size")
        prefetched = 2 * max(workers, 1)  # DataLoader's default prefetch_factor is 2
        click.echo(
            f"{samples} samples x 2 views at {info.image_size} px -> Tx {input_size} px, "
            f"batch {batch_size}, {workers} workers",
            err=True,
        )

        spec = ViewSpec(
            views=2,
            transform=transform,
            neighbors=info.neighbors,
            needs_latents=False,
            needs_labels=False,
            label_index=None,
            strict=False,
            seed=0,
        )
        stream = TrainingStream(
            info, spec, rank=0, world=1, batch_size=batch_size, start_step=0, shuffle_buffer=1000
        )
        loader = DataLoader(stream, batch_size=batch_size, num_workers=workers)
        frames_spec = replace(
            spec, transform=recipe.view_transform(True, input_size, 0, on_device=True)
        )
        frames = TrainingStream(
            info, frames_spec, 0, 1, batch_size=batch_size, start_step=0, shuffle_buffer=1000
        )
        frames_loader = DataLoader(
            frames, batch_size=batch_size, num_workers=workers, pin_memory=target.type == "cuda"
        )
        pairs = export_png_folder(info.sources[0].units, Path(tmp) / "png")
        png_loader = DataLoader(
            PngPairs(pairs, transform),
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            drop_last=True,
            persistent_workers=workers > 0,
        )
        pipelines = {
            "shards": (batch["images"] for batch in loader),
            "png": (batch for _ in itertools.count() for batch in png_loader),
            "device": device_tx_batches(frames_loader, recipe.batched(input_size), target),
        }
        blobs = [
            value
            for shard in info.sources[0].units
            for raw in iter_raw_samples(shard)
            for key, value in raw.items()
            if key.startswith(("anchor.", "neighbor_0."))
        ]
        rates: dict[str, list[float]] = {"shards": [], "png": [], "device": [], "decode": []}
        for batches_of in pipelines.values():  # start the workers, fill the buffers
            images_per_second(batches_of, prefetched, 1)
        for _ in range(rounds):
            for name, batches_of in pipelines.items():
                rates[name].append(images_per_second(batches_of, prefetched, batches))
            rates["decode"].append(decode_per_second(blobs))

    median = {name: statistics.median(values) for name, values in rates.items()}
    to_png = statistics.median(s / p for s, p in zip(rates["shards"], rates["png"], strict=True))
    to_decode = statistics.median(
        s / d for s, d in zip(rates["shards"], rates["decode"], strict=True)
    )
    to_shards = statistics.median(
        d / s for d, s in zip(rates["device"], rates["shards"], strict=True)
    )
    click.echo(f"medians of {rounds} rounds of {batches} batches:")
    click.echo(f"shards (genrep-train input):       {median['shards']:8.0f} images/s")
    click.echo(f"png-folder (released code layout): {median['png']:8.0f} images/s")
    click.echo(f"shards, Tx batched on {target.type}:  {median['device']:8.0f} images/s")
    click.echo(f"bare decode (1 process, no Tx):    {median['decode']:8.0f} images/s")
    click.echo(f"ratio shards / png-folder:  {to_png:.2f}")
    click.echo(f"ratio shards / bare decode: {to_decode:.2f}")
    click.echo(f"ratio Tx on {target.type} / Tx in workers: {to_shards:.2f}")


if __name__ == "__main__":
    main()
