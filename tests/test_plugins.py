"""Generators from outside genrep: the example plugin of docs/generators.md as a file, as a module
and as an installed entry point, end to end; and the rules that keep a dataset from running code."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_generate
from stage_helpers import invoke_generate as invoke
from stage_helpers import one_line_error, shard_bytes, train_tiny, verify

from genrep.generate.models import GENERATORS, build_generator
from genrep.generate.models.base import file_label, parameters_sha256
from genrep.generate.models.embedded import build_embedded
from genrep.io import sha256_file
from genrep.manifest import read_manifest
from genrep.registry import RegistryError, is_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "generators.md"
SMALL = ("--size", "32", "--workers", "0", "--per-class", "4", "--model-option", "width=8")


def example_source() -> str:
    """The example plugin exactly as docs/generators.md shows it."""
    match = re.search(r"<!-- example-plugin[^>]*-->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/generators.md lost its example plugin block"
    return match.group(1)


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "plugins" / "tiny_genrep.py"
    path.parent.mkdir()
    path.write_text(example_source())
    return path


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`install(package, source, entry_points)`: a package on sys.path with the metadata pip would
    write (importlib.metadata reads it), uninstalled after the test."""
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(GENERATORS, "_plugins", {})  # forget entry points loaded by other tests
    packages = []

    def install_package(package: str, source: str, entry_points: str) -> None:
        (site / package).mkdir(parents=True)
        (site / package / "__init__.py").write_text(source)
        info = site / f"{package}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1.0\n")
        (info / "top_level.txt").write_text(f"{package}\n")
        (info / "entry_points.txt").write_text(f"[genrep.generators]\n{entry_points}\n")
        packages.append(package)

    yield install_package
    for package in packages:
        sys.modules.pop(package, None)


@pytest.fixture
def installed_plugin(install) -> None:
    """The example installed as the distribution `tinyplug`, declaring model `tiny`."""
    install("tinyplug", example_source(), "tiny = tinyplug:build")


def test_example_plugin_from_a_file_generates_verifies_and_trains(plugin_file, tmp_path):
    out = tmp_path / "ds"
    run_generate("--model", f"{plugin_file}:build", *SMALL, "--out", str(out))
    generator = read_manifest(out)["generator"]
    assert generator["source"] == {
        "from": "file",
        "path": str(plugin_file),
        "attr": "build",
        "sha256": sha256_file(plugin_file),
    }
    assert generator["width"] == 8 and generator["num_classes"] == 4
    assert re.fullmatch(r"[0-9a-f]{64}", generator["weights_sha256"])
    verify(out)
    records = train_tiny(out, tmp_path / "run")
    assert all(r["loss"] > 0 for r in records)


def test_example_plugin_as_an_installed_entry_point(installed_plugin, tmp_path):
    listing = invoke("--list")
    assert listing.exit_code == 0 and "installed plugin models: tiny (tinyplug 0.1.0)" in (
        listing.output
    )
    assert "tiny" in listing.output.splitlines()[0].split(": ")[1].split(", ")
    out = tmp_path / "ds"
    run_generate("--model", "tiny", *SMALL, "--out", str(out))
    assert read_manifest(out)["generator"]["source"] == {
        "from": "entry-point",
        "group": "genrep.generators",
        "name": "tiny",
        "value": "tinyplug:build",
        "distribution": "tinyplug",
        "version": "0.1.0",
    }
    verify(out)
    train_tiny(out, tmp_path / "run")
    # An entry-point name is no code reference: a dataset's config may name it.
    replay = tmp_path / "replay"
    run_generate("--config", str(out / "config.yaml"), "--out", str(replay))
    assert shard_bytes(replay) == shard_bytes(out)


def test_module_reference_records_the_distribution_that_provides_it(installed_plugin):
    generator = build_generator("tinyplug:build", width=8)
    assert generator.name == "tinyplug:build"
    assert generator.describe()["source"] == {
        "from": "module",
        "module": "tinyplug",
        "attr": "build",
        "distribution": "tinyplug",
        "version": "0.1.0",
    }


def test_weights_hash_is_the_files_or_the_parameters(plugin_file, tmp_path):
    import torch

    reference = f"{plugin_file}:build"
    plain = build_generator(reference, seed=1)
    assert plain.weights_sha256 == parameters_sha256(plain)
    assert build_generator(reference, seed=2).weights_sha256 != plain.weights_sha256
    weights = tmp_path / "tiny.pt"
    torch.save(build_generator(reference, seed=3).state_dict(), weights)
    loaded = build_generator(reference, weights=str(weights))
    assert loaded.weights_sha256 == sha256_file(weights)
    z, y = torch.randn(2, 32), torch.tensor([0, 3])
    assert torch.equal(loaded(z, y), build_generator(reference, seed=3)(z, y))


