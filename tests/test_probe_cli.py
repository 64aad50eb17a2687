"""genrep-probe end to end through its click CLI, with tiny encoders on tiny datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from probe_fixtures import (
    class_image,
    write_imagefolder,
    write_images_as_imagefolder,
    write_run_folder,
    write_stanford_cars,
    write_voc07,
)

from genrep.evaluate.cli import main
from genrep.evaluate.datasets import DATASETS, ProbeDataset
from genrep.evaluate.protocols import PROTOCOLS
from genrep.evaluate.report import format_table
from genrep.io import sha256_file

FAST = "--size 32 --workers 0 --baseline none"
#: FAST with the random-init baseline
WITH_BASELINE = "--size 32 --workers 0"


@pytest.fixture(autouse=True)
def genrep_home(tmp_path, monkeypatch):
    """Keep the default feature cache ($GENREP_HOME/features) out of the user's home."""
    monkeypatch.setenv("GENREP_HOME", str(tmp_path / "genrep-home"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_run_folder(tmp_path_factory.mktemp("runs") / "run-a", arch="resnet18", seed=0)


def probe(*args, expect: int = 0):
    """Invoke genrep-probe; string arguments are split on spaces, paths are passed whole."""
    argv = [part for arg in args for part in (arg.split() if isinstance(arg, str) else [str(arg)])]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == expect, result.output + (result.stderr if expect == 0 else "")
    return result


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_knn_on_an_imagefolder_writes_report_and_resolved_config(tmp_path, run_dir):
    data = write_imagefolder(tmp_path / "colours", classes=3)
    out = tmp_path / "reports" / "knn.json"
    cache = tmp_path / "cache"
    result = probe(
        run_dir,
        "imagefolder --protocol knn",
        WITH_BASELINE,
        "--root",
        data,
        "--cache-dir",
        cache,
        "--out",
        out,
    )
    report = read(out)
    assert report["protocol"] == "knn" and report["primary_metric"] == "top1"
    assert report["settings"] == {
        "k": 200,
        "temperature": 0.07,
        "metric": "cosine",
        "weighting": "exp(sim/T)",
    }
    assert report["metrics"]["top1"] == 100.0  # solid colours: even random features separate them
    assert report["checkpoint"]["sha256"] == sha256_file(run_dir / "backbone.pth")
    assert report["checkpoint"]["kind"] == "run-folder" and report["label"] == "run-a"
    assert report["dataset"]["label"] == "colours" and report["dataset"]["splits"] == {
        "train": 24,
        "val": 12,
    }
    assert (
        report["preprocessing"]["eval_transform"] == "resize37-centercrop32-bilinear-imagenet-norm"
    )
    config = yaml.safe_load((out.parent / "knn.config.yaml").read_text())
    assert config == report["config"]
    assert (
        config["checkpoint"] == str(run_dir.resolve())
        and config["protocol"] == "knn"
        and config["k"] == 200
    )
    # run-a holds random_backbone(resnet18, 0), the very baseline of --seed 0: no lift at all.
    assert report["baseline"]["kind"] == "random-init" and report["baseline"]["seed"] == 0
    assert report["baseline"]["metrics"] == report["metrics"]
    assert report["lift"] == {"top1": 0.0} and report["trained_on"]["arch"] == "resnet18"
    assert result.stdout.splitlines()[0] == (
        "run-a on colours (knn): top1 100.00 (random init 100.00, lift +0.00)"
    )
    assert "train features: computed" in result.stderr
    assert "resize 37 + center crop 32" in result.stderr  # kNN trains on no crops:
    assert "crop scale" not in result.stderr  # their scale is not logged


def test_linear_through_the_frozen_encoder_with_augmentation(tmp_path, run_dir):
    data = write_imagefolder(tmp_path / "colours", classes=3)
    out = tmp_path / "linear.json"
    flags = "imagefolder --protocol linear --epochs 2 --batch-size 8 --lr 0.5"
    probe(run_dir / "checkpoint.pt", flags, FAST, "--root", data, "--out", out)
    report = read(out)
    assert report["settings"]["train_input"] == "random-resized-crop + flip"
    assert report["settings"]["epochs"] == 2 and report["settings"]["reported_epoch"] == "final"
    assert (
        report["checkpoint"]["kind"] == "training-checkpoint" and report["checkpoint"]["step"] == 7
    )
    assert set(report["metrics"]) == {"top1"} and 0.0 <= report["metrics"]["top1"] <= 100.0
    # Training images went through the encoder with augmentation: only val features were cached.
    assert len(list((tmp_path / "genrep-home" / "features").glob("*.npy"))) == 1


def test_the_input_size_and_crop_scale_come_from_the_run_config(tmp_path):
    run = write_run_folder(tmp_path / "run", arch="resnet18")
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "input_size": 32, "tx": "simclr"}))
    data = write_imagefolder(tmp_path / "colours", classes=2, train_per_class=4, val_per_class=2)
    out = tmp_path / "linear.json"
    flags = "imagefolder --protocol linear --epochs 1 --batch-size 8 --workers 0"
    result = probe(run, flags, "--root", data, "--out", out)
    assert read(out)["preprocessing"] == {
        "size": 32,
        "crop_fraction": 0.875,
        "crop_scale": [0.08, 1.0],
        "eval_transform": "resize37-centercrop32-bilinear-imagenet-norm",
        "train_transform": "randomresizedcrop32-scale0.08-1-flip",
        "from": {
            "size": "training config",
            "crop_fraction": "default",
            "crop_scale": "training config",
        },
    }
    assert "input 32 px (training config)" in result.stderr
    assert "linear training crop scale 0.08-1 (training config)" in result.stderr
    probe(run, flags, "--root", data, "--crop-scale 0.5,0.2", expect=2)


