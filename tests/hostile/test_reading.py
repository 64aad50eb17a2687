"""Reading a dataset folder someone handed you: special files, damaged or compressed tars, names
that are not shards, members and images larger than they may be, manifests that are not what they
claim. Every case ends at once, in `verify` as a BAD line and elsewhere as one error line."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile

import numpy as np
import pytest
from http_helpers import serve
from PIL import Image

from genrep.errors import DataError, ManifestError, ShardFormatError, one_line
from genrep.evaluate.cli import main as probe_main
from genrep.generate.cli import main as generate_main
from genrep.images import MAX_IMAGE_PIXELS, decode_image
from genrep.manifest import MAX_MANIFEST_BYTES, dataset_at
from genrep.shards import (
    MAX_HEADER_BYTES,
    MAX_MEMBER_BYTES,
    Expected,
    ShardFile,
    decode_npy,
    decode_sample,
    format_members,
)
from genrep.shards_cli import main as shards_main
from genrep.train.cli import main as train_main

from .helpers import (
    cli,
    manifest,
    noise,
    only_line,
    png_header,
    replace_shard,
    tar_bytes,
    tar_members,
    write_manifest,
)


def bad_lines(result) -> dict[str, str]:
    """verify's `BAD NAME: PROBLEM` lines, by shard name."""
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    bad = [
        line[4:].split(": ", 1) for line in result.output.splitlines() if line.startswith("BAD ")
    ]
    return dict(bad)


def test_verify_names_fifos_devices_and_folders_without_reading_them(dataset, deadline):
    deadline(300)
    (dataset / "shard-000000.tar").unlink()
    os.mkfifo(dataset / "shard-000000.tar")  # open() would wait for a writer forever
    (dataset / "shard-000001.tar").unlink()
    (dataset / "shard-000001.tar").symlink_to("/dev/zero")  # endless bytes
    (dataset / "shard-000002.tar").unlink()
    (dataset / "shard-000002.tar").mkdir()
    bad = {
        name: problem.split("; to repair, ")[0]
        for name, problem in bad_lines(cli(shards_main, "verify", dataset)).items()
    }
    assert bad == {
        "shard-000000.tar": "the shard is a FIFO, not a regular file",
        "shard-000001.tar": "the shard is a device, not a regular file",
        "shard-000002.tar": "the shard is a folder, not a regular file",
    }


def _gzip_of_first(folder):
    return gzip.compress((folder / "shard-000000.tar").read_bytes())


@pytest.mark.parametrize(
    "damage, recorded, problem",
    [
        (lambda d: (d / "shard-000000.tar").read_bytes()[:1000], False, "size 1000 != "),
        (lambda d: b"", True, "not a readable tar (empty file)"),
        (lambda d: tar_bytes([]), True, "0 samples, manifest says 2"),
        (lambda d: noise(20480), True, "not a readable tar"),
        (lambda d: b"\0" * 20480, True, "0 samples, manifest says 2"),
        (_gzip_of_first, True, "a gzip-compressed file; shards are uncompressed tar"),
        (lambda d: b"BZh91AY&SY" + noise(100), True, "a bzip2-compressed file"),
    ],
    ids=["truncated", "empty-file", "empty-tar", "garbage", "zeros", "gzip", "bzip2"],
)
def test_damaged_or_compressed_tars_are_bad_in_verify(dataset, where, damage, recorded, problem):
    """Even when the manifest records the bad file's checksum, what is in it is judged (in a
    folder and at a URL)."""
    replace_shard(dataset, "shard-000000.tar", damage(dataset), record=recorded)
    bad = bad_lines(cli(shards_main, "verify", where))
    assert list(bad) == ["shard-000000.tar"] and bad["shard-000000.tar"].startswith(problem)


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "../other/shard-000000.tar",
        "shard-0.tar",
        "shard-000009.tar",
    ],
)
def test_manifest_names_only_shards_of_the_dataset(dataset, where, name):
    edited = manifest(dataset)
    edited["shards"][0]["name"] = name
    write_manifest(dataset, edited)
    with pytest.raises(ManifestError, match="is damaged: .*shard"):
        dataset_at(where)
    for args in (["verify", where], ["inspect", where]):
        assert "manifest.json is damaged" in only_line(cli(shards_main, *args), 1)
    train = cli(train_main, where, "--steps", "1", "--out", dataset.parent / "run")
    assert "manifest.json is damaged" in only_line(train, 1)
    assert not (dataset.parent / "run").exists()


