"""Stage 1 as a pipeline: latents -> generator -> crop -> encoder pool -> shard writer -> manifest.

Every sample is a pure function of (config, sample index): its latents come from its own random
stream and its pixels do not depend on the batch it was generated in. Shard k is therefore a pure
function of (config, k), which makes the output byte-reproducible for any --workers, --batch-size or
interruption, and lets processes or machines split the shards between them.
"""

from __future__ import annotations

import concurrent.futures as futures
import math
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from genrep.config import save_config, to_plain
from genrep.generate.models.base import Generator, build_generator
from genrep.generate.views.base import View, build_view
from genrep.io import atomic_open, atomic_write_bytes, remove_stale_tmp, sha256_file
from genrep.latents import sample_rng, truncated_normal
from genrep.manifest import CARD, CONFIG, locked, read_manifest, write_manifest
from genrep.shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_FORMATS,
    encode_images,
    encode_sample,
    shard_name,
    write_shard,
)

RESIZE_MODES = ("center-crop", "resize")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class GenerateError(ValueError):
    """Bad input for stage 1; the message says what to do."""


@dataclass
class Plan:
    """What a `genrep-generate` command produces, resolved from its flags and the generator."""

    generator: Generator
    view: View
    n: int
    neighbors: int
    classes: list[int] | None
    truncation: float | None
    seed: int
    size: int
    resize: str
    image_format: str
    quality: int
    shard_size: int
    precision: str
    out: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.n / self.shard_size)

    def shard_indices(self, k: int) -> range:
        return range(k * self.shard_size, min(self.n, (k + 1) * self.shard_size))

    def identity(self) -> dict[str, Any]:
        """Everything that decides the bytes of the dataset: two runs agree iff these agree."""
        return to_plain(
            {
                "generator": self.generator.describe(),
                "model_options": self.config.get("model_option", {}),
                "view": {"name": self.view.name, "params": self.view.params()},
                "n": self.n,
                "neighbors": self.neighbors,
                "classes": self.classes,
                "truncation": self.truncation,
                "seed": self.seed,
                "image": self.image_info(),
                "shard_size": self.shard_size,
                "precision": self.precision,
            }
        )

    def image_info(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "resize": self.resize,
            "format": self.image_format,
            "quality": self.quality,
        }


def resolve_classes(generator: Generator, spec: Any) -> list[int] | None:
    """The class ids to sample: all, a named subset, the first K (an int), or a comma list."""
    if not generator.conditional:
        if spec is not None:
            raise GenerateError(
                f"--classes does not apply: model {generator.name!r} is unconditional"
            )
        return None
    if spec is None or spec == "all":
        return list(range(generator.num_classes))
    text = str(spec).strip()
    if text in generator.class_subsets:
        return list(generator.class_subsets[text])
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        names = ", ".join(["all", *generator.class_subsets, "K", "a comma list of ids"])
        raise GenerateError(f"--classes {spec!r} is not one of: {names}") from None
    if len(ids) == 1 and "," not in text:  # an integer K: the first K classes
        ids = list(range(ids[0]))
    bad = [i for i in ids if not 0 <= i < generator.num_classes]
    if not ids or bad:
        raise GenerateError(
            f"--classes {spec!r}: class ids must lie in 0..{generator.num_classes - 1}"
        )
    return ids


