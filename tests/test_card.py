"""The dataset card: hub metadata a hub and other tools can read, and loading snippets that work."""

from __future__ import annotations

import re

import pytest
from conftest import run_generate

from genrep.card import CITATION, DatasetLicense, read_front_matter, size_category
from genrep.errors import UsageError
from genrep.manifest import read_manifest

#: the hub's size categories (huggingface_hub DatasetCardData)
HUB_SIZE_CATEGORIES = {
    "n<1K",
    "1K<n<10K",
    "10K<n<100K",
    "100K<n<1M",
    "1M<n<10M",
    "10M<n<100M",
    "100M<n<1B",
    "1B<n<10B",
    "10B<n<100B",
    "100B<n<1T",
    "n>1T",
}


@pytest.fixture
def conditional(make_dataset):
    return make_dataset("cond", "--n", "6", "--shard-size", "4", "--classes", "3")


def snippet(card: str, starts: str) -> str:
    """The python code block of the card that starts with `starts`."""
    blocks = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    return next(block for block in blocks if block.startswith(starts))


def test_front_matter_has_the_hub_fields(conditional):
    meta = read_front_matter((conditional / "README.md").read_text())
    assert meta["license"] == "mit"  # the embedded generator's weights are genrep's own
    assert meta["task_categories"] == ["image-feature-extraction", "image-classification"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "shard-*.tar"}]}
    ]
    info = meta["dataset_info"]
    shard_bytes = sum(e["bytes"] for e in read_manifest(conditional)["shards"])
    assert info["splits"] == [{"name": "train", "num_bytes": shard_bytes, "num_examples": 6}]
    assert info["download_size"] == shard_bytes
    assert {"genrep", "synthetic", "embedded", "gaussian"} <= set(meta["tags"])


def test_huggingface_hub_reads_the_card(conditional):
    cards = pytest.importorskip("huggingface_hub")
    card = cards.DatasetCard((conditional / "README.md").read_text())
    data = card.data.to_dict()
    assert data["license"] == "mit" and data["size_categories"] == ["n<1K"]
    assert data["dataset_info"]["splits"][0]["num_examples"] == 6
    assert data["configs"][0]["data_files"][0]["path"] == "shard-*.tar"


def test_body_records_provenance_and_citation(conditional):
    card = (conditional / "README.md").read_text()
    manifest = read_manifest(conditional)
    assert manifest["generator"]["weights_sha256"] in card
    assert '"sigma": 1.0' in card and "seed: 0" in card
    assert CITATION in card and "Jahanian, Ali and Puig, Xavier" in card


def test_webdataset_snippet_reads_the_dataset(conditional, monkeypatch):
    card = (conditional / "README.md").read_text()
    code = snippet(card, "import webdataset").replace("DATASET", str(conditional))
    scope: dict = {}
    exec(code, scope)
    rows = list(scope["dataset"])
    assert len(rows) == 6
    anchor, neighbor, meta = rows[4]
    assert anchor.size == (32, 32) and neighbor.size == (32, 32)
    assert meta["index"] == 4 and meta["class"] == 1


def test_genrep_snippet_reads_the_dataset(conditional):
    card = (conditional / "README.md").read_text()
    scope: dict = {}
    exec(snippet(card, "from genrep").replace("DATASET", str(conditional)), scope)
    last = scope["sample"]  # the loop decoded every sample; the last is index 5, class 2
    assert last.key == "000000005" and last.label == 2 and len(last.neighbors) == 1
    assert last.anchor.size == (32, 32) and scope["manifest"]["n"] == 6


def test_datasets_snippet_reads_the_dataset(conditional, monkeypatch, tmp_path):
    """Runs where Hugging Face `datasets` is installed (not a genrep dependency)."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    card = (conditional / "README.md").read_text()
    code = snippet(card, "from datasets").replace("DATASET", str(conditional))
    scope: dict = {}
    exec(code, scope)
    assert scope["sample"]["anchor.jpg"].size == (32, 32)
    assert scope["sample"]["json"]["index"] == 0
    assert len(list(scope["dataset"])) == 6


def test_license_flags_reach_the_card(make_dataset):
    folder = make_dataset(
        "lic", "--n", "2", "--license-name", "my-terms-1.0", "--license-link", "LICENSE"
    )
    meta = read_front_matter((folder / "README.md").read_text())
    assert (meta["license"], meta["license_name"], meta["license_link"]) == (
        "other",
        "my-terms-1.0",
        "LICENSE",
    )
    # rerunning the same command with another license rewrites the card, not the shards
    run_generate(
        "--size", "32", "--workers", "0", "--out", str(folder), "--n", "2", "--license", "cc-by-4.0"
    )
    meta = read_front_matter((folder / "README.md").read_text())
    assert meta["license"] == "cc-by-4.0" and "license_name" not in meta
    assert read_manifest(folder)["license"]["license"] == "cc-by-4.0"


def test_a_bad_license_id_is_one_line(tmp_path):
    result = run_generate(
        "--n", "2", "--license", "Apache 2.0", "--out", str(tmp_path / "x"), expect_ok=False
    )
    assert result.exit_code == 2 and "hub license id" in result.output
    assert not (tmp_path / "x").exists()


def test_unknown_licenses_say_so():
    fields = DatasetLicense().card_fields()
    assert fields == {
        "license": "other",
        "license_name": "see-generator",
        "license_link": "README.md",
    }
    linked = DatasetLicense(link="https://example.org/terms")
    assert DatasetLicense.from_options(linked, None, "their-terms", None) == DatasetLicense(
        "other", "their-terms", "https://example.org/terms"
    )
    with pytest.raises(UsageError):
        DatasetLicense.from_options(linked, None, "Their Terms", None)


def test_size_categories_are_the_hubs():
    bounds = [0, 999, 1000, 10**4, 10**6, 10**7, 10**8, 10**9, 10**12]
    assert {size_category(n) for n in bounds} <= HUB_SIZE_CATEGORIES
    assert size_category(999) == "n<1K" and size_category(10**7) == "10M<n<100M"
