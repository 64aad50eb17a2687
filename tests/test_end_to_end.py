"""The three stages chained on real output, as a user runs them: generate -> verify -> train ->
export -> probe, each through its command line, each reading only what the previous one wrote."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import torch
import torchvision
import yaml
from click.testing import CliRunner
from stage_helpers import invoke_generate, verify

from genrep.cli import main as genrep_main
from genrep.io import sha256_file
from genrep.manifest import content_hash, read_manifest


def genrep(*args: object) -> str:
    result = CliRunner().invoke(genrep_main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_generate_train_export_probe(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    result = invoke_generate(
        "--model-option", "resolution=32", "--n", "48", "--shard-size", "16", "--workers", "0",
        "--out", str(data),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    verify(data)
    genrep(
        "train", data, "--arch", "resnet18", "--steps", "3", "--batch-size", "16",
        "--workers", "0", "--no-progress", "--out", run,
    )  # fmt: skip
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["manifest_hash"] == content_hash(read_manifest(data))

    exported = tmp_path / "backbone.pth"
    genrep("export", run, exported)
    backbone = torchvision.models.resnet18()
    backbone.fc = torch.nn.Identity()
    backbone.load_state_dict(torch.load(exported, weights_only=True), strict=True)

    report = tmp_path / "probe.json"
    genrep(
        "probe", run, "digits", "--protocol", "knn", "--k", "5", "--size", "32",
        "--workers", "0", "--out", report,
    )  # fmt: skip
    probed = json.loads(report.read_text())
    assert probed["checkpoint"]["sha256"] == sha256_file(run / "backbone.pth")
    assert probed["checkpoint"]["arch"] == "resnet18" and probed["protocol"] == "knn"
    assert 0 <= probed["metrics"]["top1"] <= 100


def readme_command() -> list[list[str]]:
    """The README's fresh-machine command, split into its `&&` steps."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("## On a fresh machine") :]
    line = section[section.index("```\n") + 4 :].split("\n", 1)[0]
    return [shlex.split(step) for step in line.split("&&")]


# Flags appended to the README's steps to run them in seconds (click keeps an option's last value).
SMALL = {
    "genrep-generate": ["--n", "48", "--shard-size", "16", "--model-option", "resolution=32"],
    "genrep-train": ["--steps", "2", "--batch-size", "16", "--workers", "0", "--no-progress"],
    "genrep-probe": ["--size", "32", "--workers", "0"],
}


def test_the_readme_command_installs_trains_and_ends_with_a_photos_probe_with_its_baseline():
    steps = readme_command()
    assert steps[0][:3] == ["python3", "-m", "venv"]
    assert ["pip", "install", "-e", "."] in steps
    probe = steps[-1]
    assert probe[:3] == ["genrep-probe", "runs/demo", "photos"]
    assert probe[probe.index("--protocol") + 1] == "knn" and "--baseline" not in probe


def test_the_readme_command_runs_and_prints_metric_baseline_and_lift(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = ""
    for step in readme_command():
        if step[0].startswith("genrep-"):
            output = genrep(
                *step[0].removeprefix("genrep-").split(), *step[1:], *SMALL.get(step[0], [])
            )
    report = json.loads((tmp_path / "runs/demo/probe-knn.json").read_text())
    assert report["dataset"]["label"] == "photos" and report["baseline"]["kind"] == "random-init"
    top1, baseline = report["metrics"]["top1"], report["baseline"]["metrics"]["top1"]
    assert (
        f"demo on photos (knn): top1 {top1:.2f} (random init {baseline:.2f}, "
        f"lift {top1 - baseline:+.2f})" in output
    )
