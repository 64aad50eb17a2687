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
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from genrep.card import DatasetLicense
from genrep.config import to_plain
from genrep.errors import OutputError, UsageError
from genrep.generate.edits import EDITS
from genrep.generate.image_encoders import ImageEncoder, build_encoder
from genrep.generate.models.base import Generator, build_generator, file_label
from genrep.generate.steer import cached_walks, check_steerable
from genrep.generate.views.base import VIEWS, View, build_view
from genrep.generate.walks import cached_walks_path
from genrep.images import MAX_IMAGE_PIXELS
from genrep.io import StagedFile, naming
from genrep.latents import sample_rng, truncated_normal
from genrep.manifest import DatasetWriter, check_writable, new_manifest, read_manifest
from genrep.options import (
    SlowJobWarning,
    autocast_dtype,
    check_number,
    resolve_device,
    resolve_precision,
)
from genrep.shards import (
    FRAMES,
    IMAGE_FORMATS,
    MAX_SHARD_SIZE,
    MAX_SHARDS,
    encode_sample,
    shard_name,
    write_shard,
)

#: side of the square that --frame center-crop/resize store unless --size says otherwise (the
#: paper's 128 px training images)
DEFAULT_CROP = 128
#: most images (anchors and neighbors) of one shard: a shard is held in memory while it is written
MAX_SHARD_IMAGES = MAX_SHARD_SIZE


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
    frame: str
    #: (height, width) of the stored images
    stored: tuple[int, int]
    image_format: str
    quality: int
    encoder: ImageEncoder
    shard_size: int
    precision: str
    out: Path
    config: dict[str, Any] = field(default_factory=dict)
    #: what the dataset card states as its license (not part of the identity: no byte depends on it)
    license: DatasetLicense = field(default_factory=DatasetLicense)

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
        """The manifest's `image`: what is stored, and the native frame it comes from."""
        native_height, native_width = self.generator.frame
        return {
            "width": self.stored[1],
            "height": self.stored[0],
            "frame": self.frame,
            "native_width": native_width,
            "native_height": native_height,
            "format": self.image_format,
            "quality": self.quality,
            "encoder": self.encoder.identity(),
        }


def make_plan(
    options: dict[str, Any],
    log: Callable[[str], None] = lambda message: None,
    progress: bool = True,
    shard_range: range | None = None,
) -> Plan:
    """Resolve a config (the CLI's flags) into a `Plan`; raises UsageError on bad input, and an
    OutputError on an --out that is not genrep's to write (`shard_range`: --shards, checked too).

    View `steer` without `--walks` learns the generator's walks once and caches them (logged),
    after every other check; on a CPU only with `learn_walks` (hours)."""
    device = resolve_device(options.get("device"))
    precision = resolve_precision(options.get("precision") or "auto", device)
    check_number("--sigma", options.get("sigma"), above=0)
    check_number("--truncation", options.get("truncation"), above=0)
    seed = options.get("seed", 0)
    check_number("--seed", seed, at_least=0, below=2**128)
    generator = build_generator(
        options["model"],
        weights=options.get("weights"),
        classes=options.get("classes"),
        device=device,
        **dict(options.get("model_option") or {}),
    )
    classes = generator.resolve_classes(options.get("classes"))
    if classes is None and options.get("per_class"):
        raise UsageError("--per-class needs a class-conditional model (add --classes K)")

    n, per_class = options.get("n"), options.get("per_class")
    if per_class is not None:
        if per_class <= 0:
            raise UsageError(f"--per-class must be > 0, got {per_class}")
        if n is not None and n != per_class * len(classes):
            raise UsageError(
                f"--n {n} disagrees with --per-class {per_class} x {len(classes)} classes; pass one"
            )
        n = per_class * len(classes)
    if n is None:
        raise UsageError("pass --n (number of anchors) or, for a conditional model, --per-class")
    if n <= 0:
        raise UsageError(f"--n must be > 0, got {n}")

    truncation = options.get("truncation")
    if truncation is None:
        truncation = generator.default_truncation
    view_name = VIEWS.canonical(options.get("view") or "gaussian")
    step_scale = options.get("step_scale") or None
    for name, value in (step_scale or {}).items():
        check_number(f"--step-scale {EDITS.canonical(name)}", value, above=0)
    has_neighbors = VIEWS.get(view_name).has_neighbors
    neighbors = options.get("neighbors", 1) if has_neighbors else 0
    if has_neighbors and neighbors < 1:
        raise UsageError(f"--neighbors must be >= 1 for view {view_name!r}, got {neighbors}")

    fmt = options.get("format", "jpg")
    if fmt not in IMAGE_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(IMAGE_FORMATS)}")
    frame = options.get("frame") or "full"
    stored = stored_size(frame, options.get("size"), generator.frame)
    quality = options.get("quality", 95)
    if not 1 <= quality <= 100:
        raise UsageError(f"--quality must be in 1..100, got {quality}")
    encoder = build_encoder(options.get("encoder") or "pil", fmt, quality, generator.device)
    shard_size = options.get("shard_size", 1000)
    check_number("--shard-size", shard_size, at_least=1)
    if shard_size * (1 + neighbors) > MAX_SHARD_IMAGES:
        raise UsageError(
            f"--shard-size {shard_size} x {1 + neighbors} views per anchor is "
            f"{shard_size * (1 + neighbors)} images per shard, over the {MAX_SHARD_IMAGES} a "
            "shard may hold (it is held in memory while written): lower --shard-size"
        )
    num_shards = math.ceil(n / shard_size)
    if num_shards > MAX_SHARDS:
        raise UsageError(
            f"--n {n} in shards of {shard_size} makes {num_shards} shards, over "
            f"the {MAX_SHARDS} a dataset may have (shards/README.md): raise --shard-size or "
            "lower --n"
        )
    selected_shards(num_shards, shard_range)
    out = Path(options.get("out") or Path("shards") / f"{file_label(generator.name)}-{view_name}")
    check_writable(out)  # again under the lock; now, before walks may be learned for hours

    # Last, as view steer may first learn the generator's walks (hours on a CPU).
    walks = options.get("walks")
    if view_name == "steer":
        check_steerable(generator)
        if walks is None:
            _check_view_of(out, view_name)
            _check_may_learn_walks(generator, device, options.get("learn_walks", False))
            walks = str(cached_walks(generator, log=log, progress=progress))
    view = build_view(
        view_name,
        generator,
        truncation=truncation,
        sigma=options.get("sigma"),
        walks=walks,
        step_scale=step_scale,
    )
    return Plan(
        generator=generator,
        view=view,
        n=n,
        neighbors=neighbors,
        classes=classes,
        truncation=truncation,
        seed=seed,
        frame=frame,
        stored=stored,
        image_format=fmt,
        quality=quality,
        encoder=encoder,
        shard_size=shard_size,
        precision=precision,
        out=out,
        config=dict(options),
        license=DatasetLicense.from_options(
            generator.weights_license,
            options.get("license"),
            options.get("license_name"),
            options.get("license_link"),
        ),
    )