def make_plan(options: dict[str, Any]) -> Plan:
    """Resolve a config (the CLI's flags) into a `Plan`; raises GenerateError on bad input."""
    device = torch.device(options.get("device") or "cpu")
    model_options = dict(options.get("model_option") or {})
    if options.get("precision", "fp32") not in PRECISIONS:
        raise GenerateError(f"--precision must be one of {', '.join(PRECISIONS)}")
    try:
        generator = build_generator(
            options["model"],
            weights=options.get("weights"),
            classes=options.get("classes"),
            device=device,
            **model_options,
        )
    except TypeError as err:
        raise GenerateError(f"bad --model-option for {options['model']!r}: {err}") from None
    classes = resolve_classes(generator, options.get("classes"))
    if classes is None and options.get("per_class"):
        raise GenerateError("--per-class needs a class-conditional model (add --classes K)")

    n, per_class = options.get("n"), options.get("per_class")
    if per_class is not None:
        if per_class <= 0:
            raise GenerateError(f"--per-class must be > 0, got {per_class}")
        if n is not None and n != per_class * len(classes):
            raise GenerateError(
                f"--n {n} disagrees with --per-class {per_class} x {len(classes)} classes; pass one"
            )
        n = per_class * len(classes)
    if n is None:
        raise GenerateError("pass --n (number of anchors) or, for a conditional model, --per-class")
    if n <= 0:
        raise GenerateError(f"--n must be > 0, got {n}")

    truncation = options.get("truncation")
    if truncation is None:
        truncation = generator.default_truncation
    elif truncation <= 0:
        raise GenerateError(f"--truncation must be > 0, got {truncation}")
    view = build_view(
        options.get("view") or "gaussian",
        generator,
        truncation=truncation,
        sigma=options.get("sigma"),
        walks=options.get("walks"),
    )
    neighbors = options.get("neighbors", 1) if view.has_neighbors else 0
    if view.has_neighbors and neighbors < 1:
        raise GenerateError(f"--neighbors must be >= 1 for view {view.name!r}, got {neighbors}")

    size, fmt = options.get("size", 128), options.get("format", "jpg")
    if size <= 0:
        raise GenerateError(f"--size must be > 0, got {size}")
    if fmt not in IMAGE_FORMATS:
        raise GenerateError(f"--format must be one of {', '.join(IMAGE_FORMATS)}")
    resize = options.get("resize", "center-crop")
    if resize not in RESIZE_MODES:
        raise GenerateError(f"--resize must be one of {', '.join(RESIZE_MODES)}")
    quality = options.get("quality", 95)
    if not 1 <= quality <= 100:
        raise GenerateError(f"--quality must be in 1..100, got {quality}")
    shard_size = options.get("shard_size", 1000)
    if shard_size <= 0:
        raise GenerateError(f"--shard-size must be > 0, got {shard_size}")
    out = Path(options.get("out") or Path("shards") / f"{generator.name}-{view.name}")
    return Plan(
        generator=generator,
        view=view,
        n=n,
        neighbors=neighbors,
        classes=classes,
        truncation=truncation,
        seed=options.get("seed", 0),
        size=size,
        resize=resize,
        image_format=fmt,
        quality=quality,
        shard_size=shard_size,
        precision=options.get("precision", "fp32"),
        out=out,
        config=dict(options),
    )


def sample_latents(plan: Plan, index: int) -> tuple[np.ndarray, int | None, np.ndarray, list[dict]]:
    """Anchor latent, class, neighbor latents and view parameters of sample `index`."""
    rng = sample_rng(plan.seed, index)
    label = plan.classes[index % len(plan.classes)] if plan.classes else None
    z = truncated_normal(rng, plan.generator.z_dim, plan.truncation)
    neighbor_z, params = plan.view.neighbors(z, label, rng, plan.neighbors)
    return z, label, np.asarray(neighbor_z, np.float32).reshape(plan.neighbors, z.shape[0]), params


