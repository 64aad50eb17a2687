"""Every reader takes a dataset URL as it takes a folder, with the same rules: a dataset folder served
by a loopback HTTP server (127.0.0.1 only), and fsspec memory:// and file:// URLs."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from http_helpers import serve
from stage_helpers import one_line_error
from test_train_data import batches, keys
from train_helpers import FAST, copy_dataset, read_log, rewrite_shard

from genrep import manifest as manifest_module
from genrep import remote
from genrep.errors import DataError, ManifestError
from genrep.manifest import load_dataset
from genrep.shards import iter_raw_samples
from genrep.shards_cli import main as shards_main
from genrep.train.cli import main as train_main
from genrep.train.data import open_data

pytest_plugins = ["train_fixtures"]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)


def shards(*args):
    return CliRunner().invoke(shards_main, [str(a) for a in args])


def same_batches(a, b) -> None:
    assert keys(a) == keys(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["images"], y["images"])


def test_train_verify_inspect_preview_from_a_loopback_url(datasets, tmp_path):
    folder = datasets("gauss")
    with serve(folder.parent, drops=2) as server:  # two shard requests break mid-file
        url = f"{server.url}/{folder.name}"
        verified = shards("verify", url)
        assert verified.exit_code == 0, verified.output
        assert "OK 4 shards, 64 samples" in verified.output
        inspected = shards("inspect", url)
        assert inspected.exit_code == 0 and f"dataset     {url}" in inspected.output
        previewed = shards("preview", url, "--rows", "2", "--out", tmp_path / "p.png")
        assert previewed.exit_code == 0 and (tmp_path / "p.png").exists(), previewed.output
        # the stream from the URL is the folder's: same samples, same Tx seeds, same pixels
        same_batches(
            batches(open_data([url], None, None), steps=16, views=2),
            batches(open_data([folder], None, None), steps=16, views=2),
        )
        run = tmp_path / "run"
        trained = CliRunner().invoke(
            train_main, [url, *FAST, "--steps", "2", "--batch-size", "8", "--out", str(run)]
        )
        assert trained.exit_code == 0, trained.output
        assert [r["step"] for r in read_log(run)] == [1, 2]
        # only the manifest and the shards it names were asked for, nothing listed or guessed
        names = {"manifest.json"} | {p.name for p in folder.glob("shard-*.tar")}
        assert {r.rsplit("/", 1)[1] for r in server.requests} <= names
        assert server.drops_left == 0


def test_verify_from_a_url_checks_checksums_sizes_and_refuses_pickle(datasets, tmp_path):
    folder = copy_dataset(datasets("gauss"), tmp_path / "ds")
    flipped = bytearray((folder / "shard-000000.tar").read_bytes())
    flipped[700] ^= 1  # same size, other bytes
    (folder / "shard-000000.tar").write_bytes(bytes(flipped))
    with open(folder / "shard-000001.tar", "ab") as grown:
        grown.write(b"\0" * 10240)  # more than the manifest says

    def pickled_latent(raw):
        buffer = __import__("io").BytesIO()
        np.save(buffer, np.array([object()], dtype=object), allow_pickle=True)
        return {**raw, "latent.npy": buffer.getvalue()}

    rewrite_shard(folder, "shard-000002.tar", pickled_latent)
    size = json.loads((folder / "manifest.json").read_text())["shards"][1]["bytes"]
    with serve(tmp_path) as server:
        url = f"{server.url}/ds"
        result = shards("verify", url)
        assert result.exit_code == 1
        assert "BAD shard-000000.tar: sha256 differs from the manifest" in result.output
        assert f"BAD shard-000001.tar: size over {size} != {size}" in result.output
        assert "BAD shard-000002.tar: sample" in result.output  # no pickle from a URL either
        assert "shard-000003.tar" not in result.output
        with pytest.raises(DataError, match=f"size over {size} != {size} in the manifest"):
            list(iter_raw_samples(f"{url}/shard-000001.tar", size))


def test_manifest_at_a_url_is_capped_and_names_only_shards(datasets, tmp_path, monkeypatch):
    folder = copy_dataset(datasets("none"), tmp_path / "ds")
    manifest = json.loads((folder / "manifest.json").read_text())
    with serve(tmp_path) as server:
        url = f"{server.url}/ds"
        assert load_dataset(url)[1] == [f"{url}/shard-000000.tar"]
        manifest["shards"][0]["name"] = "../../etc/passwd"
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ManifestError, match="is damaged: a shard entry.name"):
            load_dataset(url)
        monkeypatch.setattr(manifest_module, "MAX_MANIFEST_BYTES", 100)
        with pytest.raises(DataError, match="larger than the 100 bytes a manifest may be"):
            load_dataset(url)
        missing = one_line_error(shards("inspect", f"{server.url}/nothing"), 2)  # as a folder
        assert f"{server.url}/nothing/manifest.json is not there" in missing


def test_memory_and_file_urls(datasets, tmp_path):
    folder = datasets("gauss")
    memory = fsspec.filesystem("memory")
    for path in folder.iterdir():
        memory.pipe(f"/lab/{folder.name}/{path.name}", path.read_bytes())
    for url in (f"memory://lab/{folder.name}", folder.as_uri()):
        result = shards("verify", url)
        assert result.exit_code == 0 and "OK 4 shards" in result.output, (url, result.output)
        same_batches(
            batches(open_data([url], None, None), steps=4),
            batches(open_data([folder], None, None), steps=4),
        )


def test_pipe_locations_only_when_typed(datasets, tmp_path):
    folder = datasets("none")
    typed = shards("verify", f"pipe:cat {folder}/{{}}")
    assert typed.exit_code == 0 and "OK 1 shards, 24 samples" in typed.output
    config = tmp_path / "c.yaml"
    config.write_text(f"shards: ['pipe:cat {folder}/{{}}']\n")
    refused = CliRunner().invoke(train_main, ["--config", str(config), "--out", str(tmp_path)])
    assert "typed on the command line" in one_line_error(refused, 2)


def test_subset_of_a_dataset_at_a_url_is_the_subset_of_its_folder(datasets, tmp_path):
    folder = datasets("cond")
    with serve(folder.parent) as server:
        made = shards("subset", f"{server.url}/{folder.name}", "--n", "40", "--out", tmp_path / "a")
        assert made.exit_code == 0, made.output
    assert shards("subset", folder, "--n", "40", "--out", tmp_path / "b").exit_code == 0
    for name in ("manifest.json", "shard-000000.tar", "shard-000001.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["parent"]["name"] == "cond"
    assert "OK 2 shards, 40 samples" in shards("verify", tmp_path / "a").output
