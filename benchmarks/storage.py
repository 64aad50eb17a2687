"""Disk cost of storing whole frames (App. A): bytes per anchor/neighbor pair by format and frame.

Shard format 2 stores each generated frame whole, so that training can crop it as App. A says: a
BigGAN-deep-256 frame holds 4x the pixels of the 128 px crop that format 1 stored, and the LSUN Car
frame (384x512) 12x. For each frame size and image format this writes the same gaussian pairs
(anchor + 1 neighbor, sigma 0.2) of the embedded generator as genrep-generate does (its latents,
`to_uint8`, encoders and tar writer) and prints, per pair, the encoded images and the whole
sample in a shard (images, latents, json, tar headers), with the ratio of the latter to jpg q95 at
128 px measured in the same run.

Frames: 128x128 and 256x256 are the embedded generator at those resolutions; 384x512 is it at
512 px with rows 64:448 kept, the cut the stylegan2-car preset makes to drop the LSUN Car
letterbox (the embedded model has a natural-image 1/f spectrum; a car photo compresses
differently, so read the ratios, not the bytes).

    python benchmarks/storage.py [--pairs 32] [--quality 95]
"""

from __future__ import annotations

import io
import time

import click
import numpy as np
import torch

from genrep.generate.pipeline import make_plan, sample_latents, to_uint8
from genrep.shards import encode_images, encode_sample, write_shard

#: (label, embedded resolution, rows kept or None)
FRAMES = [("128x128", 128, None), ("256x256", 256, None), ("384x512", 512, (64, 448))]
FORMATS = ["jpg", "webp", "png"]


def frame_pixels(resolution: int, rows: tuple[int, int] | None, pairs: int) -> tuple[list, list]:
    """uint8 anchors and neighbors of `pairs` samples, and their latents, for one frame size."""
    plan = make_plan(
        {
            "model": "embedded",
            "model_option": {"resolution": resolution},
            "n": pairs,
            "device": "cpu",
        }
    )
    latents = [sample_latents(plan, i) for i in range(pairs)]
    z = np.stack([z for sample in latents for z in (sample.z, *sample.neighbor_z)])
    with torch.inference_mode():
        images = torch.cat(
            [plan.generator(torch.from_numpy(z[i : i + 8])) for i in range(0, len(z), 8)]
        )
    if rows is not None:
        images = images[:, :, rows[0] : rows[1]]
    # N x H x W x 3, as the Pillow encoder takes them
    pixels = to_uint8(images, "full", tuple(images.shape[-2:])).permute(0, 2, 3, 1).numpy()
    return [pixels[0::2], pixels[1::2]], latents


def sample_bytes(
    pixels: list[np.ndarray], latents: list, fmt: str, quality: int
) -> tuple[float, float]:
    """(encoded image bytes, shard bytes) per pair."""
    anchors, neighbors = (encode_images(p, fmt, quality) for p in pixels)
    samples = [
        encode_sample(i, a, [b], fmt, s.z, s.neighbor_z, None, {"index": i, "neighbors": s.params})
        for i, (a, b, s) in enumerate(zip(anchors, neighbors, latents, strict=True))
    ]
    shard = io.BytesIO()
    write_shard(shard, samples)
    images = sum(len(a) + len(b) for a, b in zip(anchors, neighbors, strict=True))
    return images / len(latents), len(shard.getvalue()) / len(latents)


@click.command()
@click.option("--pairs", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True)
def main(pairs: int, quality: int) -> None:
    """Print bytes per anchor/neighbor pair for jpg/webp/png at 128, 256 and 384x512 px."""
    rows = []
    for label, resolution, kept in FRAMES:
        started = time.perf_counter()
        pixels, latents = frame_pixels(resolution, kept, pairs)
        for fmt in FORMATS:
            images, shard = sample_bytes(pixels, latents, fmt, quality)
            name = "png" if fmt == "png" else f"{fmt} q{quality}"
            rows.append((label, name, images, shard))
        click.echo(f"{label}: {pairs} pairs in {time.perf_counter() - started:.1f} s", err=True)
    baseline = next(
        shard for label, name, _, shard in rows if (label, name) == ("128x128", f"jpg q{quality}")
    )
    click.echo(
        f"{'frame':<9} {'format':<8} {'image B/pair':>13} {'shard B/pair':>13} {'x jpg@128':>10}"
    )
    for label, name, images, shard in rows:
        click.echo(
            f"{label:<9} {name:<8} {images:>13,.0f} {shard:>13,.0f} {shard / baseline:>10.2f}"
        )


if __name__ == "__main__":
    main()
