"""`genrep-shards subset` and `reshard`: a valid dataset of the same samples, byte for byte."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import run_generate
from stage_helpers import one_line_error, shard_bytes, train_tiny, verify
from train_helpers import rewrite_shard

from genrep.card import read_front_matter
from genrep.manifest import content_hash, read_manifest
from genrep.shards import decode_sample, iter_raw_samples
from genrep.shards_cli import main as shards_main


def shards(*args):
    return CliRunner().invoke(shards_main, [str(a) for a in args])


def ok(*args):
    result = shards(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def conditional(make_dataset):
    """12 anchors of 3 classes (class of index i: i % 3), shards of 5, 5, 2."""
    return make_dataset("cond", "--n", "12", "--classes", "3", "--shard-size", "5")


def keys_and_labels(folder):
    samples = [
        decode_sample(raw)
        for entry in read_manifest(folder)["shards"]
        for raw in iter_raw_samples(folder / entry["name"])
    ]
    return [s.key for s in samples], [s.label for s in samples]


def test_first_n_anchors_are_what_generate_makes(conditional, make_dataset, tmp_path):
    out = tmp_path / "first7"
    ok("subset", conditional, "--n", 7, "--out", out)
    assert "OK 2 shards, 7 samples" in verify(out)
    direct = make_dataset("direct", "--n", "7", "--classes", "3", "--shard-size", "5")
    assert shard_bytes(out) == shard_bytes(direct)  # copied byte for byte, same tar bytes
    manifest = read_manifest(out)
    assert manifest["n"] == 7 and manifest["num_shards"] == 2 and manifest["complete"]
    parent = read_manifest(conditional)
    assert manifest["parent"]["content_hash"] == content_hash(parent)
    assert manifest["parent"]["identity"] == parent["identity"]
    assert manifest["parent"]["operation"] == "subset"
    assert manifest["parent"]["selection"] == {"n": 7, "classes": None, "per_class": None}
    card = (out / "README.md").read_text()
    assert read_front_matter(card)["dataset_info"]["splits"][0]["num_examples"] == 7
    assert content_hash(parent) in card
    assert (out / "config.yaml").read_text() == (conditional / "config.yaml").read_text()


def test_reshard_keeps_every_sample(conditional, tmp_path):
    same = tmp_path / "same"
    ok("reshard", conditional, "--shard-size", 5, "--out", same)
    assert shard_bytes(same) == shard_bytes(conditional)
    assert content_hash(read_manifest(same)) == content_hash(read_manifest(conditional))
    out = tmp_path / "by4"
    ok("reshard", conditional, "--shard-size", 4, "--out", out)
    manifest = read_manifest(out)
    assert [e["samples"] for e in manifest["shards"]] == [4, 4, 4]
    assert [e["first_index"] for e in manifest["shards"]] == [0, 4, 8]
    assert keys_and_labels(out) == keys_and_labels(conditional)
    assert "OK 3 shards, 12 samples" in verify(out)


def test_class_subset_keeps_parent_keys(conditional, tmp_path):
    out = tmp_path / "c02"
    ok("subset", conditional, "--classes", "0,2", "--per-class", 4, "--shard-size", 4, "--out", out)
    keys, labels = keys_and_labels(out)
    assert keys == [f"{i:09d}" for i in (0, 2, 3, 5, 6, 8, 9, 11)]
    assert labels == [0, 2] * 4
    manifest = read_manifest(out)
    assert manifest["classes"] == [0, 2] and manifest["n"] == 8
    assert [e["first_index"] for e in manifest["shards"]] == [0, 6]
    verify(out)
    # a subset of that subset: its keys no longer say the class, so its cls members are read
    again = tmp_path / "c2"
    ok("subset", out, "--classes", "2", "--out", again)
    assert keys_and_labels(again) == ([f"{i:09d}" for i in (2, 5, 8, 11)], [2] * 4)
    assert read_manifest(again)["parent"]["identity"] == manifest["identity"]
    # and training reads it, with its two classes
    records = train_tiny(out, tmp_path / "run", objective="supcon", steps=1)
    assert records[-1]["step"] == 1


def test_rerun_resumes_and_gives_the_same_bytes(conditional, tmp_path):
    out = tmp_path / "by3"
    ok("reshard", conditional, "--shard-size", 3, "--out", out)
    before = shard_bytes(out)
    (out / "shard-000002.tar").unlink()  # as if interrupted before the last shards
    (out / "shard-000003.tar").unlink()
    manifest = read_manifest(out)
    manifest["shards"], manifest["complete"] = manifest["shards"][:2], False
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = ok("reshard", conditional, "--shard-size", 3, "--out", out)
    assert "resuming" in result.output and shard_bytes(out) == before
    verify(out)


def test_output_rules(conditional, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    line = one_line_error(shards("subset", conditional, "--n", 2, "--out", other), 2)
    assert "holds no genrep dataset" in line and (other / "notes.txt").read_text() == "mine"
    taken = tmp_path / "taken"
    ok("subset", conditional, "--n", 2, "--out", taken)
    line = one_line_error(shards("subset", conditional, "--n", 3, "--out", taken), 2)
    assert "different config" in line
    assert one_line_error(
        shards("reshard", conditional, "--shard-size", 2, "--out", conditional), 2
    )


def test_bad_selections_are_one_line(conditional, make_dataset, tmp_path):
    out = tmp_path / "x"
    assert "only 12 anchors" in one_line_error(
        shards("subset", conditional, "--n", 13, "--out", out), 2
    )
    assert "not in the dataset" in one_line_error(
        shards("subset", conditional, "--classes", "5", "--out", out), 2
    )
    assert "--per-class goes with --classes" in one_line_error(
        shards("subset", conditional, "--per-class", 2, "--out", out), 2
    )
    plain = make_dataset("plain", "--n", "3")
    assert "class-conditional" in one_line_error(
        shards("subset", plain, "--classes", "1", "--out", out), 2
    )
    assert not out.exists()


def test_hostile_parent_members_are_not_copied(conditional, tmp_path):
    """Members outside the format are dropped; a sample that lacks what its manifest promises, or
    a shard whose bytes differ from its checksum, stops the copy with one line."""

    def add_pickle(raw):
        return {**raw, "evil.pyd": b"cos\nsystem\n(S'echo pwned'\ntR."}

    rewrite_shard(conditional, "shard-000000.tar", add_pickle)
    out = tmp_path / "clean"
    ok("subset", conditional, "--n", 3, "--out", out)
    members = {name for raw in iter_raw_samples(out / "shard-000000.tar") for name in raw}
    assert "evil.pyd" not in members and "anchor.jpg" in members

    shard = conditional / "shard-000001.tar"
    good = shard.read_bytes()
    data = bytearray(good)
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    line = one_line_error(
        shards("subset", conditional, "--classes", "1", "--out", tmp_path / "b"), 1
    )
    assert "shard-000001.tar: sha256 differs" in line
    shard.write_bytes(good)

    rewrite_shard(conditional, "shard-000001.tar", lambda raw: {**raw, "neighbor_7.jpg": b"x"})
    line = one_line_error(
        shards("reshard", conditional, "--shard-size", 6, "--out", tmp_path / "a"), 1
    )
    assert "sample 000000005" in line and "format's" in line


def test_generate_points_at_subset(conditional):
    result = run_generate(
        "--size", "32", "--workers", "0", "--out", str(conditional), "--n", "4",
        "--classes", "3", "--shard-size", "5", expect_ok=False,
    )  # fmt: skip
    assert "genrep-shards subset" in one_line_error(result, 2)
