"""Reshaping a dataset you received: a subset of its anchors (`genrep-shards subset`) or other
shard sizes (`genrep-shards reshard`), written as a new dataset folder of the same format.

Samples are copied byte for byte: the format's members of each selected sample go into the new
shards unchanged and undecoded (nothing is re-encoded), under the key they had, so a sample's key
stays the global index that generated it and the parent's `config.yaml` regenerates it. Keys
increase through the new shards but skip numbers where a subset leaves samples out; a shard's
`first_index` is the key of its first sample. The new manifest records its parent (identity and
content hash) in `parent`. The parent is untrusted input: its shards' checksums are checked before
they are read, only the format's members are copied, and every copied sample must have the members
its manifest promises, its key and its class.

Output follows the rules of `genrep-generate --out`: shards appear complete or not at all, a
rerun of the same command resumes, and a folder holding anything else is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from genrep.errors import OutputError, ShardFormatError, UsageError
from genrep.io import StagedFile, naming
from genrep.manifest import DatasetWriter, content_hash, find_dataset, load_dataset, new_manifest
from genrep.remote import Location, dataset_name, is_remote
from genrep.shards import (
    Expected,
    ShardFile,
    class_id,
    format_members,
    shard_name,
    stored_frame,
    write_shard,
)


@dataclass(frozen=True)
class Selection:
    """Which anchors of the parent a reshaped dataset keeps, in the parent's order: the first `n`
    (of the selected classes, when `classes` is given), and at most `per_class` of each class."""

    operation: str
    n: int | None = None
    classes: tuple[int, ...] | None = None
    per_class: int | None = None

    def describe(self) -> dict[str, Any]:
        """The selection as plain data (the operation is recorded beside it)."""
        fields = asdict(self)
        del fields["operation"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    """`--classes 3,7` as class ids."""
    if text is None:
        return None
    try:
        ids = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--classes {text!r} is not a comma list of class ids") from None
    if not ids:
        raise UsageError("--classes names no class id")
    return ids


class ParentReader:
    """The shards of a complete dataset, read sample by sample in order, checksums first."""

    def __init__(self, folder: Location) -> None:
        self.folder = folder if is_remote(folder) else find_dataset(folder)
        self.manifest, self.paths = load_dataset(self.folder)
        self.name = (
            dataset_name(str(self.folder)) if is_remote(self.folder) else Path(self.folder).name
        )
        self.counts = [int(entry["samples"]) for entry in self.manifest["shards"]]
        self.starts = [sum(self.counts[:j]) for j in range(len(self.counts))]

    @property
    def size(self) -> int:
        return sum(self.counts)

    @property
    def contiguous(self) -> bool:
        """Whether sample p of the dataset has key p (a generated dataset), so the class of every
        sample follows from the manifest: sample i has class classes[i % len(classes)]."""
        return "parent" not in self.manifest and all(
            int(entry.get("first_index", -1)) == start
            for entry, start in zip(self.manifest["shards"], self.starts, strict=True)
        )

    def read(self, j: int) -> Any:
        """Raw samples of shard `j` with their positions, after checking its checksum."""
        path, entry = self.paths[j], self.manifest["shards"][j]
        count = 0
        try:
            with ShardFile(
                path, entry
            ) as shard:  # the whole shard first: nothing unchecked is copied
                shard.check()
            with ShardFile(path, size=entry["bytes"]) as shard:
                for count, raw in enumerate(shard.samples(), start=1):
                    if count > self.counts[j]:
                        break
                    yield self.starts[j] + count - 1, raw
        except ShardFormatError as err:
            raise ShardFormatError(
                f"{path}: {err}; run genrep-shards verify {self.folder} and get the dataset again"
            ) from None
        if count != self.counts[j]:
            raise ShardFormatError(
                f"{path}: {count} samples where its manifest says {self.counts[j]}; run "
                f"genrep-shards verify {self.folder}"
            )

    def classes(self) -> list[int]:
        """The class of every sample, from the manifest's rule or by reading the `cls` members."""
        classes = self.manifest.get("classes") or []
        if self.contiguous and classes:
            return [classes[p % len(classes)] for p in range(self.size)]
        return [
            _class_of(raw, entry["name"])
            for j, entry in enumerate(self.manifest["shards"])
            for _, raw in self.read(j)
        ]


def select(parent: ParentReader, selection: Selection) -> tuple[list[int], list[int] | None]:
    """Positions (in the parent's sample order) of the samples the selection keeps, and the class
    of every parent sample when the selection is by class."""
    positions, labels = list(range(parent.size)), None
    if selection.classes is not None:
        held = parent.manifest.get("classes")
        if not held:
            raise UsageError("--classes needs a class-conditional dataset; this one has no classes")
        unknown = sorted(set(selection.classes) - set(held))
        if unknown:
            raise UsageError(f"--classes {unknown} are not in the dataset (its classes: {held})")
        wanted, taken = set(selection.classes), dict.fromkeys(selection.classes, 0)
        kept, labels = [], parent.classes()
        for p, label in enumerate(labels):
            if label in wanted and (
                selection.per_class is None or taken[label] < selection.per_class
            ):
                taken[label] += 1
                kept.append(p)
        positions = kept
    if selection.n is not None:
        if selection.n > len(positions):
            raise UsageError(
                f"--n {selection.n}: the selection holds only {len(positions)} anchors"
            )
        positions = positions[: selection.n]
    if not positions:
        raise UsageError("the selection keeps no anchor")
    return positions, labels


