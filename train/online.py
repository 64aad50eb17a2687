"""Online training (`genrep-train --generator MODEL`): samples straight from a generator, no shards.

Stage 1's own code makes the samples: `make_plan` resolves the same flags as genrep-generate, and
`ShardGenerator.samples` gives the members a shard would hold for any sample indices (sample i is a
pure function of the flags and i, whatever the batch it is generated in). The source is laid out as
the dataset's shards would be (units of --shard-size anchors named like its shard files), so the
epoch order, the ranks' disjoint ranges, the shuffle buffer, the Tx seeds and the resume position
all come from `train/data.py` unchanged: an online run sees the images, in the same order and with
the same Tx, as a run on the shards that genrep-generate writes with the same flags to its default
--out folder (`--format png`; other formats are lossy copies of the same pixels).

Samples are generated only when the stream hands them on (after the shuffle buffer and the skip of a
resumed run), a batch of anchors per forward pass, in the process that reads them: the main one
with `--workers 0`, else each DataLoader worker (spawned, not forked, for a CUDA generator). Images
travel as uncompressed PNG members, which the shard decoder reads like any shard's.

`--stream` makes every epoch --n fresh samples (the continuous stream of the paper's Fig. 1):
epoch e reads the units after those of epoch e-1, so no sample index is ever drawn twice.
"""

from __future__ import annotations

import concurrent.futures as futures
import io
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from genrep.errors import UsageError
from genrep.generate.image_encoders import Encoded, ImageEncoder
from genrep.generate.pipeline import Plan, ShardGenerator, base_manifest, make_plan
from genrep.options import flag_label
from genrep.shards import Expected, sample_key, shard_name, stored_frame
from genrep.train.data import DatasetInfo, Source, TrainingStream

if TYPE_CHECKING:
    from genrep.train.config import TrainConfig


class StoredPngEncoder(ImageEncoder):
    """PNG without compression: lossless and cheap, for images that never leave memory."""

    name = "png-stored"

    def encode(self, pixels: torch.Tensor, pool: futures.Executor | None) -> Encoded:
        encoded = []
        for image in pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy():
            buffer = io.BytesIO()
            Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=0)
            encoded.append(buffer.getvalue())
        return encoded


