"""The dataset folder: its manifest (what generated the dataset and the checksum of every shard),
how the manifest is created and updated, and the files beside it.

`manifest.json` is rewritten atomically, under the folder's lock, as shards complete
(`DatasetWriter`); it says `"complete": true` once every shard of the dataset is there, and then the
folder also gets the resolved `config.yaml` and a dataset card `README.md`. Readers use the
manifest to list shards and to refuse formats they do not know; a manifest is untrusted input, so
it is read only up to `MAX_MANIFEST_BYTES` and checked against the schema before anything uses it.
The format is specified for people in shards/README.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from genrep import remote
from genrep.card import CARD, DatasetLicense, write_card
from genrep.config import save_config, to_plain
from genrep.errors import DataError, ManifestError, NotADatasetError, OutputError
from genrep.images import MAX_IMAGE_PIXELS
from genrep.io import (
    TMP_SUFFIX,
    StagedFile,
    atomic_write_bytes,
    locked,
    remove_stale_tmp,
    sha256_file,
)
from genrep.remote import Location
from genrep.shards import (
    FORMAT_NAME,
    FORMAT_VERSION,
    FRAMES,
    IMAGE_FORMATS,
    MAX_CLASSES,
    MAX_FILE_BYTES,
    MAX_NEIGHBORS,
    MAX_SHARD_SIZE,
    MAX_SHARDS,
    MAX_Z_DIM,
    READABLE_VERSIONS,
    SHARD_RE,
    refuse_json_constant,
    shard_name,
    shard_number,
)

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
LOCK = ".manifest.lock"
#: largest manifest.json a reader reads (shards/README.md, "Limits")
MAX_MANIFEST_BYTES = 64 << 20
#: seconds between manifest rewrites while a process writes shards (and once at its end): a
#: manifest is rewritten whole, so rewriting it per shard would cost a run O(shards^2)
FLUSH_SECONDS = 10.0
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
RESTORE = "restore it from the dataset's source"


def manifest_path(folder: str | Path) -> Path:
    return Path(folder) / MANIFEST


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of a local dataset `folder`, None if it has none (`parse_manifest`)."""
    path = manifest_path(folder)
    if not os.path.lexists(path):
        return None
    return parse_manifest(manifest_bytes(path), str(path))


