"""`genrep-shards inspect/verify/preview`, and the safety of reading a shard someone handed you."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import as_format_v1
from PIL import Image

from genrep.errors import ManifestError
from genrep.io import sha256_file
from genrep.manifest import load_dataset, read_manifest
from genrep.shards import ShardFormatError, decode_sample, iter_raw_samples
from genrep.shards_cli import main as shards_main
from genrep.train.cli import main as train_main


def shards(*args):
    return CliRunner().invoke(shards_main, [str(a) for a in args])


@pytest.fixture
def dataset(make_dataset):
    return make_dataset("ds", "--n", "6", "--shard-size", "2", "--neighbors", "2")


def test_inspect_summarizes(dataset):
    result = shards("inspect", dataset)
    assert result.exit_code == 0
    assert "embedded" in result.output and "gaussian" in result.output
    assert "anchors     6 of 6" in result.output and "shards      3 of 3" in result.output


def test_format_version_1_is_still_read(make_dataset, tmp_path):
    folder = as_format_v1(make_dataset("v1", "--n", "4", "--frame", "center-crop", "--size", "24"))
    result = shards("inspect", folder)
    assert result.exit_code == 0, result.output
    assert (
        "v1" in result.output
        and "24x24 px (center-crop of the native frame, native 128x128)" in result.output
    )
    assert shards("verify", folder).exit_code == 0
    assert shards("preview", folder, "--out", tmp_path / "p.png").exit_code == 0
    with Image.open(tmp_path / "p.png") as sheet:
        assert sheet.size == (2 * 24 + 2, 4 * 24 + 3 * 2)


def test_inspect_shows_the_stored_frame(dataset):
    result = shards("inspect", dataset)
    assert "images      32x32 px (full frame, native 128x128), jpg q95" in result.output


def test_verify_accepts_a_good_dataset(dataset):
    result = shards("verify", dataset)
    assert result.exit_code == 0 and "OK 3 shards, 6 samples" in result.output


def test_verify_names_each_corrupt_shard(dataset):
    first, last = dataset / "shard-000000.tar", dataset / "shard-000002.tar"
    data = bytearray(first.read_bytes())
    data[700] ^= 0xFF  # inside the first image
    first.write_bytes(bytes(data))
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    result = shards("verify", dataset)
    assert result.exit_code == 1
    assert "BAD shard-000000.tar: sha256 differs" in result.output
    assert "BAD shard-000002.tar: size" in result.output
    assert "shard-000001.tar" not in result.output


def test_verify_finds_missing_and_stray_shards(dataset):
    (dataset / "shard-000001.tar").rename(dataset / "shard-000009.tar")
    result = shards("verify", dataset)
    assert result.exit_code == 1
    assert "BAD shard-000001.tar: missing" in result.output
    assert "BAD shard-000009.tar: not in the manifest" in result.output


def test_verify_decodes_samples_not_only_checksums(dataset):
    """A shard rewritten with its manifest entry updated still fails when an image is garbage."""
    path = dataset / "shard-000000.tar"
    _rewrite_tar(
        path,
        lambda members: [
            (name, b"\xff\xd8 not a jpeg" if name.endswith("anchor.jpg") else data)
            for name, data in members
        ],
    )
    manifest = read_manifest(dataset)
    manifest["shards"][0].update(bytes=path.stat().st_size, sha256=sha256_file(path))
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    result = shards("verify", dataset)
    assert (
        result.exit_code == 1
        and "BAD shard-000000.tar: sample 000000000: undecodable" in result.output
    )


def test_preview_rows_are_anchor_then_neighbors(dataset, tmp_path):
    out = tmp_path / "sheet.png"
    result = shards("preview", dataset, "--out", out, "--rows", "4")
    assert result.exit_code == 0, result.output
    with Image.open(out) as sheet:
        assert sheet.size == (3 * 32 + 2 * 2, 4 * 32 + 3 * 2)


def test_preview_defaults_to_a_named_file_here_and_never_overwrites_unasked(
    dataset, tmp_path, monkeypatch
):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    before = sorted(path.name for path in dataset.iterdir())
    result = shards("preview", dataset, "--rows", "1")
    assert result.exit_code == 0, result.output
    assert f"wrote preview-{dataset.name}.png:" in result.output
    written = here / f"preview-{dataset.name}.png"
    first = written.read_bytes()
    assert sorted(path.name for path in dataset.iterdir()) == before  # nothing in the dataset
    again = shards("preview", dataset, "--rows", "2")
    assert again.exit_code == 2 and again.output.count("\n") == 1, again.output
    assert "exists; pass --overwrite to replace it, or another --out" in again.output
    assert written.read_bytes() == first
    replaced = shards("preview", dataset, "--rows", "2", "--overwrite")
    assert replaced.exit_code == 0 and written.read_bytes() != first, replaced.output


@pytest.mark.parametrize(
    "command, args",
    [
        (shards_main, ["inspect"]),
        (shards_main, ["verify"]),
        (shards_main, ["preview"]),
        (train_main, ["--steps", "1"]),
    ],
)
def test_not_a_dataset_gives_one_clear_line(tmp_path, command, args):
    """A missing folder (refused by click) and a folder without a manifest are the same mistake,
    a wrong argument: both exit 2."""
    empty = tmp_path / "empty"
    empty.mkdir()
    run = CliRunner().invoke(command, [*args, str(empty)])
    assert run.exit_code == 2 and run.output.count("\n") == 1, run.output
    assert "has no manifest.json; pass a folder made by genrep-generate" in run.output
    missing = CliRunner().invoke(command, [*args, str(tmp_path / "missing")])
    assert missing.exit_code == 2 and "does not exist" in missing.output, missing.output


def test_newer_format_version_is_refused(dataset):
    manifest = read_manifest(dataset)
    manifest["format_version"] = 99
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="format version 99; this genrep reads versions 1, 2"):
        load_dataset(dataset)


class _Payload:
    """Unpickling this would create a file: the marker of executed code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite_tar(path, edit):
    """Rewrite a tar with `edit(list of (name, bytes)) -> list of (name, bytes)`."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for name, data in edit(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_pickle_members_in_a_shard_never_run(dataset, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)))
    evil = [(f"000000000.{ext}", payload) for ext in ("pyd", "pickle", "pth", "pkl")]
    _rewrite_tar(dataset / "shard-000000.tar", lambda members: members[:3] + evil + members[3:])
    decoded = [decode_sample(raw) for raw in iter_raw_samples(dataset / "shard-000000.tar")]
    assert [s.key for s in decoded] == ["000000000", "000000001"]
    assert len(decoded[0].neighbors) == 2 and not marker.exists()


def test_missing_anchor_is_a_format_error():
    with pytest.raises(ShardFormatError, match="sample 7: no anchor image"):
        decode_sample({"__key__": "7", "json": b"{}"})
    with pytest.raises(ShardFormatError, match="numbered 0..K-1"):
        image = io.BytesIO()
        Image.new("RGB", (4, 4)).save(image, "PNG")
        decode_sample(
            {"__key__": "8", "anchor.png": image.getvalue(), "neighbor_1.png": image.getvalue()}
        )


def test_preview_shows_the_views_training_makes_of_whole_frames(make_dataset, tmp_path):
    """App. A for the user's own dataset: without Tx the central 128 px of a 160 px frame, outlined
    on the frame and shown (at 112 px) beside it."""
    flags = ("--n", "2", "--format", "png", "--model-option", "resolution=160", "--size", "160")
    folder = make_dataset("big", *flags)
    result = shards("preview", folder, "--out", tmp_path / "plain.png", "--training-view", "plain")
    assert result.exit_code == 0, result.output
    assert "plain training view (112 px, from the central 128 px)" in result.output
    with Image.open(tmp_path / "plain.png") as sheet:
        pixels = np.asarray(sheet.convert("RGB"))
    assert pixels.shape == (2 * 160 + 2, 4 * 160 + 3 * 2, 3)  # (frame, view) x (anchor, neighbor)
    anchor = decode_sample(next(iter_raw_samples(folder / "shard-000000.tar"))).anchor
    stored = np.asarray(anchor)
    frame_cell = pixels[:160, :160]
    red = (frame_cell == (255, 0, 0)).all(-1)
    assert red[16, 16:144].all() and red[16:144, 143].all()  # the box of the central 128 px
    assert np.array_equal(frame_cell[~red], stored[~red])
    view = anchor.crop((16, 16, 144, 144)).resize((112, 112), Image.BILINEAR)
    assert np.array_equal(pixels[:160, 162:322], np.asarray(view.resize((160, 160), Image.NEAREST)))
    result = shards("preview", folder, "--out", tmp_path / "tx.png", "--training-view", "tx")
    assert result.exit_code == 0 and "tx training view (112 px, Tx recipe genrep)" in result.output


def test_preview_tx_lists_and_checks_the_registered_recipes(tmp_path):
    from genrep.train.tx import TX_RECIPES

    names = "|".join(TX_RECIPES.canonical_names())
    help_text = " ".join(shards("preview", "--help").output.split())
    assert f"--tx [{names}]" in help_text
    result = shards("preview", tmp_path, "--tx", "nope")
    assert result.exit_code == 2 and "unknown Tx recipe 'nope'; choose one of:" in result.output
