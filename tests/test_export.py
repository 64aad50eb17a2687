"""`genrep-export` to safetensors: the same backbone, loadable by torchvision, timm and genrep."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from genrep.encoders import backbone_state, build_backbone, resnet_names
from genrep.errors import CheckpointError
from genrep.runs import load_backbone, random_backbone
from genrep.train.cli import export_main


@pytest.fixture
def checkpoint(tmp_path):
    """A genrep-train checkpoint of a resnet18 (as the trainer saves it)."""
    path = tmp_path / "checkpoint.pt"
    model = random_backbone("resnet18", seed=3)
    torch.save({"backbone": backbone_state(model), "config": {"arch": "resnet18"}, "step": 7}, path)
    return path, model


def export(*args):
    result = CliRunner().invoke(export_main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_safetensors_by_extension_or_flag(checkpoint, tmp_path):
    path, model = checkpoint
    export(path, tmp_path / "backbone.safetensors")
    export(path, tmp_path / "weights.bin", "--format", "safetensors")
    export(path, tmp_path / "backbone.pth")
    expected = backbone_state(model)
    for name in ("backbone.safetensors", "weights.bin"):
        with safe_open(str(tmp_path / name), framework="pt") as f:
            assert f.metadata()["arch"] == "resnet18"
            assert set(f.keys()) == set(expected)
            assert all(torch.equal(f.get_tensor(k), expected[k]) for k in expected)
    assert torch.load(tmp_path / "backbone.pth", weights_only=True).keys() == expected.keys()


def test_genrep_loads_an_exported_safetensors(checkpoint, tmp_path):
    path, model = checkpoint
    export(path, tmp_path / "b.safetensors")
    backbone = load_backbone(tmp_path / "b.safetensors")
    assert backbone.arch == "resnet18" and backbone.kind == "safetensors"
    images = torch.randn(2, 3, 64, 64)
    assert torch.equal(backbone.model(images), model(images))
    with pytest.raises(CheckpointError, match="contradicts"):
        load_backbone(tmp_path / "b.safetensors", arch="resnet50")
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_backbone(tmp_path / "bad.safetensors")


def test_timm_loads_it_with_the_documented_one_liner(checkpoint, tmp_path):
    timm = pytest.importorskip("timm")
    path, model = checkpoint
    out = tmp_path / "b.safetensors"
    export(path, out)
    loaded = timm.create_model("resnet18", num_classes=0, checkpoint_path=str(out)).eval()
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(images), model(images))


def test_every_arch_has_timms_key_names():
    """torchvision's and timm's ResNets name their parameters alike (conv1, bn1, layerN.M.convK,
    downsample.0/1), so an export loads into either without renaming."""
    timm = pytest.importorskip("timm")
    for arch in resnet_names():
        with torch.device("meta"):
            ours = build_backbone(arch).state_dict()
            theirs = timm.create_model(arch, num_classes=0).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