def _check_view_of(out: Path, view_name: str) -> None:
    """Refuse an --out holding a dataset of another view before the walks are learned (the full
    identity check needs them, and comes again under the lock)."""
    existing = read_manifest(out) if out.is_dir() else None
    if existing is not None and existing["view"]["name"] != view_name:
        raise OutputError(
            f"{out} holds a dataset made with a different config (differs in: view "
            f"{existing['view']['name']}, not {view_name}); pass another --out"
        )


def _check_may_learn_walks(generator: Generator, device: torch.device, learn_walks: bool) -> None:
    """Refuse to start learning walks on a CPU unasked: it takes hours, and the user most likely
    has a walk file or a GPU."""
    if device.type == "cpu" and not learn_walks and not cached_walks_path(generator).exists():
        raise UsageError(
            f"view steer without --walks learns the walks of {generator.name} first, which takes "
            "hours on a CPU: pass --walks FILE (learned with genrep-steer), run on a GPU with "
            "--device cuda, or add --learn-walks to learn them on the CPU anyway"
        )


class SampleLatents(NamedTuple):
    """What the generator is given for one sample, and what its json records about it."""

    z: np.ndarray
    label: int | None
    neighbor_z: np.ndarray
    params: list[dict]
    #: the y of every view of the sample (`Generator.condition`), and its record
    y: int | None
    condition: dict[str, Any]


