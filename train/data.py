"""Streaming training input: shard folders (and real image folders) -> batches of views per rank.

Each epoch, the units of a source (shards with their sample counts from the manifest, or single
image files) are put in a seeded order that every rank computes alike, and the concatenated sample
sequence is cut into `ranks x workers` contiguous ranges whose sizes differ by at most one. So
ranks see disjoint data, any number of shards (even fewer than workers) splits evenly, and no
stream runs dry: every stream goes on epoch after epoch and the trainer takes the same number of
batches on every rank, so uneven shards cannot hang DDP. A stream's position is a pure function
of the training step, so a resumed run skips the raw bytes it already used without decoding them.

Shards are read only through `genrep.manifest` and `genrep.shards` (no globs, no webdataset
default decoders: nothing in a shard can run code). A bad sample is skipped and counted (`--strict`:
an error); a damaged shard (unreadable, truncated, not the manifest's checksum) is skipped from
where the damage is found, for the rest of the run. A stream that meets as many bad samples in a
row as the data holds stops with one error instead of looking for a good one forever.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

from genrep.errors import DataError, ShardFormatError, UsageError, warn
from genrep.images import image_files, read_image_file
from genrep.manifest import content_hash, find_dataset, load_dataset
from genrep.remote import Location, dataset_name, is_remote
from genrep.shards import (
    IMAGE_FORMATS,
    PAPER_SIDE,
    Expected,
    ShardFile,
    decode_sample,
    stored_frame,
)
from genrep.train.tx import Transform

#: Side real images are brought to: the paper trains its real-data baselines at 128 px (App. D).
REAL_IMAGE_SIZE = 128


class Source:
    """An ordered list of units (shards or image files), each holding a known number of samples."""

    def __init__(self, name: str, units: Sequence[Any], counts: Sequence[int]) -> None:
        self.name = name
        self.units = list(units)
        self.counts = np.asarray(counts, dtype=np.int64)

    @property
    def size(self) -> int:
        return int(self.counts.sum())

    def stream_length(self, stream: int, streams: int) -> int:
        """Samples that stream `stream` of `streams` reads per epoch."""
        return (stream + 1) * self.size // streams - stream * self.size // streams

    def epoch_ranges(
        self, epoch: int, seed: int, stream: int, streams: int
    ) -> Iterator[tuple[int, int, int]]:
        """(unit, start, stop) pieces of the epoch's sample sequence that belong to `stream`."""
        order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(len(self.units))
        counts = self.counts[order]
        ends = np.cumsum(counts)
        starts = ends - counts
        lo, hi = stream * self.size // streams, (stream + 1) * self.size // streams
        for i in range(int(np.searchsorted(ends, lo, side="right")), len(order)):
            if starts[i] >= hi:
                break
            begin, end = max(lo, starts[i]), min(hi, ends[i])
            if end > begin:
                yield int(order[i]), int(begin - starts[i]), int(end - starts[i])

    def read(self, unit: int, start: int, stop: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError


class ShardSource(Source):
    """The shards of one or more genrep datasets (in folders or at URLs), concatenated; each is
    read up to its size in the manifest, and must have that size.

    `read` yields one raw sample per sample of the range and, where a shard is damaged, one
    placeholder (`__error__`, and `__count__`: the samples of the range it stands for) after what
    could be read, so a range always yields something and a damaged shard costs no more than its
    reading.
    With `verify`, the first read of a shard (in a DataLoader worker) checks its size and, while
    streaming, its sha256 against the manifest (reading the rest of the file when the range ends
    before it); a shard that fails is damaged from then on.
    """

    def __init__(
        self,
        name: str,
        units: Sequence[Location],
        entries: Sequence[dict[str, Any]],
        expected: Sequence[Expected],
        verify: bool,
    ) -> None:
        super().__init__(name, units, [int(entry["samples"]) for entry in entries])
        self.entries, self.expected, self.verify = list(entries), list(expected), verify
        self.verified: set[int] = set()
        self.damaged: dict[int, str] = {}

    def read(self, unit: int, start: int, stop: int) -> Iterator[dict[str, Any]]:
        path = self.units[unit]
        # the dataset's name and the shard's: alike for a folder and its URL, so are the Tx seeds
        tag = "/".join(str(path).rstrip("/").rsplit("/", 2)[-2:])
        delivered = 0
        if unit not in self.damaged:
            check = self.verify and unit not in self.verified
            try:
                entry = self.entries[unit]
                with ShardFile(path, entry if check else None, entry["bytes"]) as shard:
                    for index, raw in enumerate(shard.samples()):
                        if index >= stop:
                            break
                        if index >= start:
                            raw["__uid__"] = f"{tag}:{raw['__key__']}"
                            raw["__url__"] = str(path)
                            raw["__expected__"] = self.expected[unit]
                            delivered += 1
                            yield raw
                    if check:
                        shard.check()
                if start + delivered < stop:
                    raise ShardFormatError(
                        f"holds {start + delivered} samples, its manifest says "
                        f"{self.entries[unit]['samples']}"
                    )
                self.verified.add(unit)
            except ShardFormatError as err:
                self.damaged[unit] = str(err)
                warn(f"{tag}: {err}; skipping it (genrep-shards verify names bad shards)")
        if unit in self.damaged:  # (--strict stops here, even when every sample was delivered)
            yield {
                "__url__": str(path),
                "__uid__": f"{tag}:?",
                "__error__": self.damaged[unit],
                "__count__": stop - start - delivered,
            }


class ImageFileSource(Source):
    """A real image folder in ImageFolder layout (class sub-folders), one unit per file."""

    def __init__(self, root: Path, files: list[tuple[str, int]], classes: list[str]) -> None:
        super().__init__(root.name, [Path(f) for f, _ in files], [1] * len(files))
        self.root = root
        self.labels = [label for _, label in files]
        self.classes = classes

    def read(self, unit: int, start: int, stop: int) -> Iterator[dict[str, Any]]:
        path = self.units[unit]
        yield {
            "__url__": str(path),
            "__uid__": str(path.relative_to(self.root)),
            "__key__": path.stem,
            "label": self.labels[unit],
        }


@dataclass
class DatasetInfo:
    """What the objectives and the trainer need to know about the training input."""

    name: str
    #: samples in one epoch (the real folder's size when real images are used, App. F)
    epoch_size: int
    image_size: int
    #: neighbor views stored per anchor (0: view `none` or real images)
    neighbors: int
    #: latent size when every sample carries its generator latent z, else None
    z_dim: int | None
    #: class ids of the labels (index = training label), None when the input has no usable labels
    classes: list[int] | list[str] | None
    manifest_hash: str | None
    sources: list[Source]
    real_fraction: float | None = None
    #: the shards store whole frames: views without Tx take their central `center_crop` px (the
    #: native frame's 128 px, App. A); None: they store crops (or the input is real images)
    center_crop: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else 0

    @property
    def train_side(self) -> int:
        """Side of the paper's 128 px training images at this data's scale: what the default
        input size derives from, and the side real images are resized to."""
        return min(PAPER_SIDE, self.image_size) if self.center_crop else self.image_size


def open_shard_folders(
    folders: Sequence[Location], verify: bool = True
) -> tuple[ShardSource, dict[str, Any]]:
    """Shards of the dataset folders (via their manifests) and what they hold in common."""
    paths: list[Location] = []
    entries, expected, manifests, names = [], [], [], []
    for folder in folders:
        manifest, shard_paths = load_dataset(folder)  # a ManifestError is a DataError
        remote = is_remote(folder)
        names.append(dataset_name(str(folder)) if remote else find_dataset(folder).resolve().name)
        manifests.append(manifest)
        paths += shard_paths
        entries += manifest["shards"]
        expected += [Expected.of(manifest)] * len(shard_paths)
    counts = [int(entry["samples"]) for entry in entries]
    z_dims = {m["generator"]["z_dim"] for m in manifests}
    conditional = {m["generator"]["num_classes"] > 0 for m in manifests}
    classes = None
    if conditional == {True}:
        classes = sorted(
            {
                int(c)
                for m in manifests
                for c in (m.get("classes") or range(m["generator"]["num_classes"]))
            }
        )
    hashes = [content_hash(m) for m in manifests]
    if len(set(hashes)) < len(hashes):
        twice = [str(f) for f, h in zip(folders, hashes, strict=True) if hashes.count(h) > 1]
        raise UsageError(
            f"{' and '.join(twice)} hold the same samples, which an epoch would then see twice: "
            "pass each dataset once"
        )
    frames = {name: stored_frame(m) for name, m in zip(names, manifests, strict=True)}
    crops = {frame.native_crop() if frame.full else None for frame in frames.values()}
    if len(crops) > 1:
        described = "; ".join(f"{name}: {frame.describe()}" for name, frame in frames.items())
        raise DataError(
            f"these datasets store frames that App. A crops differently ({described}): train on "
            "datasets made with the same genrep-generate --frame and --size"
        )
    summary: dict[str, Any] = {
        "name": "+".join(names),
        "size": sum(counts),
        "image_size": max(frame.short_side for frame in frames.values()),
        "center_crop": crops.pop(),
        "neighbors": min(int(m.get("neighbors") or 0) for m in manifests),
        "z_dim": z_dims.pop() if len(z_dims) == 1 else None,
        "classes": classes,
        "manifest_hash": hashes[0]
        if len(hashes) == 1
        else hashlib.sha256("\n".join(hashes).encode()).hexdigest(),
    }
    return ShardSource(summary["name"], paths, entries, expected, verify), summary


def open_image_folder(root: str | Path) -> ImageFileSource:
    """The images of an ImageFolder-layout folder (listing only; nothing is decoded here)."""
    root = Path(root)
    try:
        classes, class_to_idx = find_classes(root)
        files = image_files(root, class_to_idx, IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as err:
        raise DataError(
            f"--real {root}: {err}; pass a folder with one sub-folder of images per class"
        ) from None
    return ImageFileSource(root, files, classes)


def open_data(
    shard_folders: Sequence[Location],
    real: str | Path | None,
    real_fraction: float | None,
    verify: bool = True,
) -> DatasetInfo:
    """Open the training input named on the command line, checking the combination makes sense
    (a combination of flags that does not is a UsageError, data that cannot be read a DataError)."""
    if not shard_folders and real is None:
        raise UsageError("pass one or more shard folders made by genrep-generate, or --real DIR")
    if shard_folders and real is not None and real_fraction is None:
        raise UsageError("--real with shard folders mixes both: pass --real-fraction P (App. F)")
    if real_fraction is not None:
        if not (shard_folders and real is not None):
            raise UsageError("--real-fraction needs both shard folders and --real DIR")
        if not 0 < real_fraction < 1:
            raise UsageError(f"--real-fraction must be in (0, 1), got {real_fraction}")
    sources: list[Source] = []
    summary: dict[str, Any] = {}
    if shard_folders:
        shards, summary = open_shard_folders(shard_folders, verify)
        sources.append(shards)
    if real is None:
        return DatasetInfo(
            summary["name"],
            summary["size"],
            summary["image_size"],
            summary["neighbors"],
            summary["z_dim"],
            summary["classes"],
            summary["manifest_hash"],
            sources,
            center_crop=summary["center_crop"],
        )
    images = open_image_folder(real)
    sources.append(images)
    if not shard_folders:
        return DatasetInfo(
            images.name, images.size, REAL_IMAGE_SIZE, 0, None, images.classes, None, sources
        )
    # A mix: real images have no latents, and their labels are not the generator's classes.
    return DatasetInfo(
        f"{summary['name']}+{images.name}",
        images.size,
        summary["image_size"],
        0,
        None,
        None,
        summary["manifest_hash"],
        sources,
        real_fraction,
        summary["center_crop"],
    )


@dataclass
class ViewSpec:
    """How a sample becomes training views: how many, which Tx, which targets."""

    views: int
    transform: Transform
    neighbors: int
    needs_latents: bool
    needs_labels: bool
    #: class id -> training label, for shard labels
    label_index: dict[int, int] | None
    strict: bool
    seed: int
    #: the transform of real images when it differs from that of the shards' images
    real_transform: Transform | None = None


def sample_seed(seed: int, epoch: int, uid: str) -> int:
    """Seed of a sample's Tx in an epoch: augmentations do not depend on workers or order."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def batches_before(step: int, worker: int, workers: int) -> int:
    """Batches that DataLoader worker `worker` delivered in the first `step` steps (round robin)."""
    return max(0, (step - worker + workers - 1) // workers)


class TrainingStream(IterableDataset):
    """The endless sample stream of one rank; DataLoader workers split it further.

    Samples are dicts: `images` (views x 3 x H x W), `label` (-1 when unused), `latents`
    (views x z_dim, for objectives that need them), `key` (shard and sample), and `skipped` (bad
    samples dropped just before this one, so the trainer can count them).
    """

    def __init__(
        self,
        info: DatasetInfo,
        spec: ViewSpec,
        rank: int,
        world: int,
        batch_size: int,
        start_step: int,
        shuffle_buffer: int,
    ) -> None:
        super().__init__()
        self.info, self.spec = info, spec
        self.rank, self.world = rank, world
        self.batch_size, self.start_step = batch_size, start_step
        self.shuffle_buffer = shuffle_buffer

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        index, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        stream, streams = self.rank * workers + index, self.world * workers
        done = batches_before(self.start_step, index, workers) * self.batch_size
        pipeline = wds.DataPipeline(lambda: self._raw(stream, streams, done), self._examples)
        return iter(pipeline)

    def _source_stream(
        self, source: Source, stream: int, streams: int, skip: int
    ) -> Iterator[dict[str, Any]]:
        """Raw samples of `source` for `stream`, epoch after epoch, from position `skip` on."""
        epoch, offset = divmod(skip, source.stream_length(stream, streams))
        while True:
            raws = itertools.chain.from_iterable(
                source.read(*piece)
                for piece in source.epoch_ranges(epoch, self.spec.seed, stream, streams)
            )
            if self.shuffle_buffer > 1:
                rng = random.Random(sample_seed(self.spec.seed, epoch, f"shuffle:{stream}"))
                raws = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(raws)
            for raw in itertools.islice(raws, offset, None):
                raw["__epoch__"] = epoch
                yield raw
            offset = 0
            epoch += 1

    def _raw(self, stream: int, streams: int, skip: int) -> Iterator[dict[str, Any]]:
        sources = self.info.sources
        if len(sources) == 1:
            yield from self._source_stream(sources[0], stream, streams, skip)
            return
        # Shards mixed with real images: position i is real iff floor((i+1)p) > floor(ip), so
        # any prefix holds the fraction p of real samples and both positions follow from `skip`.
        assert self.info.real_fraction is not None  # set whenever real images are mixed in
        p = Fraction(self.info.real_fraction).limit_denominator(10_000)
        real_done = skip * p.numerator // p.denominator
        generated = self._source_stream(sources[0], stream, streams, skip - real_done)
        real = self._source_stream(sources[1], stream, streams, real_done)
        for i in itertools.count(skip):
            is_real = (i + 1) * p.numerator // p.denominator > i * p.numerator // p.denominator
            yield next(real) if is_real else next(generated)

    def _examples(self, raws: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        skipped = 0
        whole_pass = sum(source.size for source in self.info.sources)
        for raw in raws:
            try:
                example = self._example(raw)
            except ShardFormatError as err:
                where = f"{raw.get('__url__')}: {err}"
                if self.spec.strict:
                    raise DataError(f"{where} (drop --strict to skip such samples)") from None
                skipped += raw.get("__count__", 1)
                if skipped >= whole_pass:
                    raise DataError(
                        f"{self.info.name}: no usable sample in a whole pass over its "
                        f"{whole_pass} samples ({skipped} bad in a row; the last: {where}); "
                        "check it with genrep-shards verify"
                    ) from None
                continue
            example["skipped"] = skipped
            skipped = 0
            yield example

    def _example(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Decode one raw sample into its views; ShardFormatError if it lacks what is needed."""
        spec = self.spec
        if "__error__" in raw:
            raise ShardFormatError(raw["__error__"])
        seed = sample_seed(spec.seed, raw["__epoch__"], raw["__uid__"])
        latents: list[np.ndarray] | None = None
        if "label" in raw:  # a real image file
            try:
                image = read_image_file(raw["__url__"])
            except (DataError, OSError) as err:
                raise ShardFormatError(f"image {raw['__uid__']}: {err}") from None
            images, label = [image] * spec.views, raw["label"]
            transform = spec.real_transform or spec.transform
        else:
            transform = spec.transform
            images, latents, label = self._shard_views(raw, random.Random(seed))
        example: dict[str, Any] = {"key": raw["__uid__"], "label": -1}
        if spec.needs_labels:
            example["label"] = label
        if spec.needs_latents and latents is not None:
            example["latents"] = torch.from_numpy(np.stack(latents)).float()
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            example["images"] = torch.stack([transform(image) for image in images])
        return example

    def _shard_views(
        self, raw: dict[str, Any], rng: random.Random
    ) -> tuple[list[Image.Image], list[np.ndarray], int]:
        """The anchor and V-1 of its K neighbors (or V copies of the anchor when K = 0).

        The neighbors are picked before decoding, and only the members that training uses are
        handed to `decode_sample`, so unused views, latents and metadata cost nothing.
        """
        spec = self.spec
        chosen = sorted(rng.sample(range(spec.neighbors), spec.views - 1)) if spec.neighbors else []
        used = (
            ("anchor.",)
            + (("cls",) if spec.needs_labels else ())
            + (("latent.npy", "neighbor_latent.npy") if spec.needs_latents else ())
        )
        members = {name: value for name, value in raw.items() if name.startswith(used)}
        members["__key__"] = raw.get("__key__")
        for i, j in enumerate(chosen):
            name = next(
                (f"neighbor_{j}.{ext}" for ext in IMAGE_FORMATS if f"neighbor_{j}.{ext}" in raw),
                None,
            )
            if name is None:
                raise ShardFormatError(f"sample {raw.get('__key__')}: neighbor view {j} is missing")
            members[f"neighbor_{i}.{name.rsplit('.', 1)[1]}"] = raw[name]
        sample = decode_sample(members, raw["__expected__"])
        label = -1
        if spec.needs_labels:
            label_index = spec.label_index or {}
            if sample.label is None or sample.label not in label_index:
                raise ShardFormatError(f"sample {sample.key}: lacks a known class label")
            label = label_index[sample.label]
        latents: list[np.ndarray] = []
        if spec.needs_latents:
            anchor_latent = sample.latent
            neighbor_latents = sample.neighbor_latents if chosen else None
            if anchor_latent is None or (
                chosen and (neighbor_latents is None or neighbor_latents.shape[0] <= chosen[-1])
            ):
                raise ShardFormatError(f"sample {sample.key}: lacks its latents")
            latents = [anchor_latent]
            if neighbor_latents is not None:
                latents += [neighbor_latents[j] for j in chosen]
        if not spec.neighbors:
            return [sample.anchor] * spec.views, latents[:1] * spec.views, label
        return [sample.anchor, *sample.neighbors], latents, label


def check_stream_sizes(info: DatasetInfo, world: int, workers: int, batch_size: int) -> int:
    """DataLoader workers per rank that the data supports (each stream needs samples)."""
    smallest = min(source.size for source in info.sources)
    if smallest < world:
        raise DataError(f"the training data has {smallest} samples, fewer than the {world} ranks")
    if info.epoch_size < batch_size:
        raise DataError(
            f"the training data has {info.epoch_size} samples, fewer than one batch "
            f"({batch_size}); lower --batch-size"
        )
    return min(workers, smallest // world)


def steps_per_epoch(info: DatasetInfo, batch_size: int) -> int:
    return max(1, math.floor(info.epoch_size / batch_size))