def test_cached_linear_on_stanford_cars_then_knn_reuses_the_features(tmp_path, run_dir):
    data = write_stanford_cars(tmp_path / "cars", classes=3)
    common = [run_dir, "cars", FAST, "--root", data]
    cached = probe(*common, "--cached --epochs 30 --lr 0.3 --out", tmp_path / "linear.json")
    assert "crop scale" not in cached.stderr  # --cached trains on center crops
    report = read(tmp_path / "linear.json")
    assert report["dataset"]["name"] == "stanford-cars" and report["dataset"]["splits"] == {
        "train": 18,
        "test": 9,
    }
    assert (
        report["settings"]["train_input"] == "cached center-crop features"
        and report["settings"]["lr"] == 0.3
    )
    assert report["metrics"]["top1"] == 100.0
    second = probe(*common, "--protocol knn")
    assert "train features: cached" in second.stderr and "test features: cached" in second.stderr
    assert "computed" not in second.stderr


def test_voc07_end_to_end_defaults_to_the_voc07_protocol(tmp_path, run_dir):
    root = write_voc07(tmp_path / "voc", trainval=40, test=20)
    out = tmp_path / "voc.json"
    probe(run_dir, "voc07 --costs 0.1,1,10", FAST, "--root", root, "--out", out)
    report = read(out)
    assert report["protocol"] == "voc07" and report["primary_metric"] == "mAP"
    assert report["settings"]["costs"] == [0.1, 1.0, 10.0] and report["settings"]["folds"] == 3
    assert [row["class"] for row in report["details"]["per_class"]][:3] == [
        "aeroplane",
        "bicycle",
        "bird",
    ]
    assert all(row["C"] in (0.1, 1.0, 10.0) for row in report["details"]["per_class"])
    assert 0.0 < report["metrics"]["mAP"] <= 100.0 and 0.0 < report["metrics"]["mAP_area"] <= 100.0


def digits_as_imagefolder(root: Path, shuffle_labels: bool) -> Path:
    """The first digits of each split (600 train, 300 val: chance accuracy has a 1.7% spread)."""
    digits = DATASETS.build("digits")
    rng = np.random.default_rng(0)
    images = {}
    for split, count in zip(digits.splits, (600, 300), strict=True):
        labels = digits.targets[split][:count]
        labels = rng.permutation(labels) if shuffle_labels else labels
        images[split] = [
            (np.asarray(digits.load_image(split, i).convert("L")), int(labels[i]))
            for i in range(count)
        ]
    return write_images_as_imagefolder(root, images)


def test_random_encoder_is_near_chance_on_shuffled_labels_but_not_on_true_ones(tmp_path, run_dir):
    scores = {}
    for shuffle in (False, True):
        data = digits_as_imagefolder(tmp_path / f"digits-shuffled-{shuffle}", shuffle)
        out = tmp_path / f"{shuffle}.json"
        probe(run_dir, "imagefolder --protocol knn", FAST, "--root", data, "--out", out)
        scores[shuffle] = read(out)["metrics"]["top1"]
    assert scores[True] < 20.0  # chance: 10%
    assert scores[False] > 50.0