def test_a_dataset_config_never_imports_code(plugin_file, tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\nbuild = None\n")
    for reference in (f"{evil}:build", "genrep_evil_module:build"):
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"model": reference, "n": 2}))
        line = one_line_error(invoke("--config", str(config), "--out", str(tmp_path / "x")), 2)
        assert str(config) in line and f"pass --model {reference}" in line
    assert not marker.exists() and not (tmp_path / "x").exists()

    # A dataset made with a plugin replays once the user names the code on the command line.
    out = tmp_path / "ds"
    run_generate("--model", f"{plugin_file}:build", *SMALL, "--out", str(out))
    config = str(out / "config.yaml")
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == f"{plugin_file}:build"
    one_line_error(invoke("--config", config, "--out", str(tmp_path / "replay")), 2)
    run_generate(
        "--config", config, "--model", f"{plugin_file}:build", "--out", str(tmp_path / "replay")
    )
    assert shard_bytes(tmp_path / "replay") == shard_bytes(out)


def test_an_edited_plugin_file_is_another_generator(plugin_file, tmp_path):
    flags = ("--model", f"{plugin_file}:build", *SMALL, "--out", str(tmp_path / "ds"))
    run_generate(*flags)
    before = read_manifest(tmp_path / "ds")
    plugin_file.write_text(plugin_file.read_text() + "\n# a new version\n")
    line = one_line_error(invoke(*flags), 2)
    assert "different config" in line and "generator" in line
    assert read_manifest(tmp_path / "ds") == before


def test_plugin_pixels_do_not_depend_on_the_batch(plugin_file, tmp_path):
    flags = ("--model", f"{plugin_file}:build", *SMALL, "--shard-size", "5")
    run_generate(*flags, "--batch-size", "64", "--out", str(tmp_path / "a"))
    run_generate(*flags, "--batch-size", "3", "--out", str(tmp_path / "b"))
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")


#: a plugin whose generator states a size no reader takes
_OVERSIZED = """from genrep.generate.models.embedded import EmbeddedGenerator
def build(w, c, d):
    generator = EmbeddedGenerator(resolution=16)
    generator.{attribute} = {value}
    return generator
"""


@pytest.mark.parametrize(
    "source, reference, exit_code, expected",
    [
        (
            "raise RuntimeError('boom')\n",
            "broken.py:build",
            1,
            r"RuntimeError: boom \(.*broken\.py, line 1\)",
        ),
        ("def build(:\n", "broken.py:build", 1, r"SyntaxError: .*broken\.py, line 1"),
        ("x = 1\n", "broken.py:build", 2, r"has no attribute 'build'"),
        (
            "build = 3\n",
            "broken.py:build",
            1,
            r"names a value of type int, not the class or function",
        ),
        (
            "import torch\ndef build(w, c, d):\n    return torch.zeros(1)\n",
            "broken.py:build",
            1,
            r"returned a Tensor, not a genrep.generate.models.Generator",
        ),
        (  # a dataset readers refuse (shards/README.md, Limits) is never written
            _OVERSIZED.format(attribute="z_dim", value=2**21),
            "broken.py:build",
            1,
            r"z_dim 2097152 is over the 1048576 a dataset may have",
        ),
        (
            _OVERSIZED.format(attribute="num_classes", value=10**6),
            "broken.py:build",
            1,
            r"num_classes must be an int in 0\.\.100000",
        ),
        ("", "missing.py:build", 2, r"there is no file"),
        ("", "genrep_no_such_package.mod:build", 2, r"no module named 'genrep_no_such_package'"),
        ("", "broken.py:no-attr", 2, r"is not an attribute name"),
    ],
)
def test_broken_plugins_fail_in_one_line(
    tmp_path, monkeypatch, source, reference, exit_code, expected
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text(source)
    line = one_line_error(invoke("--model", reference, "--n", "2", "--out", "ds"), exit_code)
    assert re.search(expected, line), line
    assert not (tmp_path / "ds").exists()


def test_unknown_model_option_lists_the_plugins_options(plugin_file, tmp_path):
    result = invoke("--model", f"{plugin_file}:build", "--model-option", "depth=3", "--n", "2")
    line = one_line_error(result, 2)
    assert "does not take --model-option depth" in line
    assert "--model-option width, --model-option seed" in line


def test_entry_point_cannot_shadow_a_builtin_model(install, capsys):
    install("shadowplug", example_source(), "embedded = shadowplug:build")
    assert GENERATORS.get("embedded") is build_embedded
    assert "embedded" not in GENERATORS.plugin_names()
    assert "ignoring the genrep.generators entry point 'embedded'" in capsys.readouterr().err


def test_broken_entry_point_fails_in_one_line(install, tmp_path):
    install("brokenplug", "raise ImportError('needs libfoo')\n", "broken = brokenplug:build")
    line = one_line_error(invoke("--model", "broken", "--n", "2", "--out", str(tmp_path / "ds")), 1)
    assert "model 'broken' (brokenplug:build, brokenplug 0.1.0) failed to load: " in line
    assert "ImportError: needs libfoo" in line


def test_references_and_file_labels():
    assert is_reference("pkg.mod:build") and is_reference("dir/file.py:G")
    assert not is_reference("embedded") and not is_reference(":x") and not is_reference("x:")
    assert file_label("plugins/tiny_genrep.py:build") == "tiny_genrep-build"
    assert file_label("pkg.mod:Build") == "pkg.mod-Build" and file_label("embedded") == "embedded"
    with pytest.raises(RegistryError, match="unknown view"):
        from genrep.generate.views import VIEWS

        VIEWS.canonical("pkg.mod:View")  # only the generator registry takes references
