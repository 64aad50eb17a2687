"""The genrep shard format: how one sample is encoded into, and safely decoded from, a tar shard.

This module is the single home of the on-disk contract (specified for people in `shards/README.md`):
the writer of stage 1 and the readers of stages 2 and 3 all go through it. Decoding handles only the
fields the format defines, with decoders that cannot execute code (no pickle, ever).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from genrep.errors import ShardFormatError
from genrep.remote import Location, open_file

# webdataset is imported inside the functions that use it: it imports torch, which encoder
# processes (they only run `encode_images`) should not pay for.

#: Bumped on any change a reader could notice; readers refuse versions they do not know.
FORMAT_NAME = "genrep-shards"
#: the version this genrep writes
FORMAT_VERSION = 2
#: the versions this genrep reads (shards/README.md, "Version history")
READABLE_VERSIONS = (1, 2)
IMAGE_FORMATS = ("jpg", "png", "webp")
SHARD_PATTERN = "shard-{:06d}.tar"
SHARD_RE = re.compile(r"^shard-(\d{6,})\.tar$")
#: Fixed tar member metadata, so a shard's bytes depend only on its samples.
TAR_MTIME = 0.0
TAR_USER = "genrep"

_NEIGHBOR_RE = re.compile(r"^neighbor_(\d+)\.(jpg|png|webp)$")


@dataclass
class Sample:
    """One decoded sample: an anchor view, its neighbor views and what generated them."""

    key: str
    anchor: Image.Image
    neighbors: list[Image.Image] = field(default_factory=list)
    label: int | None = None
    latent: np.ndarray | None = None
    neighbor_latents: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


#: what a stored image is: the whole native frame (possibly downscaled), its central square, or
#: its central square after the short side was resized (format version 1's two modes)
FRAMES = ("full", "center-crop", "resize")
#: side of the paper's model inputs: App. A takes 128 px center crops of native frames
PAPER_SIDE = 128


@dataclass(frozen=True)
class StoredFrame:
    """The size and kind of the images a dataset stores, and the generator's native frame."""

    width: int
    height: int
    frame: str
    native_width: int
    native_height: int

    @property
    def full(self) -> bool:
        """Whether each image is the whole generated frame (App. A: Tx crops from all of it)."""
        return self.frame == "full"

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)

    def native_crop(self, side: int = PAPER_SIDE) -> int:
        """Side, in stored pixels, of the central `side` px square of the native frame (App. A's
        input for views without Tx), at most the stored short side (a frame that `--size` scaled
        down holds it in fewer pixels)."""
        scale = self.short_side / min(self.native_width, self.native_height)
        return max(1, min(self.short_side, round(side * scale)))

    def describe(self) -> str:
        what = "full frame" if self.full else f"{self.frame} of the native frame"
        return f"{self.width}x{self.height} px ({what}, native {self.native_width}x{self.native_height})"


def stored_frame(manifest: dict[str, Any]) -> StoredFrame:
    """The stored frame of a dataset, for every readable format version."""
    image = manifest["image"]
    if manifest["format_version"] == 1:  # square images of `size`, cropped or resized
        side, native = int(image["size"]), int(manifest["generator"]["resolution"])
        return StoredFrame(side, side, str(image["resize"]), native, native)
    return StoredFrame(
        int(image["width"]),
        int(image["height"]),
        str(image["frame"]),
        int(image["native_width"]),
        int(image["native_height"]),
    )


def sample_key(index: int) -> str:
    """Tar key of global sample `index` (zero-padded decimal: no dots, sorts in index order)."""
    return f"{index:09d}"


def shard_name(k: int) -> str:
    return SHARD_PATTERN.format(k)


