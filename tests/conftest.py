"""Shared test fixtures: small datasets made by the real `genrep-generate` in temp folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from genrep.generate.cli import main as generate_main


@pytest.fixture(autouse=True, scope="session")
def _private_genrep_home(tmp_path_factory):
    """Tests never read or write the user's weights/feature cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENREP_HOME", str(tmp_path_factory.mktemp("genrep-home")))
        yield


def run_generate(*args: str, expect_ok: bool = True):
    """Run `genrep-generate ARGS` in-process; returns click's result."""
    result = CliRunner().invoke(generate_main, ["--no-progress", *args], catch_exceptions=False)
    if expect_ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def make_dataset(tmp_path):
    """`make_dataset(name, *flags)` -> folder of a small embedded-generator dataset."""

    def make(name: str = "ds", *args: str) -> Path:
        out = tmp_path / name
        run_generate("--size", "32", "--workers", "0", "--out", str(out), *args)
        return out

    return make


def as_format_v1(folder: Path) -> Path:
    """Rewrite the manifest of a `--frame center-crop` dataset as format version 1 wrote it (the
    shards are the same in both versions), to test that readers still accept version 1."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    image = manifest["image"]
    assert image["frame"] in ("center-crop", "resize") and image["width"] == image["height"]
    manifest["format_version"] = 1
    manifest["image"] = {
        "size": image["width"],
        "resize": image["frame"],
        "format": image["format"],
        "quality": image["quality"],
    }
    del manifest["generator"]["frame"]
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return folder
