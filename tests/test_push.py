"""`genrep-shards push`: what it would send to the Hugging Face Hub, checked without a network.

HfApi's repository calls are replaced by recorders; no request leaves the machine.
"""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from genrep.shards_cli import main as shards_main

hub = pytest.importorskip("huggingface_hub")


def shards(*args):
    return CliRunner().invoke(shards_main, [str(a) for a in args])


@pytest.fixture
def dataset(make_dataset):
    return make_dataset("ds", "--n", "5", "--shard-size", "2")


class FakeHub:
    """Records the calls a push makes; `remote` is what the repository already holds."""

    def __init__(self, remote=()):
        self.remote = list(remote)
        self.calls = []
        self.operations = []

    def install(self, monkeypatch):
        fake = self

        def create_repo(api, repo_id, **kwargs):
            fake.calls.append(("create_repo", repo_id, kwargs))

        def list_repo_files(api, repo_id, **kwargs):
            fake.calls.append(("list_repo_files", repo_id, kwargs))
            return fake.remote

        def create_commit(api, repo_id, operations, **kwargs):
            fake.calls.append(("create_commit", repo_id, kwargs))
            fake.operations = list(operations)
            return type("Info", (), {"commit_url": f"https://hub.test/{repo_id}/commit/1"})()

        for name, method in [
            ("create_repo", create_repo),
            ("list_repo_files", list_repo_files),
            ("create_commit", create_commit),
        ]:
            monkeypatch.setattr(hub.HfApi, name, method)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        return self


def test_push_sends_the_dataset_in_one_commit(dataset, monkeypatch):
    (dataset / ".shard-000009.tar.host.1.tmp").write_bytes(b"partial")
    fake = FakeHub(remote=["README.md", "shard-000005.tar", ".gitattributes"]).install(monkeypatch)
    result = shards("push", dataset, "lab/genrep-views", "--private")
    assert result.exit_code == 0, result.output
    assert [call[0] for call in fake.calls] == ["create_repo", "list_repo_files", "create_commit"]
    assert fake.calls[0][2]["repo_type"] == "dataset" and fake.calls[0][2]["private"] is True
    added = {
        op.path_in_repo: op.path_or_fileobj
        for op in fake.operations
        if isinstance(op, hub.CommitOperationAdd)
    }
    expected = {f"shard-00000{k}.tar" for k in range(3)} | {
        "manifest.json",
        "config.yaml",
        "README.md",
    }
    assert set(added) == expected  # no lock file, no temporary file
    for name, path in added.items():
        assert open(path, "rb").read() == (dataset / name).read_bytes()
    deleted = [
        op.path_in_repo for op in fake.operations if isinstance(op, hub.CommitOperationDelete)
    ]
    assert deleted == ["shard-000005.tar"]  # a stale shard of an earlier push
    assert "pushed 6 files" in result.output and "removed 1 stale shard" in result.output


def test_push_refuses_a_dataset_that_does_not_verify(dataset, monkeypatch):
    fake = FakeHub().install(monkeypatch)
    shard = dataset / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-512])
    result = shards("push", dataset, "lab/x")
    assert result.exit_code == 1
    assert "does not verify" in result.output and "shard-000001.tar" in result.output
    assert fake.calls == []


def test_push_without_a_token_is_one_line(dataset, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    result = shards("push", dataset, "lab/x")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: no Hugging Face token: run `hf auth login` (or `huggingface-cli login`) or set "
        "HF_TOKEN"
    ]


def test_push_offline_is_one_line(dataset, monkeypatch):
    """huggingface_hub's own offline mode refuses the request; genrep says so in one line."""
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    result = shards("push", dataset, "lab/x")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: push to lab/x failed")
    assert "offline" in lines[0] and "nothing was committed" in lines[0]


def test_push_without_the_extra_is_one_line(dataset, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    result = shards("push", dataset, "lab/x")
    assert result.exit_code == 2
    assert "pip install 'genrep[hub]'" in result.output


def test_push_refuses_a_bad_repo_id(dataset):
    result = shards("push", dataset, "not a repo")
    assert result.exit_code == 2 and "OWNER/NAME" in result.output