def _shard_with(dataset, edit) -> None:
    """Rewrite shard 0 with `edit(members) -> members`, its manifest entry following."""
    path = dataset / "shard-000000.tar"
    replace_shard(dataset, path.name, tar_bytes(edit(tar_members(path))))


def _anchor(data: bytes, ext: str = "jpg", stored: str = "jpg"):
    """An edit that replaces every anchor (of the `stored` format) by `data`, stored as anchor.EXT."""
    return lambda members: [
        (name[: -len(stored)] + ext, data) if name.endswith(f"anchor.{stored}") else (name, value)
        for name, value in members
    ]


def test_a_damaged_shard_is_one_flat_line_whose_repair_works(dataset, tmp_path, monkeypatch):
    """A shard whose bytes changed (same size, an undecodable anchor): verify names it and what
    is wrong without nesting one message in another's brackets, and says how to rewrite it;
    doing exactly that gives a dataset that verifies."""
    path = dataset / "shard-000001.tar"
    members = [
        (
            name,
            b"\xff\xd8 not a jpeg".ljust(len(data), b"x") if name.endswith("anchor.jpg") else data,
        )
        for name, data in tar_members(path)
    ]
    damaged = tar_bytes(members).ljust(path.stat().st_size, b"\0")  # zeros end a tar
    assert len(damaged) == path.stat().st_size  # only the checksum and the samples tell
    replace_shard(dataset, path.name, damaged, record=False)
    result = cli(shards_main, "verify", dataset)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    line = lines[0]
    assert line.startswith("BAD shard-000001.tar: sha256 differs from the manifest; sample ")
    assert "undecodable" in line and "(" not in line and "[" not in line
    advice = "; to repair, delete the shard and rerun `"
    assert advice in line and line.endswith("`, or copy it again from its source")
    command = line.split(advice, 1)[1].split("`", 1)[0].split()
    assert command[:2] == ["genrep-generate", "--config"]
    path.unlink()
    monkeypatch.chdir(dataset.parent)
    assert cli(generate_main, "--no-progress", *command[1:]).exit_code == 0
    assert cli(shards_main, "verify", dataset).exit_code == 0


def _json_of_first(data: bytes):
    """An edit that replaces sample 0's json member by `data`."""
    return lambda members: [
        (name, data if name == "000000000.json" else value) for name, value in members
    ]


@pytest.mark.parametrize("operation", [["subset", "--n", "1"], ["reshard", "--shard-size", "1"]])
def test_a_json_member_nested_past_the_recursion_limit_is_one_line(dataset, tmp_path, operation):
    """A sample's json that is 100,000 brackets deep: verify says BAD and a reshape refuses in one
    line (json raises RecursionError, not ValueError), writing no shard."""
    _shard_with(dataset, _json_of_first(b"[" * 100_000 + b"]" * 100_000))
    bad = bad_lines(cli(shards_main, "verify", dataset))
    assert bad["shard-000000.tar"].startswith(f"sample 000000000: {NOT_ITS_JSON}")
    out = tmp_path / "reshaped"
    line = only_line(cli(shards_main, *operation, dataset, "--out", out), 1)
    assert f"sample 000000000: {NOT_ITS_JSON}" in line
    assert not list(out.glob("shard-*.tar"))


