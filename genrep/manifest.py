"""The dataset folder: its manifest (what generated the dataset and the checksum of every shard),
how the manifest is created and updated, and the files beside it.

`manifest.json` is rewritten atomically, under the folder's lock, as shards complete; it says
`"complete": true` once every shard of the dataset is there, and then the folder also gets the
resolved `config.yaml` and a dataset card `README.md`. Readers use the manifest to list shards and
to refuse formats they do not know. The format is specified for people in shards/README.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from genrep import remote
from genrep.card import DatasetLicense, write_card
from genrep.config import save_config, to_plain
from genrep.errors import ManifestError, OutputError
from genrep.io import atomic_write_bytes, locked, sha256_file
from genrep.remote import Location
from genrep.shards import FORMAT_NAME, FORMAT_VERSION, READABLE_VERSIONS, SHARD_RE, shard_name

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
LOCK = ".manifest.lock"


def manifest_path(folder: str | Path) -> Path:
    return Path(folder) / MANIFEST


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of `folder`, None if it has none; refuses unknown formats and versions."""
    path = manifest_path(folder)
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ManifestError(
            f"{path} is not readable ({err}); restore it from the dataset's source"
        ) from None
    return parse_manifest(data, str(path))


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """The manifest in `data` (read from `where`, a path or URL); refuses unknown formats and
    versions."""
    try:
        manifest = json.loads(data)
    except ValueError as err:
        raise ManifestError(
            f"{where} is not readable JSON ({err}); restore it from the dataset's source"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ManifestError(f"{where} is not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise ManifestError(
            f"{where} has format version {version}; this genrep reads versions {readable}: "
            "install the genrep release that matches the dataset"
        )
    return manifest


def find_dataset(folder: str | Path) -> Path:
    """The dataset folder meant by `folder`: itself, or its only subfolder holding a dataset.

    `genrep-generate` writes each dataset into its own subfolder of `shards/`, so `genrep-train
    shards/` works while one dataset is there and asks which one once there are several.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"{folder} is not a folder; pass a folder made by genrep-generate")
    if manifest_path(folder).exists():
        return folder
    found = sorted(p for p in folder.iterdir() if p.is_dir() and manifest_path(p).exists())
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(str(p) for p in found)
        raise ManifestError(f"{folder} holds {len(found)} datasets ({names}); pass one of them")
    raise ManifestError(f"{folder} has no {MANIFEST}; pass a folder made by genrep-generate")


def dataset_at(location: Location) -> tuple[Location, dict[str, Any]]:
    """The dataset meant by `location` and its manifest: a folder as `find_dataset` takes it, or
    the URL (or pipe: command) of a dataset folder, whose manifest is fetched first, at most
    `remote.MAX_MANIFEST_BYTES`, and whose shard entries must bear the format's shard names."""
    if not remote.is_remote(location):
        folder = find_dataset(location)
        manifest = read_manifest(folder)
        assert manifest is not None  # find_dataset found it
        return folder, manifest
    url = remote.join(str(location), MANIFEST)
    try:
        data = remote.read_capped(url, remote.MAX_MANIFEST_BYTES, "manifest")
    except FileNotFoundError:
        raise ManifestError(
            f"{url} is not there; pass the URL of a dataset folder (where its {MANIFEST} is)"
        ) from None
    manifest = parse_manifest(data, url)
    shards = manifest.get("shards")
    names = [e.get("name") if isinstance(e, dict) else None for e in shards or []]
    if not isinstance(shards, list) or not all(
        isinstance(name, str) and SHARD_RE.fullmatch(name) for name in names
    ):
        raise ManifestError(f"{url} lists shards that are not named shard-NNNNNN.tar")
    return str(location), manifest


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
    data = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
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


def shard_entry(manifest: dict[str, Any], k: int, path: Path) -> dict[str, Any]:
    """The manifest entry of complete shard `k` of a generated dataset (indices k*S, k*S+1, ...)."""
    return {
        "name": path.name,
        "samples": shard_samples(manifest, k),
        "first_index": k * manifest["shard_size"],
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


#: (manifest, shard number, path of the complete shard) -> its manifest entry
EntryFunction = Callable[[dict[str, Any], int, Path], dict[str, Any]]


def update_manifest(
    folder: str | Path, base: dict[str, Any], entry: EntryFunction = shard_entry
) -> dict[str, Any]:
    """Record every complete shard in `folder` in its manifest, which starts as `base` if the
    folder has none; on completion write the config and the dataset card too. Runs under the
    folder lock, so processes sharing the work keep one consistent manifest."""
    folder = Path(folder)
    with dataset_lock(folder):
        manifest = read_manifest(folder)
        if manifest is None:
            manifest = base
        else:
            check_identity(folder, manifest, base["identity"])
            # the card states the license of the latest command (rerun to correct it)
            manifest["license"] = base["license"]
        known = {item["name"]: item for item in manifest["shards"]}
        entries = []
        for k in range(manifest["num_shards"]):
            path = folder / shard_name(k)
            if not path.exists():
                continue
            item = known.get(path.name)
            if item is None or item["bytes"] != path.stat().st_size:
                item = entry(manifest, k, path)
            entries.append(item)
        manifest["shards"] = entries
        manifest["complete"] = len(entries) == manifest["num_shards"]
        write_manifest(folder, manifest)
        if manifest["complete"]:
            save_config(folder / CONFIG, manifest["config"])
            write_card(folder, manifest)
        return manifest
