"""The manifest of a shard folder: what generated the dataset and the checksum of every shard.

`manifest.json` is rewritten atomically as shards complete; it says `"complete": true` once every
shard of the dataset is there. Readers use it to list shards and to refuse formats they do not know.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genrep.io import atomic_write_bytes
from genrep.shards import FORMAT_NAME, FORMAT_VERSION

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
CARD = "README.md"


class ManifestError(ValueError):
    """A folder that is not a readable genrep dataset."""


def manifest_path(folder: str | Path) -> Path:
    return Path(folder) / MANIFEST


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of `folder`, None if it has none; refuses unknown formats and versions."""
    path = manifest_path(folder)
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ManifestError(
            f"{path} is not readable JSON ({err}); restore it from the dataset's source"
        ) from None
    if manifest.get("format") != FORMAT_NAME:
        raise ManifestError(f"{path} is not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{path} has format version {version}; this genrep reads version {FORMAT_VERSION}: "
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


def load_dataset(
    folder: str | Path, require_complete: bool = True
) -> tuple[dict[str, Any], list[Path]]:
    """Manifest and shard paths of a dataset folder, checking the shards it lists are present."""
    folder = find_dataset(folder)
    manifest = read_manifest(folder)
    if require_complete and not manifest.get("complete"):
        raise ManifestError(
            f"{folder} is an unfinished dataset; rerun its genrep-generate command to complete it"
        )
    paths = [folder / entry["name"] for entry in manifest["shards"]]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise ManifestError(
            f"{folder} lacks shards listed in its manifest: {', '.join(missing[:5])}"
        )
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


@contextlib.contextmanager
def locked(folder: str | Path) -> Iterator[None]:
    """Exclusive lock on a dataset folder, so processes sharing the work update one manifest."""
    with open(Path(folder) / ".manifest.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