def encode_image(image: np.ndarray, fmt: str, quality: int) -> bytes:
    """Encode an HxWx3 uint8 array; the output is a pure function of its inputs."""
    buffer = io.BytesIO()
    pil = Image.fromarray(image, "RGB")
    if fmt == "jpg":
        pil.save(buffer, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    elif fmt == "png":
        pil.save(buffer, format="PNG", compress_level=6)
    elif fmt == "webp":
        pil.save(buffer, format="WEBP", quality=quality, method=4)
    else:
        raise ShardFormatError(f"unknown image format {fmt!r}; choose one of {IMAGE_FORMATS}")
    return buffer.getvalue()


def encode_images(images: np.ndarray, fmt: str, quality: int) -> list[bytes]:
    """Encode N x H x W x 3 uint8 images (a top-level function: encoder processes run it)."""
    return [encode_image(image, fmt, quality) for image in images]


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def encode_sample(
    index: int,
    anchor: bytes,
    neighbors: list[bytes],
    fmt: str,
    latent: np.ndarray,
    neighbor_latents: np.ndarray | None,
    label: int | None,
    meta: dict[str, Any],
) -> dict[str, bytes | str]:
    """The tar members of one sample (already-encoded images in, member bytes out)."""
    fields: dict[str, bytes | str] = {"__key__": sample_key(index), f"anchor.{fmt}": anchor}
    for j, data in enumerate(neighbors):
        fields[f"neighbor_{j}.{fmt}"] = data
    fields["latent.npy"] = encode_npy(latent.astype(np.float32))
    if neighbor_latents is not None and len(neighbors):
        fields["neighbor_latent.npy"] = encode_npy(neighbor_latents.astype(np.float32))
    if label is not None:
        fields["cls"] = str(int(label)).encode()
    fields["json"] = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return fields


def write_shard(fileobj: BinaryIO, samples: list[dict[str, bytes | str]]) -> None:
    """Write encoded samples as one byte-reproducible tar (fixed mtime, owner and mode)."""
    import webdataset as wds

    writer = wds.TarWriter(
        fileobj, user=TAR_USER, group=TAR_USER, mode=0o444, encoder=False, mtime=TAR_MTIME
    )
    for sample in samples:
        writer.write(sample)
    writer.close()


def decode_image(data: bytes) -> Image.Image:
    """Decode an image member to RGB; PIL only reads pixel formats, never code."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_sample(raw: dict[str, Any]) -> Sample:
    """Decode the raw members of one sample (as grouped by webdataset) into a `Sample`.

    Only the fields the format defines are decoded; any other member is ignored, so nothing in a
    shard can run code. Raises `ShardFormatError` for a missing or undecodable field.
    """
    key = str(raw.get("__key__", "?"))
    try:
        anchor_field = next(
            (f"anchor.{ext}" for ext in IMAGE_FORMATS if f"anchor.{ext}" in raw), None
        )
        if anchor_field is None:
            raise ShardFormatError("no anchor image")
        anchor = decode_image(raw[anchor_field])
        indexed = sorted((int(m.group(1)), name) for name in raw if (m := _NEIGHBOR_RE.match(name)))
        if [i for i, _ in indexed] != list(range(len(indexed))):
            raise ShardFormatError("neighbor views are not numbered 0..K-1")
        neighbors = [decode_image(raw[name]) for _, name in indexed]
        label = int(raw["cls"].decode()) if "cls" in raw else None
        latent = decode_npy(raw["latent.npy"]) if "latent.npy" in raw else None
        neighbor_latents = (
            decode_npy(raw["neighbor_latent.npy"]) if "neighbor_latent.npy" in raw else None
        )
        meta = json.loads(raw["json"].decode()) if "json" in raw else {}
    except ShardFormatError as err:
        raise ShardFormatError(f"sample {key}: {err}") from None
    except Exception as err:  # corrupt bytes surface as many exception types
        raise ShardFormatError(f"sample {key}: undecodable ({type(err).__name__}: {err})") from None
    return Sample(key, anchor, neighbors, label, latent, neighbor_latents, meta)


def iter_raw_samples(path: Location, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Raw member groups of one shard (a file or a URL; at most `limit` bytes when given, its
    manifest size), in order: webdataset's tar grouping, no decoding."""
    import webdataset as wds

    with open_file(path, limit) as stream:
        members = (
            {**member, "__url__": str(path)}
            for member in wds.tariterators.tar_file_iterator(stream)
        )
        yield from wds.tariterators.group_by_keys(members)


def shard_paths(folder: str | Path) -> list[Path]:
    """The complete shards of a dataset folder in order (from its file names, never a glob hang)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if SHARD_RE.match(p.name))