def _class_of(raw: dict[str, Any], where: str) -> int:
    try:
        return class_id(raw.get("cls"))
    except ShardFormatError as err:
        raise ShardFormatError(f"{where}: sample {raw.get('__key__')}: {err}") from None


def check_sample(
    raw: dict[str, Any], expected: Expected, where: str, key: int | None, label: int | None
) -> dict[str, Any]:
    """The format's members of one parent sample, checked to be what the manifest promises, and
    to have the key and class its position implies."""
    try:
        sample = format_members(raw, expected)
    except ShardFormatError as err:
        raise ShardFormatError(f"{where}: {err}") from None
    where = f"{where}: sample {sample['__key__']}"
    if key is not None and int(sample["__key__"]) != key:
        raise ShardFormatError(f"{where}: expected the key of index {key}")
    if label is not None and class_id(sample["cls"]) != label:  # a class id: format_members
        raise ShardFormatError(f"{where}: its class is not {label}, which its manifest implies")
    return sample


def first_key(path: Path) -> int:
    """The key of the first sample of a shard this module wrote."""
    with ShardFile(path) as shard:
        raw = next(shard.samples(), None)
    if raw is None:
        raise ShardFormatError(f"{path} is empty")
    return int(raw["__key__"])


def reshaped_manifest(
    parent: ParentReader, selection: Selection, positions: Sequence[int], shard_size: int
) -> dict[str, Any]:
    """The manifest of the new dataset before any shard exists: the parent's generation record,
    the new size and shards, and `parent`."""
    m = parent.manifest
    frame = stored_frame(m)
    generator = {**m["generator"], "frame": [frame.native_height, frame.native_width]}
    image = {
        "width": frame.width,
        "height": frame.height,
        "frame": frame.frame,
        "native_width": frame.native_width,
        "native_height": frame.native_height,
        "format": m["image"]["format"],
        "quality": m["image"]["quality"],
    }
    classes = m.get("classes")
    if selection.classes is not None:
        classes = [c for c in classes or [] if c in set(selection.classes)]
    parent_hash = content_hash(m)
    identity = {
        "operation": selection.operation,
        "parent": parent_hash,
        "selection": selection.describe(),
        "shard_size": shard_size,
    }
    record = {
        "name": parent.name,
        "content_hash": parent_hash,
        "identity": m.get("identity"),
        "format_version": m["format_version"],
        "n": m["n"],
        "shard_size": m["shard_size"],
        "operation": selection.operation,
        "selection": selection.describe(),
    }
    return new_manifest(
        generator=generator,
        view=m["view"],
        seed=m["seed"],
        n=len(positions),
        neighbors=m["neighbors"],
        classes=classes,
        truncation=m["truncation"],
        image=image,
        shard_size=shard_size,
        identity=identity,
        config=m["config"],
        license=m.get("license"),
        parent=record,
    )


def reshape(
    folder: str | Path,
    out: str | Path,
    selection: Selection,
    shard_size: int | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Write the selected samples of the dataset in `folder` into `out`, `shard_size` per shard
    (default: the parent's); a rerun resumes. Returns the new manifest."""
    out = Path(out)
    parent = ParentReader(folder)
    if not is_remote(parent.folder) and Path(parent.folder).resolve() == out.resolve():
        raise OutputError(f"--out {out} is the dataset being read; pass another folder")
    shard_size = shard_size or int(parent.manifest["shard_size"])
    if shard_size <= 0:
        raise UsageError(f"--shard-size must be > 0, got {shard_size}")
    positions, labels = select(parent, selection)
    layout = [positions[i : i + shard_size] for i in range(0, len(positions), shard_size)]
    base = reshaped_manifest(parent, selection, positions, shard_size)
    writer = DatasetWriter(out, base, first_index=lambda k, path: first_key(path))
    present = writer.open()  # refuses a folder holding anything but this command's dataset
    todo = [k for k in range(len(layout)) if shard_name(k) not in present]
    if len(todo) < len(layout):
        log(f"resuming {out}: {len(layout) - len(todo)} of {len(layout)} shards present")
    wanted = {p: k for k in todo for p in layout[k]}
    expected = Expected.of(parent.manifest)
    buffer: list[dict[str, Any]] = []
    for j in range(len(parent.paths)):
        start, stop = parent.starts[j], parent.starts[j] + parent.counts[j]
        if not any(p in wanted for p in range(start, stop)):
            continue  # nothing to copy from this shard: not read at all
        for p, raw in parent.read(j):
            k = wanted.get(p)
            if k is None:
                continue
            key = p if parent.contiguous else None
            label = labels[p] if labels is not None else None
            buffer.append(check_sample(raw, expected, str(parent.paths[j]), key, label))
            if len(buffer) == len(layout[k]):
                _write(writer, k, buffer)
                buffer = []
    return writer.close()


def _write(writer: DatasetWriter, k: int, samples: list[dict[str, Any]]) -> None:
    """Write shard `k` of the new dataset and record it (with the sha256 of what was written)."""
    staged = StagedFile(writer.folder / shard_name(k))
    try:
        with naming(staged.path):
            with staged as f:
                write_shard(f, samples)
        writer.commit(k, staged)
    finally:
        staged.discard()
