"""What an encoder was trained on, read from its run config and the manifests of its datasets, so
that a probe report can be grouped by generator, view, sigma, n or objective without joins.

A run's `config.yaml` names the dataset folders it trained on and the hash of their manifests; the
manifests say which generator and view made them. A folder that moved or changed since training is
noted (`datasets_verified`), never an error: the report keeps what the run config itself says.
"""

from __future__ import annotations

import hashlib
from typing import Any

from genrep.errors import ManifestError
from genrep.manifest import content_hash, find_dataset, read_manifest
from genrep.runs import Backbone

#: training settings copied from the run config as they are
TRAINING_KEYS = (
    "objective",
    "arch",
    "tx",
    "augment",
    "views",
    "input_size",
    "batch_size",
    "lr",
    "steps",
    "epochs",
    "seed",
    "temperature",
    "real",
    "real_fraction",
    "manifest_hash",
)
#: dataset settings flattened into the provenance: one value, or a list when datasets differ
DATASET_KEYS = (
    "generator",
    "view",
    "sigma",
    "walks",
    "truncation",
    "n",
    "neighbors",
    "classes",
    "data_seed",
)


def dataset_facts(folder: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """One dataset's generator, view and size as its manifest records them."""
    params = (manifest.get("view") or {}).get("params") or {}
    classes = manifest.get("classes")
    generator = manifest.get("generator") or {}
    return {
        "folder": folder,
        "content_hash": content_hash(manifest),
        "generator": generator.get("name"),
        "view": (manifest.get("view") or {}).get("name"),
        "sigma": params.get("sigma"),
        "walks": params.get("walks_sha256"),
        "truncation": manifest.get("truncation"),
        "n": manifest.get("n"),
        "neighbors": manifest.get("neighbors"),
        "classes": len(classes) if classes else (generator.get("num_classes") or None),
        "data_seed": manifest.get("seed"),
    }


def _read_datasets(folders: list[str]) -> list[dict[str, Any]] | None:
    """The facts of every dataset folder, or None when one is no longer readable where it was."""
    facts = []
    for folder in folders:
        try:
            found = find_dataset(folder)
            manifest = read_manifest(found)
        except ManifestError:
            return None
        if manifest is None:
            return None
        facts.append(dataset_facts(str(found.resolve()), manifest))
    return facts


def _combined_hash(facts: list[dict[str, Any]]) -> str:
    """The manifest hash genrep-train records for these datasets (see train.data)."""
    hashes = [fact["content_hash"] for fact in facts]
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def _flatten(facts: list[dict[str, Any]], key: str) -> Any:
    values = [fact[key] for fact in facts]
    if key == "n":
        return sum(v for v in values if v is not None) if values else None
    return values[0] if len(set(map(repr, values))) == 1 else values


def trained_on(encoder: Backbone) -> dict[str, Any] | None:
    """The provenance of `encoder`: its training settings and what its datasets hold (None for a
    bare state dict, which records neither)."""
    config = encoder.training_config
    if not config:
        return None
    summary: dict[str, Any] = config["dataset"] if isinstance(config.get("dataset"), dict) else {}
    record: dict[str, Any] = {key: config.get(key) for key in TRAINING_KEYS}
    record["dataset"] = summary.get("name")
    folders = [str(folder) for folder in config.get("shards") or ()]
    facts = _read_datasets(folders) if folders else []
    verified = None
    if facts:
        verified = _combined_hash(facts) == config.get("manifest_hash")
        record.update({key: _flatten(facts, key) for key in DATASET_KEYS})
    else:
        record.update(dict.fromkeys(DATASET_KEYS))
        record["neighbors"] = summary.get("neighbors")
        if folders and not config.get("real"):
            record["n"] = summary.get("epoch_size")
    record["datasets"] = facts if facts is not None else [{"folder": f} for f in folders]
    record["datasets_verified"] = verified
    return record


def encoder_data(encoder: Backbone) -> str:
    """`real` for an encoder trained on real images only (its linear probe takes the paper's lr
    for real-data encoders), else `generated`."""
    config = encoder.training_config or {}
    return "real" if config.get("real") and not config.get("shards") else "generated"


def provenance_note(record: dict[str, Any] | None) -> str | None:
    """A console line when the datasets a run names cannot be confirmed as the ones it trained on."""
    if record is None or not record["datasets"] or record["datasets_verified"]:
        return None
    folders = ", ".join(entry["folder"] for entry in record["datasets"])
    if record["datasets_verified"] is None:
        return f"note: {folders} not readable here; the report records the run config only"
    return (
        f"note: {folders} changed since the run trained on it (manifest hash differs); the "
        "generator and view in the report may not be those the encoder saw"
    )