class GeneratorSource(Source):
    """The samples of a plan as the units (virtual shards) of its dataset, generated on demand."""

    def __init__(self, name: str, plan: Plan, options: dict[str, Any], batch_size: int) -> None:
        units = range(plan.num_shards)
        super().__init__(
            name,
            [Path(name) / shard_name(k) for k in units],
            [len(plan.shard_indices(k)) for k in units],
        )
        self.options, self.batch_size, self.fresh = options, batch_size, options["stream"]
        self.shard_size, self.neighbors = plan.shard_size, plan.neighbors
        self.device = plan.generator.device
        # what decoding checks every sample against, as for a shard (ShardSource)
        self.expected = Expected.of(base_manifest(plan))
        self._plan: Plan | None = plan
        self._generator: ShardGenerator | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A spawned DataLoader worker builds its own generator from the options.
        return {**self.__dict__, "_plan": None, "_generator": None}

    def epoch_ranges(
        self, epoch: int, seed: int, stream: int, streams: int
    ) -> Iterator[tuple[int, int, int]]:
        """The dataset's pieces; with --stream, epoch e's units come after epoch e-1's."""
        shift = epoch * len(self.units) if self.fresh else 0
        for unit, start, stop in super().epoch_ranges(epoch, seed, stream, streams):
            yield unit + shift, start, stop

    def read(self, unit: int, start: int, stop: int) -> Iterator[dict[str, Any]]:
        """Placeholders of the samples (index and key); `materialize` generates their members."""
        first = unit * self.shard_size
        tag = f"{self.name}/{shard_name(unit)}"  # as ShardSource tags the samples of a shard file
        for index in range(first + start, first + stop):
            key = sample_key(index)
            yield {
                "__key__": key,
                "__uid__": f"{tag}:{key}",
                "__url__": tag,
                "__index__": index,
                "__expected__": self.expected,
            }

    def materialize(self, raws: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The placeholders filled with the members a shard holds for their samples."""
        if self._generator is None:
            plan = self._plan or online_plan(self.options)
            self._generator = ShardGenerator(plan, self.batch_size, workers=0, progress=False)
        members = self._generator.samples([raw["__index__"] for raw in raws])
        return [{**raw, **sample} for raw, sample in zip(raws, members, strict=True)]


@dataclass
class GeneratorInfo(DatasetInfo):
    """The training input of an online run, with what identifies its generator and samples."""

    generator_identity: dict[str, Any] | None = None


class GeneratorStream(TrainingStream):
    """`TrainingStream` over a `GeneratorSource`: generates the samples it hands on, in batches."""

    def _raw(self, stream: int, streams: int, skip: int) -> Iterator[dict[str, Any]]:
        (source,) = self.info.sources
        placeholders = super()._raw(stream, streams, skip)
        # One forward pass of at most batch_size images per batch of anchors.
        anchors = max(1, source.batch_size // (1 + source.neighbors))
        while chunk := list(itertools.islice(placeholders, anchors)):
            yield from source.materialize(chunk)


def check_online_flags(config: TrainConfig) -> None:
    """Refuse online flags without --generator, and --generator with other training input."""
    if config.generator is None:
        defaults = {spec.name: spec for spec in fields(config) if spec.metadata.get("online")}
        for name, spec in defaults.items():
            default = spec.default_factory() if callable(spec.default_factory) else spec.default
            if getattr(config, name) not in (None, default):  # None: a resolved run on shards
                raise UsageError(
                    f"{flag_label(name)} is a flag of online training: add --generator MODEL, or "
                    f"drop {flag_label(name)} to train on shard folders"
                )
        return
    if config.shards or config.real:
        raise UsageError(
            "--generator trains on fresh samples of a generator: pass it without shard folders "
            "and --real (or train on shards without --generator)"
        )
    if config.n is None and config.per_class is None:
        raise UsageError(
            "--generator needs --n (anchors per epoch; with --stream, fresh ones every epoch) "
            "or, for a conditional model, --per-class"
        )


def plan_options(config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """genrep-generate's options for the samples of an online run (format png: lossless)."""
    return {
        "model": config.generator,
        "weights": config.generator_weights,
        "model_option": dict(config.generator_option or {}),
        "device": config.generator_device or str(device),
        "precision": config.precision,
        "view": config.view,
        "walks": config.walks,
        "learn_walks": config.learn_walks,
        "step_scale": dict(config.step_scale or {}),
        "n": config.n,
        "per_class": config.per_class,
        "neighbors": config.neighbors,
        "sigma": config.sigma,
        "truncation": config.truncation,
        "classes": config.classes,
        "frame": config.frame,
        "size": config.size,
        "shard_size": config.shard_size,
        "seed": config.generator_seed,
        "format": "png",
        "stream": config.stream,
    }


def online_plan(
    options: dict[str, Any],
    log: Callable[[str], None] = lambda message: None,
    progress: bool = False,
) -> Plan:
    """Stage 1's plan of the samples, with images kept as uncompressed PNG."""
    plan = make_plan(options, log=log, progress=progress)
    encoder = StoredPngEncoder("png", plan.quality, plan.generator.device)
    return replace(plan, encoder=encoder)


def open_generator(
    config: TrainConfig, device: torch.device, log: Callable[[str], None] = lambda message: None
) -> GeneratorInfo:
    """The training input of `genrep-train --generator`: what its samples are, as a dataset."""
    options = plan_options(config, device)
    plan = online_plan(options, log=log, progress=config.progress)
    manifest = base_manifest(plan)
    frame = stored_frame(manifest)
    num_classes = manifest["generator"]["num_classes"]
    classes = sorted(int(c) for c in (plan.classes or range(num_classes))) if num_classes else None
    name = plan.out.name  # genrep-generate's default --out for these flags
    source = GeneratorSource(name, plan, options, config.generator_batch_size)
    identity = {**plan.identity(), "stream": config.stream}
    return GeneratorInfo(
        name=name,
        epoch_size=plan.n,
        image_size=frame.short_side,
        neighbors=plan.neighbors,
        z_dim=plan.generator.z_dim,
        classes=classes,
        manifest_hash=None,
        sources=[source],
        center_crop=frame.native_crop() if frame.full else None,
        generator_identity=identity,
    )


def generator_device(info: DatasetInfo) -> torch.device | None:
    """Where an online run's generator runs (None: the input is not a generator)."""
    if not isinstance(info, GeneratorInfo):
        return None
    return info.sources[0].device
