"""The three stages chained on real output, as a user runs them: generate -> verify -> train ->
export -> probe, each through its command line, each reading only what the previous one wrote."""

from __future__ import annotations

import json

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