def _image(side: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, fmt)
    return buffer.getvalue()


NOT_ITS_JSON = "its json is not an object recording index 0"


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda ms: [(n, v) for n, v in ms if n != "000000000.latent.npy"], "members ["),
        (lambda ms: [(n, v) for n, v in ms if n != "000000000.json"], "members ["),
        (_anchor(_image(16), "png"), "members ['anchor.png'"),
        (_json_of_first(b'{"index": 0, "params": NaN}'), NOT_ITS_JSON),
        (_json_of_first(b"[0]"), NOT_ITS_JSON),
        (_json_of_first(b'{"index": 1}'), NOT_ITS_JSON),
    ],
    ids=["no-latent", "no-json", "png-in-a-jpg-dataset", "nan", "not-an-object", "other-index"],
)
def test_verify_holds_every_sample_to_its_manifest_as_subset_does(dataset, edit, problem):
    """A sample that decodes but lacks a member, stores another image format than the manifest's,
    or whose json is not its record is BAD in verify, as subset and reshard refuse to copy it."""
    _shard_with(dataset, edit)
    bad = bad_lines(cli(shards_main, "verify", dataset))
    assert list(bad) == ["shard-000000.tar"]
    assert bad["shard-000000.tar"].startswith(f"sample 000000000: {problem}")


@pytest.mark.parametrize(
    "cls, problem",
    [
        (b"-1", "its cls member is not a class id"),
        (b" 3\n", "its cls member is not a class id"),
        (b"", "its cls member is not a class id"),
        (b"7", "class 7 is not among the manifest's"),
    ],
)
def test_a_sample_s_class_is_a_class_id_its_manifest_lists(tiny_dataset, cls, problem):
    m = Expected.of({**manifest(tiny_dataset), "neighbors": 0, "classes": [1, 3]})
    raw = {"__key__": "000000004", "anchor.jpg": b"", "latent.npy": b"", "json": b'{"index": 4}'}
    assert format_members({**raw, "cls": b"3"}, m)["cls"] == b"3"
    with pytest.raises(ShardFormatError, match=f"^sample 000000004: {problem}$"):
        format_members({**raw, "cls": cls}, m)
    if problem.endswith("class id"):  # training reads no class that is not an id either
        with pytest.raises(ShardFormatError, match="not a class id"):
            decode_sample({**raw, "cls": cls, "anchor.jpg": _image(16, "JPEG")})


def test_image_larger_than_the_manifest_says_is_refused_before_decoding(dataset):
    """A 13000x13000 header (500 MB of pixels) is refused from its header alone."""
    _shard_with(dataset, lambda members: [(n.replace(".jpg", ".png"), v) for n, v in members])
    _shard_with(dataset, _anchor(png_header(13000, 13000), "png", "png"))
    write_manifest(
        dataset, {**manifest(dataset), "image": {**manifest(dataset)["image"], "format": "png"}}
    )
    bad = bad_lines(cli(shards_main, "verify", dataset))
    assert "image is 13000x13000 px, expected 16x16" in bad["shard-000000.tar"]


def test_pixel_cap_holds_whatever_pil_is_told(monkeypatch):
    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # some library turned PIL's guard off
    with pytest.raises(DataError, match=f"image is {side}x{side} px, over the"):
        decode_image(png_header(side, side), ("PNG",))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # or made it stricter than genrep's
    with pytest.raises(DataError, match="image over the .* pixels genrep decodes"):
        decode_image(png_header(100, 100), ("PNG",))


