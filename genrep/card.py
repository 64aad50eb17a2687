"""The dataset card (`README.md`) of a complete dataset folder, written from its manifest.

Its YAML front matter is the dataset-hub metadata (the Hugging Face dataset card fields: license,
task, size category, a `configs` entry pointing at the shards, `dataset_info` with the sample
count), so a dataset folder can be pushed to a hub as it is and other tools can read how big it
is; the body says how to load it (genrep, webdataset, Hugging Face `datasets`), what made it
(generator, view, seed, weight and content hashes) and how to cite the method.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from genrep.errors import UsageError
from genrep.io import atomic_write_bytes
from genrep.shards import FORMAT_NAME, stored_frame

CARD = "README.md"

#: the hub's size categories (number of examples), upper bounds exclusive
_SIZE_CATEGORIES = [
    (1e3, "n<1K"),
    (1e4, "1K<n<10K"),
    (1e5, "10K<n<100K"),
    (1e6, "100K<n<1M"),
    (1e7, "1M<n<10M"),
    (1e8, "10M<n<100M"),
    (1e9, "100M<n<1B"),
    (1e10, "1B<n<10B"),
    (1e11, "10B<n<100B"),
    (1e12, "100B<n<1T"),
    (math.inf, "n>1T"),
]

#: a hub license id or license name: lower case letters, digits, `.`, `-` (e.g. `apache-2.0`)
LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
#: `license_name` of a card whose license is the generator's, which genrep does not know
SEE_GENERATOR = "see-generator"

CITATION = """\
@inproceedings{jahanian2022generative,
  title     = {Generative Models as a Data Source for Multiview Representation Learning},
  author    = {Jahanian, Ali and Puig, Xavier and Tian, Yonglong and Isola, Phillip},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022}
}"""


@dataclass(frozen=True)
class DatasetLicense:
    """The license of a dataset: its images follow the license of the generator's weights, which
    is not genrep's to choose. `license` is a hub license id
    (https://huggingface.co/docs/hub/repositories-licenses); `other` comes with a `name` (an id of
    your own) and a `link` (a URL, or a file of the dataset's repository such as `LICENSE`)."""

    license: str = "other"
    name: str | None = SEE_GENERATOR
    link: str | None = None

    @classmethod
    def from_options(
        cls, default: DatasetLicense, license: str | None, name: str | None, link: str | None
    ) -> DatasetLicense:
        """`--license/--license-name/--license-link` over a generator's `default`: a license id
        alone replaces the default; a name or link without one means `other`."""
        for flag, value in (("--license", license), ("--license-name", name)):
            if value is not None and not LICENSE_ID.match(value):
                raise UsageError(
                    f"{flag} {value!r}: use a hub license id in lower case (letters, digits, '.', "
                    "'-'), e.g. apache-2.0, cc-by-nc-4.0, or other with --license-name"
                )
        if license is None and name is None and link is None:
            return default
        if license is None or license == "other":
            base = default if default.license == "other" else cls()
            return cls("other", name or base.name, link or base.link)
        return cls(license, name, link)

    def card_fields(self) -> dict[str, str]:
        """The front-matter fields: `license`, and for `other` its name and link (the card's own
        license section when no link is known)."""
        fields = {"license": self.license}
        if self.license == "other" or self.name:
            fields["license_name"] = self.name or SEE_GENERATOR
        if self.license == "other" or self.link:
            fields["license_link"] = self.link or CARD
        return fields

    def to_dict(self) -> dict[str, str | None]:
        return {"license": self.license, "name": self.name, "link": self.link}

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> DatasetLicense:
        """The license a manifest records (datasets written before genrep recorded one: `other`)."""
        held = manifest.get("license")
        if not isinstance(held, dict) or not isinstance(held.get("license"), str):
            return cls()
        return cls(held["license"], held.get("name"), held.get("link"))


def size_category(n: int) -> str:
    """The hub's size category of a dataset of `n` samples."""
    return next(label for bound, label in _SIZE_CATEGORIES if n < bound)


def front_matter(manifest: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML metadata (the hub's dataset card fields)."""
    g, view = manifest["generator"], manifest["view"]
    samples = sum(int(entry["samples"]) for entry in manifest["shards"])
    # Hugging Face `datasets` counts a split's bytes in its own Arrow tables; the images stay
    # encoded there, so the shards' size is the honest figure genrep has for all three.
    size = sum(int(entry["bytes"]) for entry in manifest["shards"])
    tags = ["genrep", "synthetic", "multiview", "webdataset", "image", g["name"], view["name"]]
    tasks = ["image-feature-extraction"] + (["image-classification"] if manifest["classes"] else [])
    return {
        **DatasetLicense.from_manifest(manifest).card_fields(),
        "pretty_name": f"genrep {g['name']} {view['name']} views",
        "task_categories": tasks,
        "tags": list(dict.fromkeys(tags)),
        "annotations_creators": ["machine-generated"],
        "size_categories": [size_category(samples)],
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": "shard-*.tar"}]}
        ],
        "dataset_info": {
            "config_name": "default",
            "splits": [{"name": "train", "num_bytes": size, "num_examples": samples}],
            "download_size": size,
            "dataset_size": size,
        },
    }


def read_front_matter(text: str) -> dict[str, Any]:
    """The YAML metadata of a card (between the leading `---` lines), {} when it has none."""
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    return (yaml.safe_load(match.group(1)) or {}) if match else {}


def _members(manifest: dict[str, Any]) -> list[str]:
    """The member names of one sample (after its key)."""
    ext = manifest["image"]["format"]
    names = [f"anchor.{ext}", *(f"neighbor_{j}.{ext}" for j in range(manifest["neighbors"]))]
    names += ["latent.npy"] + (["neighbor_latent.npy"] if manifest["neighbors"] else [])
    return names + (["cls"] if manifest["classes"] else []) + ["json"]


def _loading(manifest: dict[str, Any]) -> str:
    """How to read the dataset with genrep, webdataset and Hugging Face `datasets`."""
    ext = manifest["image"]["format"]
    views = [f"anchor.{ext}"] + ([f"neighbor_0.{ext}"] if manifest["neighbors"] else [])
    last = max(len(manifest["shards"]) - 1, 0)
    brace = f"{{000000..{last:06d}}}"
    decoded = json.dumps([*views, "json"] + (["cls"] if manifest["classes"] else []))
    columns = ", ".join(f'sample["{name}"]' for name in [*views, "json"])
    return f"""\
With genrep (`pip install genrep`), from this folder or its URL:

```bash
genrep-shards verify DATASET          # checksums, and decodes every sample
genrep-train DATASET --objective simclr
```

```python
from genrep.manifest import load_dataset
from genrep.shards import decode_sample, iter_raw_samples

manifest, shards = load_dataset("DATASET")
for shard in shards:
    for raw in iter_raw_samples(shard):
        sample = decode_sample(raw)  # .anchor, .neighbors (PIL images), .label, .latent, .meta
```

With [webdataset](https://github.com/webdataset/webdataset) (decode only the members you use: a
shared dataset is untrusted input, and webdataset's default decoders unpickle `.pyd`/`.pickle`):

```python
import webdataset as wds

dataset = (
    wds.WebDataset("DATASET/shard-{brace}.tar", shardshuffle=False)
    .decode("pil", only={decoded})
    .to_tuple({", ".join(json.dumps(name) for name in [*views, "json"])})
)
```

With Hugging Face [`datasets`](https://huggingface.co/docs/datasets) (its webdataset loader; one
row per anchor, one column per member):

```python
from datasets import load_dataset

dataset = load_dataset("DATASET", split="train", streaming=True)  # a folder or a hub repo id
sample = next(iter(dataset))
{columns}
```
"""


def card_text(name: str, manifest: dict[str, Any]) -> str:
    """The card of the dataset `name` described by `manifest`."""
    g, image, view = manifest["generator"], manifest["image"], manifest["view"]
    frame = stored_frame(manifest)
    n, neighbors, classes = manifest["n"], manifest["neighbors"], manifest["classes"]
    license = DatasetLicense.from_manifest(manifest)
    metadata = yaml.safe_dump(front_matter(manifest), sort_keys=False, allow_unicode=True)
    members = ", ".join(f"`KEY.{member}`" for member in _members(manifest))
    from genrep.manifest import content_hash  # the card is written by genrep.manifest

    made = "the dataset"
    provenance = [
        f"- generator: `{g['name']}` (from `{g.get('source', {}).get('from', 'genrep')}`), "
        f"z_dim {g['z_dim']}, weights sha256 `{g['weights_sha256']}`",
        f"- view: `{view['name']}`, parameters `{json.dumps(view['params'], sort_keys=True)}`",
        f"- seed: {manifest['seed']}; anchor truncation: {manifest['truncation']}",
        "- classes: "
        + ("unconditional" if classes is None else f"{len(classes)} ({_ids(classes)})"),
        f"- content sha256 (of the shard checksums): `{content_hash(manifest)}`",
    ]
    parent = manifest.get("parent")
    if isinstance(parent, dict):
        provenance.append(
            f"- made by `genrep-shards {parent.get('operation')}` from the dataset "
            f"`{parent.get('name')}` (content sha256 `{parent.get('content_hash')}`); sample keys "
            "are that dataset's indices"
        )
        made = "the samples (as part of that dataset)"
    if license.license == "other":
        license_text = (
            f"The images follow the license of the generator's weights (`{g['name']}`, sha256 "
            f"`{g['weights_sha256'][:16]}...`)"
            + (f": see {license.link}." if license.link else ", which genrep does not know.")
            + " Whoever publishes the dataset states it with `genrep-generate --license` (and "
            "`--license-name`, `--license-link`)."
        )
    else:
        license_text = (
            f"`{license.license}`{f' ({license.link})' if license.link else ''}: the images "
            "follow the license of the generator's weights, as recorded by whoever made the "
            "dataset (`genrep-generate --license`)."
        )
    return f"""---
{metadata}---

# {name}

A multiview dataset made by [genrep](https://ali-design.github.io/GenRep/) (format
{FORMAT_NAME} v{manifest["format_version"]}): {n} anchor images from the generator `{g["name"]}`
and {neighbors} neighbor view(s) per anchor made with the latent view `{view["name"]}`
({n * (1 + neighbors)} images of {frame.describe()}, {image["format"]}), in
{len(manifest["shards"])} webdataset shards. Each sample holds {members}.

## Loading

{_loading(manifest)}
## Provenance

{chr(10).join(provenance)}

`manifest.json` lists every shard with its sha256 (`genrep-shards verify` checks them), and
`config.yaml` is the configuration that made {made} (`genrep-generate --config config.yaml`
regenerates it byte for byte on the same device type).

## License

{license_text}

## Citation

```bibtex
{CITATION}
```
"""


def _ids(classes: list[int], shown: int = 20) -> str:
    text = ", ".join(map(str, classes[:shown]))
    return text + (", ..." if len(classes) > shown else "")


def write_card(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Write the card of the dataset in `folder`."""
    folder = Path(folder)
    atomic_write_bytes(folder / CARD, card_text(folder.name, manifest).encode())