def test_digits_needs_no_files_and_tables_compare_reports(tmp_path, run_dir):
    other = write_run_folder(tmp_path / "run-b", arch="resnet18", seed=1)
    runs = (
        (run_dir, "knn", WITH_BASELINE),
        (other, "knn", WITH_BASELINE),
        (other, "linear --cached --epochs 3", FAST),
    )
    for run, protocol, flags in runs:
        out = tmp_path / f"{run.name}-{protocol.split()[0]}.json"
        result = probe(run, "digits --protocol", protocol, flags, "--out", out)
    reports = sorted(tmp_path.glob("*.json"))
    knn_a, knn_b = read(reports[0]), read(reports[1])
    # One baseline for both encoders: measured once, then read from $GENREP_HOME/baselines.
    assert knn_a["baseline"]["cached"] is False and knn_b["baseline"]["cached"] is True
    assert knn_b["baseline"]["metrics"] == knn_a["baseline"]["metrics"] == knn_a["metrics"]
    top1 = knn_b["metrics"]["top1"]
    assert knn_b["lift"]["top1"] == pytest.approx(top1 - knn_a["metrics"]["top1"])
    assert read(reports[2])["baseline"] is None and read(reports[2])["lift"] is None
    assert "lift" not in result.stdout
    lines = probe("table --format markdown", *reports).output.strip().splitlines()
    assert lines[0] == "| encoder | digits knn top1 | lift | digits linear top1 | lift |"
    assert lines[2] == f"| run-a | {knn_a['metrics']['top1']:.2f} | +0.00 | - | - |"
    assert lines[3].startswith(f"| run-b | {top1:.2f} | {knn_b['lift']['top1']:+.2f} | ")
    baseline = knn_a["baseline"]["metrics"]["top1"]
    assert lines[4] == f"| random init resnet18 (seed 0) | {baseline:.2f} | - | - | - |"
    assert len(lines) == 5
    wide = probe("table --all-metrics", *reports).output.splitlines()[0].split("  ")
    assert [c.strip() for c in wide if c.strip()] == [
        "encoder",
        "digits knn top1",
        "lift",
        "digits knn top5",
        "lift",
        "digits linear top1",
        "lift",
        "digits linear top5",
        "lift",
    ]


def test_table_keeps_two_checkpoints_with_one_label_apart():
    def report(sha: str, value: float) -> dict:
        return {
            "label": "run",
            "checkpoint": {"sha256": sha},
            "dataset": {"label": "digits"},
            "protocol": "knn",
            "primary_metric": "top1",
            "metrics": {"top1": value},
        }

    text = format_table([report("a" * 64, 50.0), report("b" * 64, 60.0)])
    assert "run@aaaaaaaa" in text and "run@bbbbbbbb" in text and "60.00" in text


def test_a_yaml_config_sets_every_flag_and_the_saved_config_replays(tmp_path, run_dir):
    data = write_imagefolder(tmp_path / "colours", classes=2, train_per_class=4, val_per_class=2)
    config = tmp_path / "probe.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "checkpoint": str(run_dir),
                "dataset": "imagefolder",
                "root": str(data),
                "protocol": "knn",
                "k": 3,
                "size": 32,
                "workers": 0,
                "cache-dir": str(tmp_path / "cache"),
                "out": str(tmp_path / "a.json"),
            }
        )
    )
    probe("--config", config)  # a config file never chooses where to write
    assert not (tmp_path / "a.json").exists()
    probe("--config", config, "--out", tmp_path / "a.json")
    first = read(tmp_path / "a.json")
    assert first["settings"]["k"] == 3 and first["config"]["size"] == 32
    probe("--config", tmp_path / "a.config.yaml", "--out", tmp_path / "a.json", "--overwrite")
    assert read(tmp_path / "a.json")["metrics"] == first["metrics"]


def test_table_takes_a_config_and_flags_still_win(tmp_path, run_dir):
    out = tmp_path / "knn.json"
    probe(run_dir, "digits --protocol knn --k 5", FAST, "--out", out)
    config = tmp_path / "table.yaml"
    config.write_text(
        yaml.safe_dump({"reports": [str(out)], "format": "markdown", "all-metrics": True})
    )
    lines = probe("table --config", config).output.strip().splitlines()
    assert lines[0] == "| encoder | digits knn top1 | digits knn top5 |" and len(lines) == 3
    text = probe("table --format text --config", config).output.splitlines()
    assert text[0].split() == ["encoder", "digits", "knn", "top1", "digits", "knn", "top5"]
    config.write_text(yaml.safe_dump({"reports": [str(out)], "colour": "red"}))
    assert "unknown key 'colour'" in probe("table --config", config, expect=2).output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("digits --protocol linear --k 5", "Error: --k does not apply to --protocol linear"),
        ("digits --protocol knn --crop-scale 0.5,1", "Error: --crop-scale does not apply to --"),
        ("digits --cached --crop-scale 0.5,1", "Error: --crop-scale does not apply to --cached"),
        ("digits --protocol voc07", "needs a multilabel dataset but digits is multiclass"),
        ("imagefolder", "Error: dataset imagefolder needs --root DIR holding train/<class>/"),
        ("digits --device cuda", "Error: --device cuda: torch sees no CUDA GPU here; use --device"),
        ("digits --device gpu", "Error: --device 'gpu' is not a device; use auto, cpu, cuda"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(run_dir, args, message, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = probe(run_dir, args, FAST, expect=2)
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_an_unreadable_checkpoint_is_one_line_and_exit_1(tmp_path):
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"not a checkpoint")
    result = probe(garbage, "digits --protocol knn", FAST, expect=1)
    assert result.output.startswith(f"Error: {garbage} is not a checkpoint or state dict")
    assert "pass a genrep-train run folder" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_dataset_and_protocol_choices_come_from_the_registries(run_dir):
    help_text = " ".join(probe("probe --help").output.split())
    assert f"--protocol [{'|'.join(PROTOCOLS.canonical_names())}]" in help_text
    assert all(name in help_text for name in DATASETS.canonical_names())
    result = probe(run_dir, "mnist", FAST, expect=2)
    assert "unknown dataset 'mnist'; choose one of: " + ", ".join(DATASETS.names()) in result.output
    assert "unknown protocol 'svm'" in probe(run_dir, "digits --protocol svm", expect=2).output


@pytest.fixture
def colours_dataset(monkeypatch):
    """A dataset class registered the way a dataset module registers one, removed afterwards."""
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))

    @DATASETS.register("colours")
    class Colours(ProbeDataset):
        layout = "nothing: the images are drawn in memory"
        needs_root = False

        def _scan(self) -> None:
            self.classes = ["red", "green"]
            for split, count in (("train", 6), ("val", 3)):
                self.items[split] = [f"{split}/{i}" for i in range(2 * count)]
                self.targets[split] = np.arange(2 * count) % 2

        def load_image(self, split: str, index: int):
            return class_image(int(self.targets[split][index]), index)

    return Colours