def test_an_image_is_decoded_only_by_its_extension_s_decoder(dataset):
    """A PNG stored as anchor.jpg is refused: no decoder other than the named one sees the bytes
    (PIL would otherwise try every plugin, EPS included, which runs Ghostscript)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "PNG")
    _shard_with(dataset, _anchor(buffer.getvalue()))
    assert (
        "undecodable image: unknown format"
        in bad_lines(cli(shards_main, "verify", dataset))["shard-000000.tar"]
    )


def test_a_member_over_the_cap_is_refused_unread(dataset, where):
    """The header claims more than MAX_MEMBER_BYTES: refused before any of it is read."""
    info = tarfile.TarInfo("000000000.anchor.jpg")
    info.size = MAX_MEMBER_BYTES + 1
    data = info.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 1024
    replace_shard(dataset, "shard-000000.tar", data)
    assert (
        "over the 67108864 a shard member"
        in bad_lines(cli(shards_main, "verify", where))["shard-000000.tar"]
    )


def test_a_huge_pax_header_is_refused_unread(tmp_path):
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, MAX_HEADER_BYTES + 1
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(info.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 1024)
    with ShardFile(path) as shard, pytest.raises(ShardFormatError, match="a tar header of"):
        list(shard.samples())


def _pax_record(key: str, value: str) -> bytes:
    """One pax record, `LENGTH KEY=VALUE\\n`, LENGTH counting itself."""
    tail = f" {key}={value}\n"
    length = len(tail) + 1
    while len(str(length)) + len(tail) != length:
        length += 1
    return f"{length}{tail}".encode()


def test_a_pax_sparse_map_is_refused_unread(dataset, tmp_path):
    """GNU sparse 1.0 in pax records: tarfile reads the map from the member's data until a count
    of 10^12 numbers is met; a short map had raised a ValueError traceback."""
    records = [("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0")]
    records += [("GNU.sparse.name", "000000000.anchor.jpg"), ("GNU.sparse.realsize", "10")]
    body = b"".join(_pax_record(key, value) for key, value in records)
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, len(body)
    member = tarfile.TarInfo("000000000.anchor.jpg")
    member.size = 512
    data = header.tobuf(tarfile.USTAR_FORMAT) + body.ljust(512, b"\0")
    data += member.tobuf(tarfile.USTAR_FORMAT) + b"1000000000000\n".ljust(512, b"\0")
    replace_shard(dataset, "shard-000000.tar", data + b"\0" * 1024)
    bad = bad_lines(cli(shards_main, "verify", dataset))
    assert bad["shard-000000.tar"].startswith("a tar member is a GNU sparse file")
    result = cli(
        train_main,
        dataset,
        "--arch",
        "resnet18",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--no-progress",
        "--steps",
        "1",
        "--out",
        tmp_path / "run",
    )
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "shard-000000.tar: a tar member is a GNU sparse file" in result.output


def test_a_key_of_thousands_of_digits_is_no_key(dataset, tmp_path):
    """Sample 1's members under a 5,001-digit key (pax long names): they are not the format's
    members, so sample 1 is missing; a reshape had died converting the key to an int (a
    ValueError traceback past Python's 4,300-digit limit)."""
    key = "0" * 5000 + "1"
    path = dataset / "shard-000000.tar"
    members = [
        (key + name[9:] if name.startswith("000000001.") else name, data)
        for name, data in tar_members(path)
    ]
    replace_shard(dataset, path.name, tar_bytes(members, tarfile.PAX_FORMAT))
    assert bad_lines(cli(shards_main, "verify", dataset))["shard-000000.tar"].startswith(
        "1 samples, manifest says 2"
    )
    for operation in (["subset", "--n", "2"], ["reshard", "--shard-size", "1"]):
        out = tmp_path / operation[0]
        line = only_line(cli(shards_main, *operation, dataset, "--out", out), 1)
        assert "shard-000000.tar: 1 samples where its manifest says 2" in line


def test_npy_members_cannot_ask_for_more_than_they_hold():
    """A 16-byte member whose header says 4 TB is refused before anything is allocated."""
    huge = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
    np.lib.format.write_array_header_1_0(huge, header)
    with pytest.raises(ValueError, match="the member holds other bytes"):
        decode_npy(huge.getvalue() + bytes(16))
    objects = io.BytesIO()
    np.save(objects, np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):
        decode_npy(objects.getvalue())
    latent = io.BytesIO()
    np.save(latent, np.zeros(4, np.float32))
    raw = {"__key__": "7", "anchor.png": _image(16), "latent.npy": latent.getvalue()}
    with pytest.raises(ShardFormatError, match="sample 7: .*expected \\(8,\\)"):
        decode_sample(raw, Expected(16, 16, 8))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "array, problem",
    [
        (np.array(["a"] * 8), "npy array of <U1, not float32"),
        (np.zeros(8, [("a", "<f4")]), "not float32"),
        (np.zeros(8, np.complex64), "npy array of complex64, not float32"),
        (np.zeros(8, np.int32), "npy array of int32, not float32"),
        (np.zeros(8, np.float64), "npy array of float64, not float32"),
        (np.full(8, np.nan, np.float32), "npy array holds NaN or infinity"),
        (np.full(8, -np.inf, np.float32), "npy array holds NaN or infinity"),
    ],
)
def test_latents_are_finite_float32_as_the_format_says(array, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        decode_npy(_npy(array))
    big_endian = decode_npy(_npy(np.arange(8, dtype=">f4")))
    assert big_endian.dtype == np.float32 and big_endian.tolist() == list(range(8))


def test_latents_training_cannot_take_are_skipped_samples(dataset, tmp_path):
    """String latents (which torch cannot convert) in shard 0, its checksum recorded: verify says
    BAD, and the inverter, which regresses them, skips those samples instead of a traceback."""
    _shard_with(
        dataset,
        lambda members: [
            (name, _npy(np.array(["a"] * 8)) if name.endswith(".latent.npy") else data)
            for name, data in members
        ],
    )
    assert (
        "npy array of <U1, not float32"
        in bad_lines(cli(shards_main, "verify", dataset))["shard-000000.tar"]
    )
    flags = ["--objective", "inverter", "--arch", "resnet18", "--batch-size", "2"]
    flags += ["--workers", "0", "--no-progress", "--steps", "2", "--out", tmp_path / "run"]
    result = cli(train_main, dataset, *flags)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "skipped" in result.output and "bad samples" in result.output


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda m: m.pop("shards"), "has no 'shards'"),
        (lambda m: m.update(generator=[]), "the manifest.generator is '[]'"),
        (lambda m: m["image"].update(width="16"), "image.width is '16'"),
        (lambda m: m["view"].update(params=None), "view.params is 'None'"),
        (lambda m: m["image"].update(width=100_000, height=100_000), "over the 67108864"),
        (lambda m: m.update(n=True), "the manifest.n is 'True'"),
        (lambda m: m.update(num_shards=10**12), "the manifest.num_shards is"),
        (lambda m: m["shards"][1].update(samples=10**12), "does not fit n and shard_size"),
        (lambda m: m["shards"][1].update(sha256="x"), "sha256 is 'x'"),
        (lambda m: m["shards"].append(dict(m["shards"][0])), "not a shard of this dataset"),
        (lambda m: m.update(complete=False), "'complete' does not match"),
        # numbers beyond the limits: a float of them overflows, a table or loop of them never ends
        (lambda m: m.update(n=10**400), "the manifest.n is '1000"),
        (lambda m: m["shards"][0].update(bytes=10**400), "a shard entry.bytes is '1000"),
        (lambda m: m["generator"].update(num_classes=10**12), "generator.num_classes is"),
        (lambda m: m["generator"].update(z_dim=10**9), "generator.z_dim is '1000000000'"),
        (lambda m: m.update(neighbors=10**9), "the manifest.neighbors is '1000000000'"),
    ],
)
def test_malformed_manifests_are_one_line_everywhere(dataset, tmp_path, edit, problem):
    edited = manifest(dataset)
    edit(edited)
    write_manifest(dataset, edited)
    commands = [
        (shards_main, ["verify", dataset]),
        (shards_main, ["inspect", dataset]),
        (shards_main, ["preview", dataset, "--out", tmp_path / "p.png"]),
        (shards_main, ["subset", dataset, "--n", "1", "--out", tmp_path / "sub"]),
        (train_main, [dataset, "--arch", "resnet18", "--steps", "1", "--out", tmp_path / "run"]),
    ]
    for command, args in commands:
        assert problem in only_line(cli(command, *args), 1)
    assert not any((tmp_path / name).exists() for name in ("p.png", "sub", "run"))