def to_uint8(images: torch.Tensor, size: int, resize: str) -> np.ndarray:
    """[-1, 1] NCHW images -> N x size x size x 3 uint8, cropped or resized as App. A describes."""
    images = images.float()
    height, width = images.shape[-2:]
    if resize == "resize":  # short side to `size`, then the central square
        scale = size / min(height, width)
        if scale != 1:
            images = F.interpolate(
                images,
                size=(max(size, round(height * scale)), max(size, round(width * scale))),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            height, width = images.shape[-2:]
    elif min(height, width) < size:
        raise GenerateError(
            f"the generator's {height}x{width} output is smaller than --size {size}; "
            "use --resize resize or a smaller --size"
        )
    top, left = (height - size) // 2, (width - size) // 2
    images = images[..., top : top + size, left : left + size]
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


class _ShardJob:
    """One shard on its way: encoded image futures, latents, and the samples' metadata."""

    def __init__(self, k: int, indices: range) -> None:
        self.k, self.indices = k, indices
        self.parts: list[futures.Future | list[bytes]] = []
        self.latents: list[tuple[np.ndarray, int | None, np.ndarray, list[dict]]] = []

    def images(self) -> list[bytes]:
        return [
            data
            for part in self.parts
            for data in (part.result() if isinstance(part, futures.Future) else part)
        ]


class ShardGenerator:
    """Runs a `Plan` for a set of shard numbers, overlapping generation with encoding and writing."""

    def __init__(
        self,
        plan: Plan,
        batch_size: int = 64,
        workers: int = 2,
        progress: bool = True,
        on_shard: Callable[[int], None] | None = None,
    ) -> None:
        if batch_size <= 0:
            raise GenerateError(f"--batch-size must be > 0, got {batch_size}")
        if workers < 0:
            raise GenerateError(f"--workers must be >= 0, got {workers}")
        self.plan, self.batch_size, self.workers = plan, batch_size, workers
        self.progress, self.on_shard = progress, on_shard
        self.device = plan.generator.device
        self.autocast_dtype = PRECISIONS[plan.precision]

    def run(self, shards: Sequence[int]) -> int:
        """Generate and write `shards`; returns the number of images generated."""
        plan = self.plan
        total = sum(len(plan.shard_indices(k)) for k in shards) * (1 + plan.neighbors)
        pool = None
        if self.workers > 0:
            context = multiprocessing.get_context(
                "spawn" if sys.platform == "darwin" else "forkserver"
            )
            pool = futures.ProcessPoolExecutor(self.workers, mp_context=context)
        pending: deque[_ShardJob] = deque()
        bar = tqdm(
            total=total,
            unit="img",
            disable=not self.progress,
            dynamic_ncols=True,
            desc=f"generate {plan.out.name}",
        )
        try:
            for k in shards:
                pending.append(self._generate_shard(k, pool, bar))
                # Keep at most one finished-but-unwritten shard: memory stays flat as n grows,
                # while its encoding overlaps the next shard's forward passes.
                while len(pending) > 1:
                    self._write(pending.popleft())
            while pending:
                self._write(pending.popleft())
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        return total

    @torch.inference_mode()
    def _forward(self, z: np.ndarray, labels: np.ndarray | None) -> torch.Tensor:
        generator = self.plan.generator
        z_t = torch.from_numpy(z).to(self.device)
        y_t = None if labels is None else torch.from_numpy(labels).to(self.device)
        if self.autocast_dtype is None:
            return generator(z_t, y_t)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return generator(z_t, y_t)

    def _generate_shard(self, k: int, pool: futures.Executor | None, bar: tqdm) -> _ShardJob:
        plan = self.plan
        job = _ShardJob(k, plan.shard_indices(k))
        job.latents = [sample_latents(plan, i) for i in job.indices]
        # Images of the shard in storage order: each anchor followed by its neighbors.
        z_all = np.stack([z for sample in job.latents for z in (sample[0], *sample[2])])
        labels = None
        if plan.classes is not None:
            labels = np.repeat([sample[1] for sample in job.latents], 1 + plan.neighbors)
        for start in range(0, len(z_all), self.batch_size):
            stop = start + self.batch_size
            images = self._forward(
                z_all[start:stop], None if labels is None else labels[start:stop]
            )
            pixels = to_uint8(images, plan.size, plan.resize)
            if pool is None:
                job.parts.append(encode_images(pixels, plan.image_format, plan.quality))
            else:
                job.parts.append(
                    pool.submit(encode_images, pixels, plan.image_format, plan.quality)
                )
            bar.update(len(pixels))
        return job

    def _write(self, job: _ShardJob) -> None:
        plan = self.plan
        images, per = job.images(), 1 + plan.neighbors
        samples = []
        for j, (index, (z, label, neighbor_z, params)) in enumerate(
            zip(job.indices, job.latents, strict=True)
        ):
            meta = {
                "index": index,
                "class": label,
                "view": plan.view.name,
                "neighbors": [{"params": p} for p in params],
            }
            samples.append(
                encode_sample(
                    index,
                    images[j * per],
                    images[j * per + 1 : (j + 1) * per],
                    plan.image_format,
                    z,
                    neighbor_z if plan.neighbors else None,
                    label,
                    meta,
                )
            )
        with atomic_open(plan.out / shard_name(job.k)) as f:
            write_shard(f, samples)
        if self.on_shard is not None:
            self.on_shard(job.k)


# ---------------------------------------------------------------- output folder and manifest


def check_output(plan: Plan) -> dict[str, Any] | None:
    """Refuse an output folder that holds another dataset; returns its manifest when resuming."""
    out = plan.out
    if out.exists() and not out.is_dir():
        raise GenerateError(f"--out {out} is a file; pass a folder")
    manifest = read_manifest(out) if out.exists() else None
    if manifest is None:
        if out.exists() and any(out.glob("shard-*.tar")):
            raise GenerateError(
                f"{out} holds shards but no manifest; pass another --out or empty that folder"
            )
        return None
    if manifest.get("identity") != plan.identity():
        differing = sorted(
            key
            for key, value in plan.identity().items()
            if manifest.get("identity", {}).get(key) != value
        )
        raise GenerateError(
            f"{out} holds a dataset made with a different config (differs in: "
            f"{', '.join(differing)}); pass another --out or rerun with that dataset's config"
        )
    return manifest


def base_manifest(plan: Plan) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "generator": plan.generator.describe(),
        "view": {"name": plan.view.name, "params": to_plain(plan.view.params())},
        "seed": plan.seed,
        "n": plan.n,
        "neighbors": plan.neighbors,
        "classes": plan.classes,
        "truncation": plan.truncation,
        "image": plan.image_info(),
        "shard_size": plan.shard_size,
        "num_shards": plan.num_shards,
        "identity": plan.identity(),
        "config": to_plain(plan.config),
        "shards": [],
        "complete": False,
    }