def manifest_bytes(location: Location) -> bytes:
    """The bytes of the manifest file at `location` (a path or a URL), at most
    `MAX_MANIFEST_BYTES`; a file that is not a regular file is refused unread. The one reader of
    manifests: FileNotFoundError when it is not there."""
    try:
        return remote.read_capped(location, MAX_MANIFEST_BYTES, "manifest")
    except FileNotFoundError:
        raise
    except DataError as err:  # larger than a manifest may be, or not a regular file
        raise ManifestError(f"{err}; {RESTORE}") from None
    except OSError as err:
        raise ManifestError(
            f"{location} is not readable ({err.strerror or err}); {RESTORE}"
        ) from None


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """The manifest in `data` (read from `where`, a path or URL): strict JSON (no NaN or
    Infinity), refusing unknown formats and versions and anything that does not follow the schema
    (a `ManifestError` naming what is wrong)."""
    try:
        manifest = json.loads(data, parse_constant=refuse_json_constant)
    except (ValueError, RecursionError) as err:
        raise ManifestError(
            f"{where} is not readable JSON ({type(err).__name__}: {str(err)[:200]}); {RESTORE}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ManifestError(f"{where} is not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise ManifestError(
            f"{where} has format version {version}; this genrep reads versions {readable}: "
            "install the genrep release that matches the dataset"
        )
    problem = manifest_problem(manifest)
    if problem:
        raise ManifestError(f"{where} is damaged: {problem}; {RESTORE}")
    return manifest


def _is_int(value: Any, at_least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= at_least


def _positive(value: Any) -> bool:
    return _is_int(value, 1)


def _count(value: Any) -> bool:
    return _is_int(value, 0)


def _mapping_problem(
    mapping: Any, where: str, fields: Mapping[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """`mapping` as a dict and the first of its `fields` (name -> predicate) that fails, if any."""
    if not isinstance(mapping, dict):
        return {}, f"{where} is not an object"
    for name, valid in fields.items():
        if name not in mapping:
            return mapping, f"{where} has no {name!r}"
        if not valid(mapping[name]):
            return mapping, f"{where}.{name} is {str(mapping[name])[:80]!r}"
    return mapping, None


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What keeps a manifest of a readable version from following the schema of shards/README.md
    (the fields readers use, with their types and ranges, and every shard entry), or None."""
    top, problem = _mapping_problem(
        manifest,
        "the manifest",
        {
            "generator": lambda v: isinstance(v, dict),
            "view": lambda v: isinstance(v, dict),
            "n": lambda v: _positive(v) and v <= MAX_SHARDS * MAX_SHARD_SIZE,
            "neighbors": lambda v: _count(v) and v <= MAX_NEIGHBORS,
            "seed": lambda v: _is_int(v, -(2**63)),
            "truncation": lambda v: (
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)
            ),
            "classes": lambda v: (
                v is None or (isinstance(v, list) and bool(v) and all(_count(c) for c in v))
            ),
            "image": lambda v: isinstance(v, dict),
            "shard_size": lambda v: _positive(v) and v <= MAX_SHARD_SIZE,
            "num_shards": lambda v: _positive(v) and v <= MAX_SHARDS,
            "shards": lambda v: isinstance(v, list),
            "complete": lambda v: isinstance(v, bool),
            "identity": lambda v: isinstance(v, dict),
            "config": lambda v: isinstance(v, dict),
        },
    )
    if problem:
        return problem
    _, problem = _mapping_problem(
        top["generator"],
        "generator",
        {
            "name": lambda v: isinstance(v, str),
            "z_dim": lambda v: _positive(v) and v <= MAX_Z_DIM,
            "num_classes": lambda v: _count(v) and v <= MAX_CLASSES,
            "resolution": _positive,
            "weights_sha256": lambda v: isinstance(v, str),
        },
    )
    problem = (
        problem
        or _mapping_problem(
            top["view"],
            "view",
            {"name": lambda v: isinstance(v, str), "params": lambda v: isinstance(v, dict)},
        )[1]
    )
    problem = problem or _image_problem(top)
    if problem:
        return problem
    if top["num_shards"] != math.ceil(top["n"] / top["shard_size"]):
        return f"num_shards {top['num_shards']} does not fit n and shard_size"
    return _shards_problem(top)


def _image_problem(manifest: dict[str, Any]) -> str | None:
    if manifest["format_version"] == 1:
        fields = {"size": _positive, "resize": lambda v: v in FRAMES[1:]}
    else:
        fields = {name: _positive for name in ("width", "height", "native_width", "native_height")}
        fields["frame"] = lambda v: v in FRAMES
    fields["format"] = lambda v: v in IMAGE_FORMATS
    fields["quality"] = _count
    image, problem = _mapping_problem(manifest["image"], "image", fields)
    if problem:
        return problem
    pixels = image["size"] ** 2 if "size" in image else image["width"] * image["height"]
    if pixels > MAX_IMAGE_PIXELS:
        return f"images of {pixels} pixels, over the {MAX_IMAGE_PIXELS} a reader decodes"
    return None


def _shards_problem(manifest: dict[str, Any]) -> str | None:
    """A problem with the shard entries: each names a shard of the dataset (shard-NNNNNN.tar, no
    path), once, in order, with its sample count, first index (the key of its first sample), size
    and sha256."""
    previous = -1
    for entry in manifest["shards"]:
        entry, problem = _mapping_problem(
            entry,
            "a shard entry",
            {
                "name": lambda v: isinstance(v, str) and SHARD_RE.match(v) is not None,
                "samples": _positive,
                "first_index": lambda v: _count(v) and v < MAX_SHARDS * MAX_SHARD_SIZE,
                "bytes": lambda v: _count(v) and v <= MAX_FILE_BYTES,
                "sha256": lambda v: isinstance(v, str) and _SHA256_RE.match(v) is not None,
            },
        )
        if problem:
            return problem
        k = shard_number(entry["name"])
        if entry["name"] != shard_name(k) or not previous < k < manifest["num_shards"]:
            return f"shard entry {entry['name']!r} is not a shard of this dataset, in order"
        first = k * manifest["shard_size"]
        # a reshaped dataset (it has a parent) keeps its parent's keys, which skip numbers
        first_fits = (
            entry["first_index"] >= first
            if "parent" in manifest
            else (entry["first_index"] == first)
        )
        if entry["samples"] != shard_samples(manifest, k) or not first_fits:
            return f"shard entry {entry['name']!r} does not fit n and shard_size"
        previous = k
    if manifest["complete"] != (len(manifest["shards"]) == manifest["num_shards"]):
        return "'complete' does not match the shards listed"
    return None


def find_dataset(folder: str | Path) -> Path:
    """The dataset folder meant by `folder`: itself, or its only subfolder holding a dataset.

    `genrep-generate` writes each dataset into its own subfolder of `shards/`, so `genrep-train
    shards/` works while one dataset is there and asks which one once there are several.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADatasetError(f"{folder} is not a folder; pass a folder made by genrep-generate")
    if manifest_path(folder).exists():
        return folder
    found = sorted(p for p in folder.iterdir() if p.is_dir() and manifest_path(p).exists())
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(str(p) for p in found)
        raise NotADatasetError(f"{folder} holds {len(found)} datasets ({names}); pass one of them")
    raise NotADatasetError(f"{folder} has no {MANIFEST}; pass a folder made by genrep-generate")


def dataset_at(location: Location) -> tuple[Location, dict[str, Any]]:
    """The dataset meant by `location` and its manifest: a folder as `find_dataset` takes it, or
    the URL (or pipe: command) of a dataset folder, whose manifest is fetched first. Either way
    the manifest is read by `manifest_bytes` and checked by `parse_manifest` (its limits, its
    schema, shard entries named only as the format's shards)."""
    if not remote.is_remote(location):
        folder = find_dataset(location)
        manifest = read_manifest(folder)
        assert manifest is not None  # find_dataset found it
        return folder, manifest
    url = remote.join(str(location), MANIFEST)
    try:
        data = manifest_bytes(url)
    except FileNotFoundError:
        raise NotADatasetError(
            f"{url} is not there; pass the URL of a dataset folder (where its {MANIFEST} is)"
        ) from None
    return str(location), parse_manifest(data, url)


def load_dataset(
    folder: Location, require_complete: bool = True
) -> tuple[dict[str, Any], list[Location]]:
    """Manifest and shard locations of a dataset (folder or URL), checking the shards it lists
    are present (in a folder; at a URL a missing shard is an error when it is read)."""
    folder, manifest = dataset_at(folder)
    if require_complete and not manifest.get("complete"):
        raise ManifestError(
            f"{folder} is an unfinished dataset; rerun its genrep-generate command to complete it"
        )
    paths = [remote.locate(folder, entry["name"]) for entry in manifest["shards"]]
    missing = [] if remote.is_remote(folder) else [p for p in paths if not Path(p).exists()]
    if missing:
        names = ", ".join(Path(p).name for p in missing[:5])
        raise ManifestError(f"{folder} lacks shards listed in its manifest: {names}")
    return manifest, paths


def content_hash(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's shard checksums: identifies a dataset's content."""
    digest = hashlib.sha256()
    for entry in manifest.get("shards", []):
        digest.update(f"{entry['name']}:{entry['sha256']}\n".encode())
    return digest.hexdigest()


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(manifest_path(folder), data.encode())


@contextmanager
def dataset_lock(folder: str | Path) -> Iterator[None]:
    """Exclusive lock on a dataset folder, so processes sharing the work update one manifest."""
    with locked(Path(folder) / LOCK):
        yield


def check_identity(folder: str | Path, manifest: dict[str, Any], identity: dict[str, Any]) -> None:
    """Refuse to add to a dataset made with another configuration (`identity`: everything that
    decides the dataset's bytes)."""
    if manifest.get("format_version") != FORMAT_VERSION:
        raise OutputError(
            f"{folder} holds a dataset of format version {manifest.get('format_version')}; this "
            f"genrep writes version {FORMAT_VERSION}: finish it with the genrep release that "
            "started it, or pass another --out"
        )
    held = manifest.get("identity")
    if held != identity:
        held = held if isinstance(held, dict) else {}
        differing = sorted(key for key in {*held, *identity} if held.get(key) != identity.get(key))
        hint = ""
        if differing == ["n"]:
            hint = f" (genrep-shards subset {folder} --n N --out OUT takes its first N anchors)"
        raise OutputError(
            f"{folder} holds a dataset made with a different config (differs in: "
            f"{', '.join(differing)}); pass another --out or rerun with that dataset's config{hint}"
        )


def new_manifest(
    *,
    generator: dict[str, Any],
    view: dict[str, Any],
    seed: int,
    n: int,
    neighbors: int,
    classes: list[int] | None,
    truncation: float | None,
    image: dict[str, Any],
    shard_size: int,
    identity: dict[str, Any],
    config: dict[str, Any],
    license: dict[str, Any] | None = None,
    parent: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a dataset with no shards yet (the schema of shards/README.md)."""
    return to_plain(
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "generator": generator,
            "view": view,
            "seed": seed,
            "n": n,
            "neighbors": neighbors,
            "classes": classes,
            "truncation": truncation,
            "image": image,
            "shard_size": shard_size,
            "num_shards": math.ceil(n / shard_size),
            "identity": identity,
            "config": config,
            "shards": [],
            "complete": False,
            "license": license or DatasetLicense().to_dict(),
            **({"parent": parent} if parent is not None else {}),
        }
    )


def shard_samples(manifest: dict[str, Any], k: int) -> int:
    """Anchors in shard `k` of a dataset (the last shard may hold fewer)."""
    return min(manifest["shard_size"], manifest["n"] - k * manifest["shard_size"])


def _is_own_leftover(name: str) -> bool:
    """The lock file, or a hidden temporary file of a genrep writer (`genrep.io.tmp_path_for`)."""
    return name == LOCK or (name.startswith(".") and name.endswith(TMP_SUFFIX))


def check_writable(folder: str | Path) -> None:
    """Refuse (`OutputError`) an output folder that is not genrep-generate's to write: a file, or
    a folder holding anything but a genrep dataset or the leftovers of a run that started one."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--out {folder} is a file; pass a folder")
    if not folder.is_dir() or os.path.lexists(manifest_path(folder)):
        return
    with os.scandir(folder) as entries:
        foreign = sorted(entry.name for entry in entries if not _is_own_leftover(entry.name))
    if foreign:
        what = "shards" if any(SHARD_RE.match(name) for name in foreign) else "files"
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise OutputError(
            f"{folder} holds {what} but no manifest ({shown}): it is not a genrep dataset; "
            "pass another --out or empty that folder"
        )


class DatasetWriter:
    """How a process adds shards to a dataset folder, so that any number of processes (--shards
    ranges, torchrun ranks, machines sharing a filesystem) keep it consistent.

    Under the folder's lock: the identity check of the manifest, the rename that makes a shard
    visible (a shard another process made first is kept, and this process's copy dropped), and the
    manifest entries. A shard is recorded with the sha256 computed while it was written; one found
    without an entry (its writer died before recording it) is hashed once by the next `open`. The
    manifest is rewritten at most every `FLUSH_SECONDS` and at `close`, and `open` scans the folder
    once, so a run's overhead does not grow with the shards already there.
    """

    def __init__(
        self,
        folder: str | Path,
        base: dict[str, Any],
        first_index: Callable[[int, Path], int] | None = None,
    ) -> None:
        """`first_index(k, path)`: the key of the first sample of shard `k` (default k * shard
        size: a generated dataset; a reshaped one reads it from the shard)."""
        self.folder, self.base = Path(folder), base
        self.first_index = first_index or (lambda k, path: k * base["shard_size"])
        self.pending: dict[str, dict[str, Any]] = {}
        self.flushed = time.monotonic()

    def open(self) -> set[str]:
        """Check the folder is this dataset's (or new), create its manifest, record the shards
        that lack an entry; returns the names of the shards present."""
        check_writable(self.folder)  # before anything is created in it
        self.folder.mkdir(parents=True, exist_ok=True)
        with dataset_lock(self.folder):
            manifest = self._current()
            present = self._present(manifest["num_shards"])
            known = {e["name"]: e for e in manifest["shards"] if e["name"] in present}
            for name in sorted(present - known.keys()):
                path = self.folder / name
                known[name] = self._entry(name, sha256_file(path), path.stat().st_size)
            # the card states the license of the latest command (rerun to correct it)
            relicensed = manifest.get("license") != self.base["license"]
            manifest["license"] = self.base["license"]
            self._write(manifest, known, rewrite=relicensed)
        remove_stale_tmp(self.folder)
        return present

    def commit(self, k: int, staged: StagedFile) -> None:
        """Make shard `k`, written to `staged`, visible and record it (unless it is there already)."""
        name = shard_name(k)
        with dataset_lock(self.folder):
            if not os.path.lexists(self.folder / name):
                staged.commit()
                self.pending[name] = self._entry(name, staged.sha256, staged.size)
            if time.monotonic() - self.flushed >= FLUSH_SECONDS:
                self._flush()

    def close(self) -> dict[str, Any]:
        """Record what is pending; returns the manifest."""
        with dataset_lock(self.folder):
            return self._flush()

    def _current(self) -> dict[str, Any]:
        """The folder's manifest, checked to be this dataset's; `base` for a new dataset."""
        manifest = read_manifest(self.folder)
        if manifest is None:
            check_writable(self.folder)  # again, under the lock
            return copy.deepcopy(self.base)
        check_identity(self.folder, manifest, self.base["identity"])
        return manifest

    def _present(self, num_shards: int) -> set[str]:
        with os.scandir(self.folder) as entries:
            names = {entry.name for entry in entries}
        return {
            name
            for name in names
            if (m := SHARD_RE.match(name)) and int(m.group(1)) < num_shards
            if name == shard_name(int(m.group(1)))
        }

    def _entry(self, name: str, sha256: str, size: int) -> dict[str, Any]:
        k = shard_number(name)
        return {
            "name": name,
            "samples": shard_samples(self.base, k),
            "first_index": self.first_index(k, self.folder / name),
            "bytes": size,
            "sha256": sha256,
        }

    def _flush(self) -> dict[str, Any]:
        manifest = self._current()
        known = {entry["name"]: entry for entry in manifest["shards"]}
        self._write(manifest, {**known, **self.pending})
        self.pending.clear()
        self.flushed = time.monotonic()
        return manifest

    def _write(
        self, manifest: dict[str, Any], entries: dict[str, dict[str, Any]], rewrite: bool = False
    ) -> None:
        """Write `manifest` with `entries` if that changes it (or to `rewrite` it); a complete
        dataset also gets its config and card, unless they are there (a card someone edited is
        never replaced, unless the command states another license: `rewrite`)."""
        shards = [entries[name] for name in sorted(entries)]
        complete = len(shards) == manifest["num_shards"]
        if (
            rewrite
            or shards != manifest["shards"]
            or complete != manifest["complete"]
            or not os.path.lexists(manifest_path(self.folder))
        ):
            manifest.update(shards=shards, complete=complete)
            write_manifest(self.folder, manifest)
        if complete:
            if not os.path.lexists(self.folder / CONFIG):
                save_config(self.folder / CONFIG, manifest["config"])
            if rewrite or not os.path.lexists(self.folder / CARD):
                write_card(self.folder, manifest)