def test_what_a_manifest_states_never_reaches_the_terminal_as_control_codes(dataset):
    """A generator name that would clear the screen and rewrite the line is shown escaped."""
    edited = manifest(dataset)
    edited["generator"]["name"] = "evil\x1b[2J\rOK\u202e"
    write_manifest(dataset, edited)
    result = cli(shards_main, "inspect", dataset)
    assert result.exit_code == 0, result.output
    assert "generator   evil\\x1b[2J\\rOK\\u202e  z_dim=" in result.output
    assert not any(c in result.output for c in "\x1b\r\u202e")
    assert (
        one_line("reason: 'Not\x1b]0;title\x07 Found'\n") == "reason: 'Not\\x1b]0;title\\x07 Found'"
    )


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[" * 100_000 + "]" * 100_000, "RecursionError"),
        ('{"format": "genrep-shards", "n": NaN}', "NaN is not a JSON number"),
        ('{"format": "genrep-shards", "n": Infinity}', "Infinity is not a JSON number"),
        ("\xff\xfe not utf-8", "not readable JSON"),
    ],
)
def test_manifest_json_that_is_not_strict_json_is_refused(dataset, where, text, problem):
    (dataset / "manifest.json").write_text(text, encoding="latin-1")
    assert problem in only_line(cli(shards_main, "verify", where), 1)


