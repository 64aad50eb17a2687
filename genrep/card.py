"""The dataset card (`README.md`) of a complete dataset folder, written from its manifest.

Its YAML front matter follows the dataset-hub conventions (license, task, size category, a
`configs` entry pointing at the shards), so a dataset folder can be pushed to a hub as it is.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from genrep.io import atomic_write_bytes
from genrep.shards import FORMAT_NAME, stored_frame

CARD = "README.md"

_SIZE_CATEGORIES = [
    (1e3, "n<1K"),
    (1e4, "1K<n<10K"),
    (1e5, "10K<n<100K"),
    (1e6, "100K<n<1M"),
    (1e7, "1M<n<10M"),
    (math.inf, "n>10M"),
]


def size_category(n: int) -> str:
    """The hub's size category of a dataset of `n` samples."""
    return next(label for bound, label in _SIZE_CATEGORIES if n < bound)


def card_text(name: str, manifest: dict[str, Any]) -> str:
    """The card of the dataset `name` described by `manifest`."""
    g, image, view = manifest["generator"], manifest["image"], manifest["view"]
    frame = stored_frame(manifest)
    n, neighbors = manifest["n"], manifest["neighbors"]
    classes = manifest["classes"]
    return f"""---
license: other
task_categories:
- image-feature-extraction
tags:
- genrep
- synthetic
- multiview
size_categories:
- {size_category(n)}
configs:
- config_name: default
  data_files:
  - split: train
    path: "shard-*.tar"
---

# {name}

A multiview dataset made by genrep (format {FORMAT_NAME} v{manifest["format_version"]}): {n} anchor
images from the generator `{g["name"]}` and {neighbors} neighbor view(s) per anchor made with the
latent view `{view["name"]}` ({n * (1 + neighbors)} images of {frame.describe()},
{image["format"]}), in {manifest["num_shards"]} webdataset shards.

- generator weights sha256: `{g["weights_sha256"]}`
- view parameters: `{view["params"]}`
- seed: {manifest["seed"]}; anchor truncation: {manifest["truncation"]}
- classes: {"unconditional" if classes is None else f"{len(classes)} classes"}

`manifest.json` lists every shard with its sha256 (`genrep-shards verify` checks them) and the exact
configuration (`config.yaml`) that regenerates the dataset byte for byte. The license of the images
follows the license of the generator's weights.
"""


def write_card(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Write the card of the dataset in `folder`."""
    folder = Path(folder)
    atomic_write_bytes(folder / CARD, card_text(folder.name, manifest).encode())
