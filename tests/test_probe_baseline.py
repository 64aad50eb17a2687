"""The random-init baseline and lift of every probe report, what a report records about the
encoder's training data, and the table formats."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from probe_fixtures import backbone_state, write_imagefolder, write_run_folder
from stage_helpers import train_tiny

from genrep.evaluate.baseline import BaselineStore
from genrep.evaluate.cli import main
from genrep.evaluate.report import read_report

FAST = ["--size", "32", "--workers", "0", "--protocol", "knn"]


@pytest.fixture(autouse=True)
def genrep_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GENREP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("data") / "colours", classes=3)


def probe(*args, expect: int = 0):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == expect, result.output
    return result


def probe_report(tmp_path: Path, checkpoint: Path, *flags, name: str = "r.json") -> dict:
    out = tmp_path / name
    probe(checkpoint, *flags, "--out", out, "--overwrite")
    return read_report(out)


def test_the_baseline_is_cached_under_a_key_that_pins_what_it_depends_on(
    tmp_path, colours, genrep_home
):
    run_a = write_run_folder(tmp_path / "run-a", seed=3)
    run_b = write_run_folder(tmp_path / "run-b", seed=4)
    common = ["imagefolder", "--root", colours, *FAST]
    first = probe_report(tmp_path, run_a, *common, "--k", "5")
    assert first["baseline"]["cached"] is False
    # another encoder of the same architecture, same protocol, dataset and seed: read back
    second = probe_report(tmp_path, run_b, *common, "--k", "5")
    assert second["baseline"]["cached"] is True
    assert second["baseline"]["record"] == first["baseline"]["record"]
    # a protocol setting, the seed or the precision changes the baseline: measured again
    other_k = probe_report(tmp_path, run_b, *common, "--k", "3")
    other_seed = probe_report(tmp_path, run_b, *common, "--k", "5", "--seed", "1")
    bf16 = probe_report(tmp_path, run_b, *common, "--k", "5", "--precision", "bf16")
    assert not any(r["baseline"]["cached"] for r in (other_k, other_seed, bf16))
    assert other_seed["baseline"]["weights_sha256"] != first["baseline"]["weights_sha256"]
    assert len(list((genrep_home / "baselines").glob("*.json"))) == 4
    for report in (first, second, other_k, other_seed, bf16):
        assert report["lift"] == {
            name: value - report["baseline"]["metrics"][name]
            for name, value in report["metrics"].items()
        }


def test_a_corrupt_baseline_record_is_measured_again(tmp_path, colours):
    run = write_run_folder(tmp_path / "run", seed=3)
    first = probe_report(tmp_path, run, "imagefolder", "--root", colours, *FAST)
    Path(first["baseline"]["record"]).write_text("{not json")
    again = probe_report(tmp_path, run, "imagefolder", "--root", colours, *FAST)
    assert again["baseline"]["cached"] is False
    assert again["baseline"]["metrics"] == first["baseline"]["metrics"]


def test_a_bare_state_dict_has_a_baseline_but_no_provenance(tmp_path, colours):
    weights = tmp_path / "weights.pth"
    torch.save(backbone_state("resnet18", seed=0), weights)
    report = probe_report(
        tmp_path, weights, "imagefolder", "--root", colours, *FAST, "--arch", "resnet18"
    )
    assert report["trained_on"] is None and report["checkpoint"]["kind"] == "state-dict"
    assert report["baseline"]["arch"] == "resnet18" and report["lift"] == {"top1": 0.0}
    skipped = probe_report(
        tmp_path, weights, "imagefolder", "--root", colours, *FAST, "--arch", "resnet18",
        "--baseline", "none",
    )  # fmt: skip
    assert skipped["baseline"] is None and skipped["lift"] is None


def test_a_report_records_what_the_encoder_was_trained_on(tmp_path, make_dataset, colours):
    dataset = make_dataset("gauss", "--n", "16", "--shard-size", "8", "--sigma", "0.5")
    run = tmp_path / "run"
    train_tiny(dataset, run, objective="simclr", steps=2)
    report = probe_report(tmp_path, run, "imagefolder", "--root", colours, *FAST)
    trained = report["trained_on"]
    assert {k: trained[k] for k in ("generator", "view", "sigma", "n", "neighbors")} == {
        "generator": "embedded",
        "view": "gaussian",
        "sigma": 0.5,
        "n": 16,
        "neighbors": 1,
    }
    assert {k: trained[k] for k in ("objective", "tx", "steps", "epochs", "batch_size")} == {
        "objective": "simclr",
        "tx": "genrep",
        "steps": 2,
        "epochs": None,
        "batch_size": 8,
    }
    assert trained["datasets_verified"] is True
    assert trained["datasets"][0]["folder"] == str(dataset.resolve())

    # The dataset changed since training: the report says so, and so does the console.
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "0" * 64
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "changed.json"
    result = probe(run, "imagefolder", "--root", colours, *FAST, "--out", out)
    assert read_report(out)["trained_on"]["datasets_verified"] is False
    assert "changed since the run trained on it" in result.stderr

    # The dataset is gone: the run config's own summary is kept.
    shutil.rmtree(dataset)
    result = probe(run, "imagefolder", "--root", colours, *FAST, "--out", out, "--overwrite")
    gone = read_report(out)["trained_on"]
    assert gone["datasets_verified"] is None and gone["generator"] is None
    assert gone["objective"] == "simclr" and gone["n"] == 16 and gone["neighbors"] == 1
    assert "not readable here" in result.stderr


def test_table_formats_put_lift_beside_each_metric(tmp_path, colours):
    run = write_run_folder(tmp_path / "run", seed=3)
    common = ["imagefolder", "--root", colours, *FAST]
    with_baseline = probe_report(tmp_path, run, *common, name="a.json")
    probe_report(tmp_path, run, *common, "--k", "3", "--baseline", "none", name="b.json")
    # a report of format version 1 (no baseline, no provenance) still reads
    old = json.loads((tmp_path / "b.json").read_text())
    for key in ("baseline", "lift", "trained_on"):
        del old[key]
    old.update(format_version=1, label="old")
    (tmp_path / "old.json").write_text(json.dumps(old))
    reports = [tmp_path / "a.json", tmp_path / "old.json"]

    text = probe("table", *reports).stdout.splitlines()
    assert text[0].split() == ["encoder", "colours", "knn", "top1", "lift"]
    value, lift = with_baseline["metrics"]["top1"], with_baseline["lift"]["top1"]
    assert text[2].split() == ["run", f"{value:.2f}", f"{lift:+.2f}"]
    assert text[3].split() == ["old", f"{old['metrics']['top1']:.2f}", "-"]
    assert text[4].split()[:5] == ["random", "init", "resnet18", "(seed", "0)"]

    rows = list(csv.DictReader(io.StringIO(probe("table", "--format", "csv", *reports).stdout)))
    assert [row["encoder"] for row in rows] == ["run", "old"]
    assert float(rows[0]["lift"]) == pytest.approx(lift) and rows[1]["lift"] == ""
    assert rows[0]["trained_on.arch"] == "resnet18" and rows[0]["metric"] == "top1"

    records = json.loads(probe("table", "--format", "json", "--all-metrics", *reports).stdout)
    assert [(r["encoder"], r["metric"]) for r in records] == [("run", "top1"), ("old", "top1")]
    assert records[0]["baseline"] == with_baseline["baseline"]["metrics"]["top1"]
    assert records[1]["baseline"] is None and records[1]["trained_on"] is None


def test_a_baseline_whose_key_holds_tuples_is_read_back(tmp_path):
    # dataset identities and preprocessing hold tuples (photos' crop sides), which JSON stores
    # as lists: the record must still be found, or every probe measures its baseline again
    store = BaselineStore(tmp_path / "baselines")
    key = {"dataset": {"crop_side": (0.3, 0.6)}, "preprocessing": {"crop_scale": (0.2, 1.0)}}
    store.save(key, {"top1": 24.0}, 1.0)
    record = store.load(key)
    assert record is not None and record["metrics"] == {"top1": 24.0}
    assert store.load({**key, "dataset": {"crop_side": (0.3, 0.7)}}) is None