def test_manifest_size_and_kind_are_bounded(dataset, deadline):
    deadline(300)
    with open(dataset / "manifest.json", "r+b") as handle:  # sparse: no disk used
        handle.truncate(MAX_MANIFEST_BYTES + 1)
    assert "larger than the 64 MiB a manifest may be" in only_line(
        cli(shards_main, "inspect", dataset), 1
    )
    with serve(dataset.parent) as server:  # at a URL: the same cap, on the bytes streamed
        url = f"{server.url}/{dataset.name}"
        assert "larger than the 64 MiB a manifest may be" in only_line(
            cli(shards_main, "inspect", url), 1
        )
    (dataset / "manifest.json").unlink()
    os.mkfifo(dataset / "manifest.json")
    assert "manifest.json is a FIFO, not a regular file" in only_line(
        cli(shards_main, "inspect", dataset), 1
    )


def test_preview_skips_bad_samples_and_checks_its_flags(dataset, tmp_path):
    _shard_with(dataset, _anchor(b"\xff\xd8 not a jpeg"))
    result = cli(shards_main, "preview", dataset, "--out", tmp_path / "p.png", "--rows", "3")
    assert result.exit_code == 0, result.output
    assert "warning: skipped 2 bad samples or shards" in result.output
    assert "Traceback" not in result.output
    with Image.open(tmp_path / "p.png") as sheet:
        assert sheet.size == (2 * 16 + 2, 3 * 16 + 2 * 2)
    refusals = [
        (["--out", tmp_path / "sheet.txt"], "name an image file"),
        (["--out", tmp_path / "sheet"], "name an image file"),
        (["--rows", "0"], "0 is not in the range x>=1"),
        (["--rows", "-1"], "-1 is not in the range x>=1"),
        (["--rows", "1000000"], "lower --rows or --columns"),
        (["--training-view", "tx", "--input-size", "100000"], "--input-size must be >= 1 and <="),
        (["--out", tmp_path / "missing" / "p.png"], "No such file or directory"),
    ]
    for flags, message in refusals:
        result = cli(shards_main, "preview", dataset, *flags)
        assert result.exit_code in (1, 2) and message in result.output, result.output
        assert "Traceback" not in result.output