def test_a_registered_dataset_is_probed_without_touching_the_cli(
    tmp_path, run_dir, colours_dataset
):
    out = tmp_path / "colours.json"
    probe(run_dir, "colours --protocol knn --k 3", FAST, "--out", out)
    report = read(out)
    assert report["dataset"]["name"] == "colours" and report["dataset"]["splits"] == {
        "train": 12,
        "val": 6,
    }
    assert report["metrics"]["top1"] == 100.0


def test_existing_reports_are_not_overwritten_unless_asked(tmp_path, run_dir):
    out = tmp_path / "report.json"
    out.write_text("precious")
    result = probe(run_dir, "digits --protocol knn", FAST, "--out", out, expect=2)
    assert "already exists; pass --overwrite" in result.output and out.read_text() == "precious"
    (tmp_path / "not-a-report.json").write_text("{}")
    result = probe("table", tmp_path / "not-a-report.json", expect=1)
    assert "is not a genrep-probe report" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_is_named_in_one_line(tmp_path, run_dir, workers):
    """Also when a DataLoader worker process reads it."""
    data = write_imagefolder(tmp_path / "data", classes=2, train_per_class=2, val_per_class=1)
    (data / "train" / "class0" / "000.png").write_bytes(b"not an image")
    args = ["imagefolder --protocol knn", FAST, "--workers", workers, "--root", data]
    result = probe(run_dir, *args, expect=1)
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in result.output
    bad = data / "train" / "class0" / "000.png"
    assert error[0].startswith(
        f"Error: cannot read image {bad.resolve()} (undecodable image: unknown format or damaged header)"
    )


@pytest.mark.parametrize("fmt", ["text", "markdown", "csv", "json"])
def test_table_escapes_control_characters_read_from_a_report(tmp_path, fmt):
    """A report is untrusted: its strings reach the terminal escaped, never as raw controls."""
    hostile = "x\x1b[2J\r\u202e"
    report = {
        "format": "genrep-probe-report",
        "format_version": 2,
        "label": f"run{hostile}",
        "protocol": f"knn{hostile}",
        "primary_metric": f"top1{hostile}",
        "metrics": {f"top1{hostile}": 50.0},
        "dataset": {"label": f"digits{hostile}"},
        "checkpoint": {"sha256": f"{'a' * 8}{hostile}", "arch": f"resnet18{hostile}"},
        "baseline": {"arch": f"resnet18{hostile}", "seed": hostile, "metrics": {}},
        "lift": {f"top1{hostile}": 1.0},
        "trained_on": {f"data{hostile}": hostile},
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    output = probe("table --all-metrics --format", fmt, path).output
    assert not any(ch in output for ch in "\x1b\r\u202e")
    if fmt != "json":  # JSON writes them as \u001b etc., which a terminal shows as text
        assert "runx\\x1b[2J\\r\\u202e" in output
    assert format_table([report], fmt=fmt).count("\n") == output.rstrip("\n").count("\n")


def test_the_summary_line_escapes_control_characters_of_the_label(tmp_path, run_dir):
    result = probe(run_dir, "digits --protocol knn --k 5 --name run\x1b[2J", FAST)
    assert result.stdout.startswith("run\\x1b[2J on digits (knn): top1 ")