def sample_latents(plan: Plan, index: int) -> SampleLatents:
    """Anchor latent, class, neighbor latents, view parameters and condition of sample `index`.

    Sample i has class `classes[i % C]` and is that class's (i // C)-th sample."""
    rng = sample_rng(plan.seed, index)
    label, y, condition = None, None, {}
    if plan.classes:
        label = plan.classes[index % len(plan.classes)]
        y, condition = plan.generator.condition(label, index // len(plan.classes))
    z = truncated_normal(rng, plan.generator.z_dim, plan.truncation)
    neighbor_z, params = plan.view.neighbors(z, label, rng, plan.neighbors)
    neighbor_z = np.asarray(neighbor_z, np.float32).reshape(plan.neighbors, z.shape[0])
    return SampleLatents(z, label, neighbor_z, params, y, condition)


def stored_size(frame: str, size: int | None, native: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the stored images for `--frame`/`--size` and a native (h, w) frame.

    full: the whole frame, its short side scaled down to `size` if given (never up); center-crop:
    the central `size` square (App. A's Tz-only input); resize: the short side scaled to `size`,
    then the central square.
    """
    if frame not in FRAMES:
        raise UsageError(f"--frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    check_number("--size", size, at_least=1)
    height, width = native
    if frame == "full":
        if size is None:
            stored = native
        elif size > min(height, width):
            raise UsageError(
                f"--size {size} would enlarge the generator's {width}x{height} frame; store it "
                "at its native size (no --size) or pass a smaller --size"
            )
        else:
            scale = size / min(height, width)
            stored = (max(size, round(height * scale)), max(size, round(width * scale)))
    else:
        side = DEFAULT_CROP if size is None else size
        if frame == "center-crop" and side > min(height, width):
            raise UsageError(
                f"the generator's {width}x{height} output is smaller than --size {side}; "
                "use --frame resize or a smaller --size"
            )
        stored = (side, side)
    if stored[0] * stored[1] > MAX_IMAGE_PIXELS:
        raise UsageError(
            f"images of {stored[1]}x{stored[0]} px are over the {MAX_IMAGE_PIXELS} pixels a "
            "reader decodes (shards/README.md): pass a smaller --size"
        )
    return stored


def to_uint8(images: torch.Tensor, frame: str, stored: tuple[int, int]) -> torch.Tensor:
    """[-1, 1] NCHW images -> N x 3 x H x W uint8 of the stored size (see `stored_size`), on the
    images' device."""
    images = images.float()
    height, width = images.shape[-2:]
    if frame == "full":
        target = stored
    elif frame == "resize":  # short side to the square's side, then the central square
        scale = stored[0] / min(height, width)
        target = (max(stored[0], round(height * scale)), max(stored[0], round(width * scale)))
    else:
        target = (height, width)
    if target != (height, width):
        images = F.interpolate(
            images, size=target, mode="bilinear", antialias=True, align_corners=False
        )
        height, width = target
    top, left = (height - stored[0]) // 2, (width - stored[1]) // 2
    images = images[..., top : top + stored[0], left : left + stored[1]]
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class _ShardJob:
    """Samples on their way (a shard's, or a batch of online training's): encoded image futures,
    latents, and the samples' metadata."""

    def __init__(self, indices: Sequence[int], k: int | None = None) -> None:
        self.k, self.indices = k, indices
        self.parts: list[futures.Future | list[bytes]] = []
        self.latents: list[SampleLatents] = []

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
        on_shard: Callable[[int, StagedFile], None] | None = None,
    ) -> None:
        """`on_shard(k, staged)` makes shard k, written to `staged`, visible (default: renames it)."""
        check_number("--batch-size", batch_size, at_least=1)
        check_number("--workers", workers, at_least=0)
        self.plan, self.batch_size, self.workers = plan, batch_size, workers
        self.progress, self.on_shard = progress, on_shard
        self.device = plan.generator.device
        self.autocast_dtype = autocast_dtype(plan.precision)
        if self.device.type == "cuda":  # cuDNN's fast layout for convolutions (and with autocast)
            plan.generator.to(memory_format=torch.channels_last)

    def run(self, shards: Sequence[int]) -> int:
        """Generate and write `shards`; returns the number of images generated."""
        plan = self.plan
        total = sum(len(plan.shard_indices(k)) for k in shards) * (1 + plan.neighbors)
        pool = None
        if self.workers > 0 and plan.encoder.uses_pool:
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
        # The first batch's rate x the images left (generation dominates; encoding overlaps it).
        slow = SlowJobWarning(
            self.device, total, f"generating {total} images", measure=min(self.batch_size, total)
        )

        done = 0

        def advance(images: int) -> None:
            nonlocal done
            done += images
            bar.update(images)
            slow.update(done)

        try:
            for k in shards:
                pending.append(self._generate_shard(k, pool, advance))
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

    def samples(self, indices: Sequence[int]) -> list[dict[str, bytes | str]]:
        """The members of samples `indices` exactly as a shard holds them, without a shard:
        what online training (train/online.py) reads."""
        return self._members(self._generate(_ShardJob(indices), None, lambda images: None))

    def _generate_shard(
        self, k: int, pool: futures.Executor | None, advance: Callable[[int], None]
    ) -> _ShardJob:
        return self._generate(_ShardJob(self.plan.shard_indices(k), k), pool, advance)

    def _generate(
        self, job: _ShardJob, pool: futures.Executor | None, advance: Callable[[int], None]
    ) -> _ShardJob:
        plan = self.plan
        job.latents = [sample_latents(plan, i) for i in job.indices]
        # Images of the shard in storage order: each anchor followed by its neighbors.
        z_all = np.stack([z for sample in job.latents for z in (sample.z, *sample.neighbor_z)])
        labels = None
        if plan.classes is not None:
            labels = np.repeat([sample.y for sample in job.latents], 1 + plan.neighbors)
        for start in range(0, len(z_all), self.batch_size):
            stop = start + self.batch_size
            images = self._forward(
                z_all[start:stop], None if labels is None else labels[start:stop]
            )
            pixels = to_uint8(images, plan.frame, plan.stored)
            job.parts.append(plan.encoder.encode(pixels, pool))
            advance(len(pixels))
        return job

    def _write(self, job: _ShardJob) -> None:
        assert job.k is not None  # a shard's job (online samples are never written)
        staged = StagedFile(self.plan.out / shard_name(job.k))
        try:
            with naming(staged.path):
                with staged as f:
                    write_shard(f, self._members(job))
                if self.on_shard is None:
                    staged.commit()
                else:
                    self.on_shard(job.k, staged)
        finally:
            staged.discard()

    def _members(self, job: _ShardJob) -> list[dict[str, bytes | str]]:
        """The tar members of the job's samples (its encoded images waited for)."""
        plan = self.plan
        images, per = job.images(), 1 + plan.neighbors
        samples = []
        for j, (index, sample) in enumerate(zip(job.indices, job.latents, strict=True)):
            meta = {
                "index": index,
                "class": sample.label,
                "view": plan.view.name,
                "neighbors": [{"params": p} for p in sample.params],
            }
            if sample.condition:
                meta["condition"] = sample.condition
            samples.append(
                encode_sample(
                    index,
                    images[j * per],
                    images[j * per + 1 : (j + 1) * per],
                    plan.image_format,
                    sample.z,
                    sample.neighbor_z if plan.neighbors else None,
                    sample.label,
                    meta,
                )
            )
        return samples


# ---------------------------------------------------------------- output folder and manifest


def base_manifest(plan: Plan) -> dict[str, Any]:
    """The manifest of the plan's dataset before any shard exists."""
    return new_manifest(
        generator=plan.generator.describe(),
        view={"name": plan.view.name, "params": plan.view.params()},
        seed=plan.seed,
        n=plan.n,
        neighbors=plan.neighbors,
        classes=plan.classes,
        truncation=plan.truncation,
        image=plan.image_info(),
        shard_size=plan.shard_size,
        identity=plan.identity(),
        config=plan.config,
        license=plan.license.to_dict(),
    )


def selected_shards(num_shards: int, shard_range: range | None) -> range:
    """The shards `--shards` selects of `num_shards` (its stop past the last shard: cut; its start
    past it: refused, as it would do nothing)."""
    selected = shard_range or range(num_shards)
    if selected.start >= num_shards:
        raise UsageError(
            f"--shards starts at shard {selected.start}, past the last one: the dataset has "
            f"{num_shards} shards (0 to {num_shards - 1})"
        )
    return range(selected.start, min(selected.stop, num_shards), selected.step)


def my_shards(plan: Plan, shard_range: range | None = None) -> list[int]:
    """The shard numbers this process writes: the `--shards` selection, dealt out in turn to the
    torchrun ranks."""
    selected = selected_shards(plan.num_shards, shard_range)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return list(selected[rank::world])


def generate(
    plan: Plan,
    batch_size: int = 64,
    workers: int = 2,
    shard_range: range | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Write the dataset of `plan` (resuming where an earlier run stopped); returns the manifest."""
    shards = my_shards(plan, shard_range)
    dataset = DatasetWriter(plan.out, base_manifest(plan))
    writer = ShardGenerator(plan, batch_size, workers, progress, on_shard=dataset.commit)
    present = dataset.open()
    todo = [k for k in shards if shard_name(k) not in present]
    if not todo:  # a rerun of a finished command: one line, no empty progress bar
        manifest = dataset.close()
        done = sum(entry["samples"] for entry in manifest["shards"])
        state = (
            f"dataset complete: {done} samples in {len(manifest['shards'])} shards"
            if manifest["complete"]
            else f"the {len(shards)} shards asked for are present ({done}/{plan.n} samples so far)"
        )
        log(f"{plan.out}: {state}; nothing to do")
        return manifest
    if present:
        log(f"resuming {plan.out}: {len(present)} of {plan.num_shards} shards present")
    started = time.perf_counter()
    images = writer.run(todo)
    seconds = time.perf_counter() - started
    manifest = dataset.close()
    done = sum(entry["samples"] for entry in manifest["shards"])
    rate = f", {images / seconds:.0f} img/s" if images and seconds > 0 else ""
    state = "complete" if manifest["complete"] else f"{done}/{plan.n} samples so far"
    log(
        f"wrote {len(todo)} shards ({images} images) to {plan.out} in {seconds:.1f}s{rate}; "
        f"dataset {state}"
    )
    return manifest