def _report(**changes) -> str:
    """A probe report as genrep-probe writes one (the fields a table reads), with `changes`."""
    report = {
        "format": "genrep-probe-report",
        "format_version": 2,
        "label": "run",
        "protocol": "knn",
        "primary_metric": "top1",
        "metrics": {"top1": 50.0},
        "dataset": {"label": "digits"},
        "checkpoint": {"sha256": "a" * 64, "arch": "resnet18"},
    }
    return json.dumps({**report, **changes})


@pytest.mark.parametrize(
    "text, problem",
    [
        (_report(label=None), "a damaged genrep-probe report (label is 'None')"),
        (_report(metrics={"top1": "high"}), "(metrics is \"{'top1': 'high'}\")"),
        (_report(primary_metric="map"), "(no metric 'map')"),
        (_report(checkpoint=[]), "(checkpoint is '[]')"),
        (_report(baseline={"metrics": {"top1": 1.0}}), "(baseline is"),
        ("[" * 100_000 + "]" * 100_000, "RecursionError"),
        ("fifo", "fifo.json is a FIFO, not a regular file"),
    ],
    ids=["no-label", "text-metric", "no-primary", "checkpoint-list", "baseline", "deep", "fifo"],
)
def test_a_probe_report_someone_sent_is_read_or_one_line(tmp_path, deadline, text, problem):
    """`genrep-probe table` over reports collected from others: a report with fields missing or
    of other types had died in a KeyError or TypeError traceback, a deep one in a RecursionError,
    and a FIFO had hung it."""
    deadline(120)
    good, path = tmp_path / "good.json", tmp_path / "fifo.json"
    good.write_text(_report())
    if text == "fifo":
        os.mkfifo(path)
    else:
        path.write_text(text)
    assert problem in only_line(cli(probe_main, "table", good, path), 1)
    result = cli(probe_main, "table", good)
    assert result.exit_code == 0 and "50.00" in result.output, result.output


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("fifo-listing", "trainval.txt is a FIFO, not a regular file"),
        ("zero-listing", "trainval.txt is a device, not a regular file"),
        ("large-listing", "trainval.txt is larger than the 16 MiB a VOC image list may be"),
        ("binary-listing", "trainval.txt is not text (one image id a line)"),
        ("fifo-annotation", "000000.xml is a FIFO, not a regular file"),
    ],
)
def test_voc07_listing_and_annotation_files_are_read_bounded(tmp_path, deadline, damage, problem):
    """voc07 had read ImageSets/Main/<split>.txt with read_text (a FIFO hung it, a link to
    /dev/zero filled the memory) and parsed annotations with ET.parse (a FIFO hung it)."""
    from probe_fixtures import write_voc07

    from genrep.evaluate.datasets import DATASETS

    deadline(60)
    root = write_voc07(tmp_path, trainval=4, test=2)
    voc = root / "VOCdevkit" / "VOC2007"
    listing = voc / "ImageSets" / "Main" / "trainval.txt"
    if damage != "large-listing" and damage != "binary-listing":
        target = voc / "Annotations" / "000000.xml" if damage == "fifo-annotation" else listing
        target.unlink()
        if damage == "zero-listing":
            target.symlink_to("/dev/zero")
        else:
            os.mkfifo(target)
    elif damage == "large-listing":
        with listing.open("r+b") as f:
            f.truncate((16 << 20) + 1)  # sparse: the size the cap refuses, without the disk
    else:
        listing.write_bytes(b"\xff\xfe000000\n")
    with pytest.raises(DataError) as caught:
        DATASETS.build("voc07", root=root)
    message = str(caught.value)
    assert problem in message and "\n" not in message