def update_manifest(plan: Plan) -> dict[str, Any]:
    """Record every complete shard on disk in the manifest (under the folder lock)."""
    with locked(plan.out):
        manifest = read_manifest(plan.out) or base_manifest(plan)
        known = {entry["name"]: entry for entry in manifest["shards"]}
        entries = []
        for k in range(plan.num_shards):
            path = plan.out / shard_name(k)
            if not path.exists():
                continue
            entry = known.get(path.name)
            if entry is None or entry["bytes"] != path.stat().st_size:
                entry = {
                    "name": path.name,
                    "samples": len(plan.shard_indices(k)),
                    "first_index": k * plan.shard_size,
                    "bytes": path.stat().st_size,
                    "sha256": sha256_file(path),
                }
            entries.append(entry)
        manifest["shards"] = entries
        manifest["complete"] = len(entries) == plan.num_shards
        write_manifest(plan.out, manifest)
        if manifest["complete"]:
            save_config(plan.out / CONFIG, plan.config)
            write_card(plan, manifest)
        return manifest


def write_card(plan: Plan, manifest: dict[str, Any]) -> None:
    """A dataset card with hub-style YAML front matter, so the folder can be pushed as it is."""
    images = plan.n * (1 + plan.neighbors)
    category = next(
        label
        for bound, label in [
            (1e3, "n<1K"),
            (1e4, "1K<n<10K"),
            (1e5, "10K<n<100K"),
            (1e6, "100K<n<1M"),
            (1e7, "1M<n<10M"),
            (math.inf, "n>10M"),
        ]
        if plan.n < bound
    )
    g = manifest["generator"]
    text = f"""---
license: other
task_categories:
- image-feature-extraction
tags:
- genrep
- synthetic
- multiview
size_categories:
- {category}
configs:
- config_name: default
  data_files:
  - split: train
    path: "shard-*.tar"
---

# {plan.out.name}

A multiview dataset made by [genrep](https://pypi.org/project/genrep/) (format
{FORMAT_NAME} v{FORMAT_VERSION}): {plan.n} anchor images from the generator `{g["name"]}` and
{plan.neighbors} neighbor view(s) per anchor made with the latent view `{plan.view.name}`
({images} images of {plan.size}x{plan.size} px, {plan.image_format}), in
{plan.num_shards} webdataset shards.

- generator weights sha256: `{g["weights_sha256"]}`
- view parameters: `{manifest["view"]["params"]}`
- seed: {plan.seed}; anchor truncation: {plan.truncation}
- classes: {"unconditional" if plan.classes is None else f"{len(plan.classes)} classes"}

`manifest.json` lists every shard with its sha256 (`genrep-shards verify` checks them) and the exact
configuration (`config.yaml`) that regenerates the dataset byte for byte. The license of the images
follows the license of the generator's weights.
"""
    atomic_write_bytes(plan.out / CARD, text.encode())


def my_shards(plan: Plan, shard_range: tuple[int, int] | None = None) -> list[int]:
    """The shard numbers this process writes: the `--shards` range, split across torchrun ranks."""
    start, stop = shard_range or (0, plan.num_shards)
    stop = min(stop, plan.num_shards)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return [k for k in range(start, stop) if k % world == rank]


def generate(
    plan: Plan,
    batch_size: int = 64,
    workers: int = 2,
    shard_range: tuple[int, int] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Write the dataset of `plan` (resuming where an earlier run stopped); returns the manifest."""
    resumed = check_output(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(plan.out)
    update_manifest(plan)
    todo = [k for k in my_shards(plan, shard_range) if not (plan.out / shard_name(k)).exists()]
    if resumed is not None:
        log(
            f"resuming {plan.out}: {plan.num_shards - len(todo)} of {plan.num_shards} shards present"
        )
    started = time.perf_counter()
    images = ShardGenerator(
        plan, batch_size, workers, progress, on_shard=lambda k: update_manifest(plan)
    ).run(todo)
    seconds = time.perf_counter() - started
    manifest = update_manifest(plan)
    done = sum(entry["samples"] for entry in manifest["shards"])
    rate = f", {images / seconds:.0f} img/s" if images and seconds > 0 else ""
    state = "complete" if manifest["complete"] else f"{done}/{plan.n} samples so far"
    log(
        f"wrote {len(todo)} shards ({images} images) to {plan.out} in {seconds:.1f}s{rate}; "
        f"dataset {state}"
    )
    return manifest
