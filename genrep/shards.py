"""The genrep shard format: how one sample is encoded into, and safely decoded from, a tar shard.

This module is the single home of the on-disk contract (specified for people in `shards/README.md`):
the writer of stage 1 and the readers of stages 2 and 3 all go through it. Decoding handles only the
fields the format defines, with decoders that cannot execute code (no pickle, ever).

A shard is untrusted input, so reading one is bounded: only regular files, only uncompressed tar,
only the members the format defines (each at most `MAX_MEMBER_BYTES`), images no larger than the
manifest says, and the sha256 of the bytes read is checked against the manifest while streaming
(`ShardFile`). Anything else is a `ShardFormatError`, never another exception type.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
from PIL import Image

from genrep.errors import DataError, ShardFormatError
from genrep.images import decode_image as decode_image_bytes
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
#: the PIL decoder of each image format (no other decoder ever sees a shard's bytes)
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
SHARD_PATTERN = "shard-{:06d}.tar"
SHARD_RE = re.compile(r"^shard-(\d{6,})\.tar$")

# Limits of a reader (shards/README.md, "Limits"): what a shard or manifest may make genrep hold.
#: largest member of a shard that is read (an image, a latent, a sample's json)
MAX_MEMBER_BYTES = 64 << 20
#: largest pax or GNU long-name header (tarfile reads these whole)
MAX_HEADER_BYTES = 64 << 10
#: most shards of a dataset, and most anchors in one shard
MAX_SHARDS = 100_000
MAX_SHARD_SIZE = 100_000
#: most neighbor views of an anchor (genrep-generate writes at most MAX_SHARD_SIZE images a shard)
MAX_NEIGHBORS = MAX_SHARD_SIZE - 1
#: largest latent and most classes of a generator: training sizes its heads and label table by
#: them before reading a sample (SDXL's noise latent has 65,536 dims, BigGAN 1,000 classes)
MAX_Z_DIM = 1 << 20
MAX_CLASSES = 100_000
#: largest file a manifest may record (a file size is a signed 64-bit number)
MAX_FILE_BYTES = (1 << 63) - 1
#: the magic bytes of compressed streams, which a shard never is (tarfile would inflate them)
COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x04\x22\x4d\x18": "lz4",
}
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


def stored_frame(manifest: Mapping[str, Any]) -> StoredFrame:
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


def shard_number(name: str) -> int:
    """k of a shard named shard_name(k) (a name SHARD_RE matches)."""
    match = SHARD_RE.match(name)
    if match is None:
        raise ShardFormatError(f"{name!r} is not a shard name (shard-NNNNNN.tar)")
    return int(match.group(1))


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


def decode_image(data: bytes, fmt: str | None = None, size: tuple[int, int] | None = None):
    """Decode an image member (`fmt`: its extension) to RGB, of `size` (width, height) if given;
    PIL only reads the format's pixels, never code."""
    formats = (PIL_FORMATS[fmt],) if fmt else tuple(PIL_FORMATS.values())
    return decode_image_bytes(data, formats, size)


