"""Checkpoint forms, dataset layouts and the feature cache of genrep-probe."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import yaml
from probe_fixtures import (
    backbone_state,
    write_imagefolder,
    write_run_folder,
    write_stanford_cars,
    write_voc07,
)

from genrep.errors import CheckpointError, DataError, UsageError
from genrep.evaluate.datasets import DATASETS
from genrep.evaluate.features import FeatureCache, FrozenFeatures, Preprocessing
from genrep.io import sha256_file
from genrep.runs import load_backbone

# ---------------------------------------------------------------------------------------------- checkpoints


def same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(model.state_dict()[key], value) for key, value in state.items())


def test_run_folder_training_checkpoint_and_state_dict_give_the_same_encoder(tmp_path):
    run = write_run_folder(tmp_path / "run", arch="resnet18", seed=3)
    state = backbone_state("resnet18", seed=3)
    from_run = load_backbone(run)
    assert (from_run.arch, from_run.kind, from_run.feature_dim) == ("resnet18", "run-folder", 512)
    assert from_run.sha256 == sha256_file(run / "backbone.pth")
    assert same_weights(from_run.model, state)

    from_checkpoint = load_backbone(run / "checkpoint.pt")
    assert (from_checkpoint.arch, from_checkpoint.kind, from_checkpoint.step) == (
        "resnet18",
        "training-checkpoint",
        7,
    )
    assert same_weights(from_checkpoint.model, state)

    from_state = load_backbone(run / "backbone.pth", arch="resnet18")
    assert from_state.kind == "state-dict" and same_weights(from_state.model, state)
    assert not from_state.model.training and not any(
        p.requires_grad for p in from_state.model.parameters()
    )


def test_state_dict_prefixes_and_fc_head_are_stripped(tmp_path):
    state = backbone_state("resnet18", seed=1)
    wrapped = {f"module.backbone.{key}": value for key, value in state.items()}
    wrapped["module.backbone.fc.weight"] = torch.zeros(10, 512)
    wrapped["module.backbone.fc.bias"] = torch.zeros(10)
    torch.save({"state_dict": wrapped}, tmp_path / "moco.pth")
    encoder = load_backbone(tmp_path / "moco.pth", arch="resnet18")
    assert same_weights(encoder.model, state) and isinstance(encoder.model.fc, torch.nn.Identity)


def test_bare_state_dict_defaults_to_resnet50_and_names_the_arch_it_fits(tmp_path):
    torch.save(backbone_state("resnet18"), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError) as caught:
        load_backbone(tmp_path / "r18.pth")
    assert str(caught.value) == (
        f"{tmp_path / 'r18.pth'} holds torchvision resnet18 weights, not resnet50; "
        "pass --arch resnet18"
    )
    # Weights that fit no torchvision ResNet: one example key of each kind of mismatch.
    state = backbone_state("resnet18")
    state["extra.weight"] = state.pop("layer1.0.conv1.weight")
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError) as caught:
        load_backbone(tmp_path / "odd.pth", arch="resnet18")
    assert str(caught.value).endswith(
        "does not fit torchvision resnet18 (missing: layer1.0.conv1.weight; unexpected: "
        "extra.weight); pass the right --arch"
    )


def test_a_run_folders_backbone_file_takes_the_arch_and_config_of_its_run(tmp_path):
    run = write_run_folder(tmp_path / "run", arch="resnet18", seed=2)
    encoder = load_backbone(run / "backbone.pth")
    assert (encoder.arch, encoder.kind) == ("resnet18", "state-dict")
    assert encoder.training_config == {"arch": "resnet18", "lr": 0.03}
    assert same_weights(encoder.model, backbone_state("resnet18", seed=2))
    # An explicit --arch wins over the folder's config (here, wrongly: the weights say so).
    with pytest.raises(CheckpointError, match="holds torchvision resnet18 weights, not resnet34"):
        load_backbone(run / "backbone.pth", arch="resnet34")
    # The config is read as untrusted YAML: aliases are refused in one line.
    (run / "config.yaml").write_text("a: &x resnet18\narch: *x\n")
    with pytest.raises(CheckpointError, match="YAML aliases"):
        load_backbone(run / "backbone.pth")


def test_arch_flag_cannot_contradict_the_run_config(tmp_path):
    run = write_run_folder(tmp_path / "run")
    with pytest.raises(CheckpointError, match="--arch resnet50 contradicts"):
        load_backbone(run, arch="resnet50")


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoints_that_need_pickle_are_refused(tmp_path):
    torch.save({"backbone": Payload(), "config": {"arch": "resnet18"}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="asks for the Python global posix.system"):
        load_backbone(tmp_path / "evil.pt")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth is not a checkpoint or state dict"):
        load_backbone(tmp_path / "garbage.pth")


def test_incomplete_run_folder_and_unknown_arch_are_explained(tmp_path):
    run = write_run_folder(tmp_path / "run")
    (run / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="expected backbone.pth and config.yaml"):
        load_backbone(run)
    with pytest.raises(UsageError, match="unknown --arch 'resnet5'; choose a torchvision ResNet"):
        load_backbone(run / "backbone.pth", arch="resnet5")


# ---------------------------------------------------------------------------------------------- datasets


def test_imagefolder_layout(tmp_path):
    dataset = DATASETS.build("imagefolder", root=write_imagefolder(tmp_path / "in100", classes=3))
    assert dataset.classes == ["class0", "class1", "class2"] and dataset.label == "in100"
    assert [len(dataset.items[s]) for s in dataset.splits] == [24, 12]
    assert dataset.targets["val"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert dataset.load_image("val", 0).mode == "RGB"


def test_imagefolder_val_classes_must_exist_in_train(tmp_path):
    root = write_imagefolder(tmp_path / "data", classes=2)
    (root / "val" / "class9").mkdir()
    with pytest.raises(DataError, match="val/ has classes that train/ lacks: class9"):
        DATASETS.build("imagefolder", root=root)


def test_voc07_labels_come_from_annotations_with_difficult_ignored(tmp_path):
    dataset = DATASETS.build("voc07", root=write_voc07(tmp_path, trainval=40, test=20))
    assert dataset.splits == ("trainval", "test") and dataset.task == "multilabel"
    first = dataset.targets["trainval"][0]  # objects: aeroplane, cat, motorbike + a difficult boat
    assert {dataset.classes[c] for c in np.flatnonzero(first == 1)} == {
        "aeroplane",
        "cat",
        "motorbike",
    }
    assert [dataset.classes[c] for c in np.flatnonzero(first == -1)] == ["boat"]
    assert (dataset.targets["trainval"] == 1).sum(axis=0).tolist() == [6] * 20
    # The VOC2007 folder itself is accepted as --root too.
    assert (
        DATASETS.build("voc2007", root=tmp_path / "VOCdevkit" / "VOC2007").identity()["fingerprint"]
        == (dataset.identity()["fingerprint"])
    )


def test_stanford_cars_devkit_layout(tmp_path):
    dataset = DATASETS.build("stanford-cars", root=write_stanford_cars(tmp_path, classes=3))
    assert dataset.classes == ["Car 0", "Car 1", "Car 2"] and dataset.linear_epochs == 100
    assert dataset.items["test"][:2] == ["cars_test/00001.jpg", "cars_test/00002.jpg"]
    assert dataset.targets["train"][:4].tolist() == [0, 1, 2, 0]


def test_digits_split_is_stratified_and_fixed():
    first, second = DATASETS.build("digits"), DATASETS.build("digits")
    assert first.identity() == second.identity()
    assert [len(first.items[s]) for s in first.splits] == [1257, 540]
    assert np.bincount(first.targets["val"]).min() >= 50
    assert not set(first.items["train"]) & set(first.items["val"])
    image = first.load_image("train", 0)
    assert image.size == (8, 8) and image.mode == "RGB"


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        (
            "imagefolder",
            lambda root: (root / "train").mkdir(),
            "expects train/<class>/<image> and val/",
        ),
        ("voc07", lambda root: (root / "JPEGImages").mkdir(), "expects VOCdevkit/VOC2007"),
        (
            "stanford-cars",
            lambda root: (root / "cars_train").mkdir(),
            "expects cars_train/, cars_test/, devkit/",
        ),
    ],
)
def test_malformed_folders_name_the_expected_layout(tmp_path, name, make, expected):
    make(tmp_path)
    with pytest.raises(DataError, match=f"dataset {name} {expected}"):
        DATASETS.build(name, root=tmp_path)
    with pytest.raises(UsageError, match="needs --root DIR"):
        DATASETS.build(name, root=None)


def test_missing_image_files_are_named(tmp_path):
    root = write_voc07(tmp_path, trainval=40, test=20)
    (root / "VOCdevkit" / "VOC2007" / "JPEGImages" / "005003.jpg").unlink()
    with pytest.raises(DataError, match="005003.jpg is missing"):
        DATASETS.build("voc07", root=root)


def test_registry_lists_every_layout():
    assert {"imagefolder", "voc07", "stanford-cars", "digits"} <= set(DATASETS.names())


# ---------------------------------------------------------------------------------------------- feature cache


def test_features_are_cached_per_checkpoint_dataset_split_and_transform(tmp_path, monkeypatch):
    import genrep.evaluate.features as features_module

    calls = []
    real_extract = features_module.extract_features
    monkeypatch.setattr(
        features_module,
        "extract_features",
        lambda *a, **k: calls.append(k["desc"]) or real_extract(*a, **k),
    )
    run = write_run_folder(tmp_path / "run")
    dataset = DATASETS.build(
        "imagefolder", root=write_imagefolder(tmp_path / "data", classes=2, train_per_class=3)
    )
    cache = FeatureCache(tmp_path / "cache")

    def features(size: int, checkpoint=run) -> FrozenFeatures:
        return FrozenFeatures(
            load_backbone(checkpoint),
            dataset,
            Preprocessing(size),
            torch.device("cpu"),
            cache,
            workers=0,
        )

    first = features(32).eval_features("train")
    assert first.shape == (6, 512) and first.dtype == np.float32
    np.testing.assert_array_equal(features(32).eval_features("train"), first)
    assert calls == ["train features"]
    features(40).eval_features("train")  # another transform
    features(32).eval_features("val")  # another split
    features(32, run / "checkpoint.pt").eval_features("train")  # another checkpoint file
    assert len(calls) == 4 and len(list((tmp_path / "cache").glob("*.npy"))) == 4
    saved = next((tmp_path / "cache").glob("*.json"))
    assert yaml.safe_load(saved.read_text())["checkpoint_sha256"] in {
        sha256_file(run / "backbone.pth"),
        sha256_file(run / "checkpoint.pt"),
    }
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary files left behind


def test_a_corrupt_cache_entry_is_recomputed(tmp_path):
    run = write_run_folder(tmp_path / "run")
    dataset = DATASETS.build(
        "imagefolder", root=write_imagefolder(tmp_path / "data", classes=2, train_per_class=3)
    )
    inputs = FrozenFeatures(
        load_backbone(run),
        dataset,
        Preprocessing(32),
        torch.device("cpu"),
        FeatureCache(tmp_path / "cache"),
        workers=0,
    )
    good = inputs.eval_features("train")
    path = inputs.cache.path(inputs.cache_key("train"))
    np.save(path, np.zeros((2, 3), dtype=np.float32))  # wrong number of rows
    np.testing.assert_allclose(inputs.eval_features("train"), good, rtol=1e-5, atol=1e-6)
    assert np.load(path).shape == good.shape


def test_preprocessing_follows_the_encoders_training_and_the_protocol():
    from genrep.evaluate.protocols import PROTOCOLS

    voc07, linear = PROTOCOLS.get("voc07"), PROTOCOLS.get("linear")
    # A bare state dict: the released probe (RandomResizedCrop 112 of scale 0.2-1; Resize 128,
    # CenterCrop 112).
    bare = Preprocessing.resolve(None, linear.input_size, linear.crop_fraction)
    assert (bare.size, bare.resize, bare.crop_scale) == (112, 128, (0.2, 1.0))
    assert bare.origin == {"size": "default", "crop_fraction": "default", "crop_scale": "default"}
    # A genrep run: its own input size and its Tx recipe's crop scale.
    simclr_run = {"arch": "resnet18", "input_size": 128, "tx": "simclr"}
    run = Preprocessing.resolve(simclr_run, linear.input_size, linear.crop_fraction)
    assert (run.size, run.resize, run.crop_scale) == (128, 146, (0.08, 1.0))
    assert run.origin["size"] == run.origin["crop_scale"] == "training config"
    genrep_run = Preprocessing.resolve({"input_size": 112, "tx": "genrep"})
    assert (genrep_run.size, genrep_run.crop_scale) == (112, (0.2, 1.0))
    # VOC07: the released transfer code's 224 px features (Resize 224, CenterCrop 224) ...
    voc = Preprocessing.resolve(simclr_run, voc07.input_size, voc07.crop_fraction)
    assert (voc.size, voc.resize, voc.origin["size"]) == (224, 224, "protocol")
    # ... unless told otherwise; flags always win.
    told = Preprocessing.resolve(simclr_run, voc07.input_size, voc07.crop_fraction, 96, 0.875)
    assert (told.size, told.resize, told.origin["size"]) == (96, 110, "flag")
    assert Preprocessing.resolve(None, crop_scale=(0.5, 1.0)).crop_scale == (0.5, 1.0)
    described = run.describe()
    assert described["crop_scale"] == [0.08, 1.0] and described["size"] == 128
    assert described["train_transform"] == "randomresizedcrop128-scale0.08-1-flip"