def decode_npy(data: bytes, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A latent `.npy` member as a float32 array (the format's only dtype: no objects, strings or
    records, which training cannot take, and no pickle), of finite values and of `shape` if given;
    the header's shape must match the member's size before anything is allocated."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    read_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read_header is None:
        raise ValueError(f"npy version {version} is not read")
    stored, fortran, dtype = read_header(stream)
    if dtype.hasobject:
        raise ValueError("npy array of Python objects")
    if dtype.kind != "f" or dtype.itemsize != 4:  # float32 in either byte order
        raise ValueError(f"npy array of {dtype}, not float32")
    count = int(np.prod(stored, dtype=np.int64)) if stored else 1
    if count * dtype.itemsize != len(data) - stream.tell():
        raise ValueError(f"npy header says {stored} {dtype}, the member holds other bytes")
    if shape is not None and tuple(stored) != tuple(shape):
        raise ValueError(f"array of shape {tuple(stored)}, expected {tuple(shape)}")
    array = np.frombuffer(data, dtype, count, stream.tell())
    if not np.isfinite(array).all():
        raise ValueError("npy array holds NaN or infinity")
    return array.reshape(stored, order="F" if fortran else "C").astype(np.float32)


@dataclass(frozen=True)
class Expected:
    """What every sample of a dataset holds according to its manifest; decoding refuses others."""

    width: int
    height: int
    z_dim: int | None = None
    #: the names of a sample's members, sorted (`format_members` checks them), and the classes
    #: its `cls` may name (empty: the dataset has no `cls`)
    members: tuple[str, ...] = ()
    classes: frozenset[int] = frozenset()

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> Expected:
        frame = stored_frame(manifest)
        ext, neighbors = manifest["image"]["format"], int(manifest["neighbors"])
        classes = frozenset(manifest.get("classes") or ())
        members = [f"anchor.{ext}", *(f"neighbor_{j}.{ext}" for j in range(neighbors))]
        members += ["latent.npy", "json"] + (["neighbor_latent.npy"] if neighbors else [])
        members += ["cls"] if classes else []
        z_dim = int(manifest["generator"]["z_dim"])
        return cls(frame.width, frame.height, z_dim, tuple(sorted(members)), classes)


def decode_sample(raw: dict[str, Any], expected: Expected | None = None) -> Sample:
    """Decode the raw members of one sample (as `ShardFile.samples` groups them) into a `Sample`.

    Only the fields the format defines are decoded; any other member is ignored, so nothing in a
    shard can run code. With `expected` (from the manifest), images must have its size and latents
    its z_dim. Raises `ShardFormatError` for a missing, undecodable or unexpected field.
    """
    key = str(raw.get("__key__", "?"))
    size = (expected.width, expected.height) if expected else None
    z_dim = expected.z_dim if expected else None
    try:
        anchor_ext = next((ext for ext in IMAGE_FORMATS if f"anchor.{ext}" in raw), None)
        if anchor_ext is None:
            raise ShardFormatError("no anchor image")
        anchor = decode_image(raw[f"anchor.{anchor_ext}"], anchor_ext, size)
        indexed = sorted(
            (int(m.group(1)), m.group(2), name) for name in raw if (m := _NEIGHBOR_RE.match(name))
        )
        if [i for i, _, _ in indexed] != list(range(len(indexed))):
            raise ShardFormatError("neighbor views are not numbered 0..K-1")
        neighbors = [decode_image(raw[name], ext, size) for _, ext, name in indexed]
        label = class_id(raw["cls"]) if "cls" in raw else None
        latent = (
            decode_npy(raw["latent.npy"], None if z_dim is None else (z_dim,))
            if "latent.npy" in raw
            else None
        )
        neighbor_latents = (
            decode_npy(raw["neighbor_latent.npy"]) if "neighbor_latent.npy" in raw else None
        )
        if z_dim is not None and neighbor_latents is not None:
            if neighbor_latents.ndim != 2 or neighbor_latents.shape[1] != z_dim:
                raise ShardFormatError(f"neighbor latents of shape {neighbor_latents.shape}")
        meta = json.loads(raw["json"].decode()) if "json" in raw else {}
    except DataError as err:  # a ShardFormatError, or an image the decoder refused
        raise ShardFormatError(f"sample {key}: {err}") from None
    except Exception as err:  # corrupt bytes surface as many exception types
        raise ShardFormatError(f"sample {key}: undecodable ({type(err).__name__}: {err})") from None
    return Sample(key, anchor, neighbors, label, latent, neighbor_latents, meta)


#: a sample key: `sample_key` of an index below MAX_SHARDS * MAX_SHARD_SIZE (a longer run of
#: digits is no key: Python refuses to read an int of over 4,300 digits)
KEY_RE = re.compile(r"^\d{9,10}$")
#: the format's member names after the key (shards/README.md); any other member is skipped unread
_MEMBER = r"(?:anchor|neighbor_\d+)\.(?:jpg|png|webp)|latent\.npy|neighbor_latent\.npy|cls|json"
MEMBER_RE = re.compile(rf"^(?:{_MEMBER})$")
_FIELD_RE = re.compile(rf"^(\d{{9,10}})\.({_MEMBER})$")
#: the longest `cls` member read (a class id in ASCII decimal)
MAX_CLASS_BYTES = 20


def class_id(data: Any) -> int:
    """A `cls` member's class: ASCII decimal digits only, as the writer stores it, so that a
    shard cannot label a sample `-1` or ` 1`."""
    if not isinstance(data, bytes) or not 0 < len(data) <= MAX_CLASS_BYTES or not data.isdigit():
        raise ShardFormatError("its cls member is not a class id")
    return int(data)


def refuse_json_constant(name: str) -> float:
    """`json.loads(..., parse_constant=)`: NaN and Infinity, which Python's json reads, are not
    JSON, and genrep never writes them."""
    raise ValueError(f"{name} is not a JSON number")


def format_members(raw: Mapping[str, Any], expected: Expected) -> dict[str, Any]:
    """The format's members of one sample (as `ShardFile.samples` groups them), held to what its
    manifest promises (`Expected.of`): exactly the format's members, a json object recording the
    sample's index, and a class among the manifest's. `verify` and `subset`/`reshard` check every
    sample so; training decodes only what it reads (`decode_sample`)."""
    name = raw.get("__key__")
    if not isinstance(name, str) or not KEY_RE.match(name):
        raise ShardFormatError(f"a sample key {name!r} is not a sample index")
    members = {field: data for field, data in raw.items() if MEMBER_RE.match(field)}
    if tuple(sorted(members)) != expected.members or not all(
        isinstance(v, bytes) for v in members.values()
    ):
        raise ShardFormatError(
            f"sample {name}: members {sorted(members)} are not the format's {list(expected.members)}"
        )
    try:
        meta = json.loads(members["json"], parse_constant=refuse_json_constant)
    except (ValueError, RecursionError):  # not JSON (or NaN), or nested too deep
        meta = None
    if not isinstance(meta, dict) or meta.get("index") != int(name):
        raise ShardFormatError(
            f"sample {name}: its json is not an object recording index {int(name)}"
        )
    if expected.classes:
        try:
            label = class_id(members["cls"])
        except ShardFormatError as err:
            raise ShardFormatError(f"sample {name}: {err}") from None
        if label not in expected.classes:
            raise ShardFormatError(f"sample {name}: class {label} is not among the manifest's")
    return {"__key__": name, **members}


#: tar headers whose data tarfile reads whole into memory: pax records and GNU long names
_EXTENDED_HEADERS = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header that tarfile may only expand within bounds: pax and long-name headers of at
    most MAX_HEADER_BYTES, no GNU sparse maps (whose extension blocks tarfile reads until a flag
    says stop)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise ShardFormatError(f"tar member {self.name!r} is a GNU sparse file")
        if self.type in _EXTENDED_HEADERS and self.size > MAX_HEADER_BYTES:
            raise ShardFormatError(
                f"a tar header of {self.size} bytes, over the {MAX_HEADER_BYTES} a shard may use"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc]

    def _refuse_pax_sparse(self, *_args: Any) -> None:
        """GNU sparse maps in pax records (versions 0.0, 0.1, 1.0): version 1.0's is read from the
        member's data until its count is met, however large, and a short one raises ValueError."""
        raise ShardFormatError("a tar member is a GNU sparse file (pax GNU.sparse records)")

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_pax_sparse


class _HashingReader:
    """The raw file under the tar parser: everything read is hashed and counted."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.digest, self.size = file, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.file.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data


class ShardFile:
    """One pass over a shard: its samples' raw members, and its checksum.

    `with ShardFile(path, entry) as shard:` opens a shard in a folder (a regular file: anything
    else is a `ShardFormatError`) or at a URL, through `genrep.remote.open_file`, whose size must
    be the manifest `entry`'s (or `size`, without an entry); `shard.samples()` yields each
    sample's members as `{"__key__": KEY, FIELD: bytes}`, and `shard.checksum_matches()` reads
    what the parser left (the tar's padding, or the samples after the last one used) and says
    whether the sha256 of the whole file is the entry's. Every problem is a `ShardFormatError`.
    """

    def __init__(
        self, path: Location, entry: Mapping[str, Any] | None = None, size: int | None = None
    ) -> None:
        self.path, self.entry = path, entry
        self.size = entry["bytes"] if entry is not None else size

    def __enter__(self) -> ShardFile:
        try:
            self._file = open_file(self.path, self.size, "the shard")
        except FileNotFoundError:
            raise ShardFormatError("missing") from None
        except DataError as err:  # not a regular file, or not the manifest's size
            raise ShardFormatError(str(err)) from None
        except OSError as err:
            raise ShardFormatError(f"unreadable ({err.strerror or err})") from None
        self._reader = _HashingReader(self._file)
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def samples(self) -> Iterator[dict[str, Any]]:
        """The raw samples in order: consecutive members sharing a key (webdataset's grouping)."""
        sample: dict[str, Any] = {}
        try:
            head = cast(io.BufferedReader, self._file).peek(8)  # open_file's files buffer
            kind = next(
                (k for magic, k in COMPRESSED_MAGIC.items() if head.startswith(magic)), None
            )
            if kind:
                raise ShardFormatError(f"a {kind}-compressed file; shards are uncompressed tar")
            # "r|": a plain tar stream; tarfile's "r|*" would inflate a compressed one.
            reader = cast(BinaryIO, self._reader)
            with tarfile.open(fileobj=reader, mode="r|", tarinfo=_BoundedTarInfo) as tar:
                for info in tar:
                    tar.members = []  # type: ignore[attr-defined]  # stream mode keeps every header
                    match = _FIELD_RE.match(info.name)
                    if not info.isreg() or match is None:
                        continue
                    key, name = match.groups()
                    if info.size > MAX_MEMBER_BYTES:
                        raise ShardFormatError(
                            f"member {info.name} has {info.size} bytes, over the "
                            f"{MAX_MEMBER_BYTES} a shard member may have"
                        )
                    if sample and key != sample["__key__"]:
                        yield sample
                        sample = {}
                    sample.setdefault("__key__", key)
                    if name in sample:
                        raise ShardFormatError(f"sample {key} holds {name} twice")
                    member = tar.extractfile(info)
                    assert member is not None  # a regular file's data
                    sample[name] = member.read()
        except (tarfile.TarError, EOFError) as err:
            raise ShardFormatError(f"not a readable tar ({err})") from None
        except DataError as err:  # the file is longer or shorter than its manifest says
            raise ShardFormatError(str(err)) from None
        except OSError as err:
            raise ShardFormatError(f"unreadable ({err.strerror or err})") from None
        if sample:
            yield sample

    def checksum_matches(self) -> bool:
        """Whether the whole file's sha256 is the manifest entry's (reads what is left)."""
        try:
            while self._reader.read(1 << 20):
                pass
        except DataError as err:
            raise ShardFormatError(str(err)) from None
        except OSError as err:
            raise ShardFormatError(f"unreadable ({err.strerror or err})") from None
        assert self.entry is not None, "a checksum needs the manifest entry"
        return self._reader.digest.hexdigest() == self.entry["sha256"]

    def check(self) -> None:
        """`checksum_matches`, or a `ShardFormatError`."""
        if not self.checksum_matches():
            raise ShardFormatError("sha256 differs from the manifest")


def iter_raw_samples(path: Location, size: int | None = None) -> Iterator[dict[str, Any]]:
    """The raw samples of one shard (a file or a URL; of `size` bytes when given, its manifest
    size), in order, without decoding (and without a checksum)."""
    with ShardFile(path, size=size) as shard:
        yield from shard.samples()


def shard_paths(folder: str | Path) -> list[Path]:
    """The complete shards of a dataset folder in order (from its file names, never a glob hang)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if SHARD_RE.match(p.name))
