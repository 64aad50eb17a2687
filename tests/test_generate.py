"""`genrep-generate` end to end on the embedded generator: format, determinism, resume, bad input."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_generate
from PIL import Image

from genrep.errors import UsageError
from genrep.generate.models import build_generator
from genrep.manifest import load_dataset, read_manifest
from genrep.shards import decode_sample, iter_raw_samples


def shard_bytes(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.glob("shard-*.tar"))
    }


def samples(folder: Path):
    _, paths = load_dataset(folder)
    return [decode_sample(raw) for path in paths for raw in iter_raw_samples(path)]


def test_dataset_layout_manifest_and_card(make_dataset):
    out = make_dataset("ds", "--n", "10", "--shard-size", "4", "--seed", "3")
    manifest, paths = load_dataset(out)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert manifest["complete"] and manifest["format_version"] == 2
    assert (
        manifest["generator"]["name"] == "embedded"
        and len(manifest["generator"]["weights_sha256"]) == 64
    )
    assert manifest["view"] == {"name": "gaussian", "params": {"sigma": 0.2, "truncation": 2.0}}
    assert manifest["seed"] == 3 and manifest["n"] == 10
    assert manifest["image"] == {  # the whole 128 px frame, scaled down by --size 32
        "width": 32,
        "height": 32,
        "frame": "full",
        "native_width": 128,
        "native_height": 128,
        "format": "jpg",
        "quality": 95,
        "encoder": "pil",
    }
    assert [s["samples"] for s in manifest["shards"]] == [4, 4, 2]
    for entry in manifest["shards"]:
        data = (out / entry["name"]).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["n"] == 10 and config["model"] == "embedded" and config == manifest["config"]
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["configs"][0]["data_files"][0]["path"] == "shard-*.tar"
    assert front["size_categories"] == ["n<1K"] and "license" in front


def test_tar_members_are_reproducible_and_keys_have_no_dots(make_dataset):
    out = make_dataset("ds", "--n", "3")
    with tarfile.open(out / "shard-000000.tar") as tar:
        members = tar.getmembers()
    assert {m.mtime for m in members} == {0} and {m.uname for m in members} == {"genrep"}
    names = [m.name for m in members]
    assert names[:5] == [
        "000000000.anchor.jpg",
        "000000000.json",
        "000000000.latent.npy",
        "000000000.neighbor_0.jpg",
        "000000000.neighbor_latent.npy",
    ]
    assert all("." not in name.split(".")[0] for name in names)


def test_samples_hold_views_latents_and_metadata(make_dataset):
    out = make_dataset("ds", "--n", "6", "--neighbors", "3", "--truncation", "1.0")
    generator = build_generator("embedded", resolution=128)
    for sample in samples(out):
        assert sample.anchor.size == (32, 32) and len(sample.neighbors) == 3
        assert sample.latent.shape == (generator.z_dim,) and sample.latent.dtype == np.float32
        assert np.abs(sample.latent).max() <= 1.0  # anchor truncation
        assert sample.neighbor_latents.shape == (3, generator.z_dim)
        offset = sample.neighbor_latents - sample.latent
        assert 0.1 < offset.std() < 0.3  # sigma 0.2 for an unconditional model
        assert np.abs(offset).max() <= 0.2 * 1.0 + 1e-6
        assert sample.label is None and sample.meta["index"] == int(sample.key)
        # The stored latent regenerates the stored anchor (up to JPEG loss and --size 32).
        image = generator(torch.from_numpy(sample.latent)[None])
        image = torch.nn.functional.interpolate(image, size=32, mode="bilinear", antialias=True)[0]
        stored = torch.from_numpy(np.array(sample.anchor)).permute(2, 0, 1) / 127.5 - 1
        assert (image - stored).abs().mean() < 0.05


def test_class_conditional_balanced_classes_and_independent_views(make_dataset):
    out = make_dataset("ds", "--classes", "3", "--per-class", "4", "--view", "independent")
    manifest = read_manifest(out)
    assert manifest["n"] == 12 and manifest["classes"] == [0, 1, 2]
    decoded = samples(out)
    labels = [s.label for s in decoded]
    assert sorted(labels) == [0] * 4 + [1] * 4 + [2] * 4
    assert all(s.meta["class"] == s.label for s in decoded)
    # independent: a fresh z (not z + small noise), same class
    assert all((s.neighbor_latents[0] - s.latent).std() > 0.9 for s in decoded)
    gauss = read_manifest(make_dataset("g", "--classes", "2", "--n", "2"))
    assert gauss["view"]["params"]["sigma"] == 1.0


def test_view_none_stores_anchors_only(make_dataset):
    out = make_dataset("ds", "--n", "3", "--view", "none", "--neighbors", "4")
    assert read_manifest(out)["neighbors"] == 0
    assert all(not s.neighbors and s.neighbor_latents is None for s in samples(out))


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_image_formats(make_dataset, fmt):
    out = make_dataset(fmt, "--n", "2", "--format", fmt, "--size", "40")
    with tarfile.open(out / "shard-000000.tar") as tar:
        assert f"000000000.anchor.{fmt}" in tar.getnames()
    assert samples(out)[0].anchor.size == (40, 40)


def test_frames_full_scaled_center_crop_and_resize(make_dataset, tmp_path):
    def anchor(name: str, *flags: str) -> np.ndarray:
        out = tmp_path / name
        run_generate("--n", "1", "--format", "png", "--workers", "0", "--out", str(out), *flags)
        return np.asarray(samples(out)[0].anchor).astype(float)

    full = anchor("full")  # the default: the whole native frame
    assert full.shape == (128, 128, 3)
    crop = anchor("crop", "--frame", "center-crop", "--size", "32")
    assert np.array_equal(crop, full[48:80, 48:80])
    small = np.asarray(Image.fromarray(full.astype(np.uint8)).resize((32, 32), 2)).astype(float)
    for name, flags in [("scaled", ()), ("resize", ("--frame", "resize"))]:
        # full frame scaled to short side 32, and v1's resize mode, are both the whole image
        assert np.abs(anchor(name, "--size", "32", *flags) - small).mean() < 12
    assert anchor("v1-name", "--resize", "center-crop", "--size", "32").tolist() == crop.tolist()
    manifest = read_manifest(tmp_path / "crop")
    assert manifest["image"]["frame"] == "center-crop"
    assert (manifest["image"]["width"], manifest["image"]["native_width"]) == (32, 128)


def test_same_command_is_byte_identical_for_any_workers_and_batch_size(make_dataset):
    flags = ("--n", "9", "--shard-size", "4", "--neighbors", "2")
    reference = shard_bytes(make_dataset("a", *flags, "--batch-size", "64"))
    assert shard_bytes(make_dataset("b", *flags, "--batch-size", "5")) == reference
    out = make_dataset("c", *flags)
    run_generate(
        "--size",
        "32",
        "--workers",
        "2",
        "--batch-size",
        "3",
        "--out",
        str(out.parent / "d"),
        *flags,
    )
    assert shard_bytes(out.parent / "d") == reference
    assert shard_bytes(make_dataset("e", *flags, "--seed", "1")) != reference


def test_shard_ranges_split_the_work_and_merge_into_one_dataset(make_dataset, tmp_path):
    flags = ("--n", "10", "--shard-size", "3")
    reference = make_dataset("whole", *flags)
    split = tmp_path / "split"
    for shard_range in ("2:", "0:2"):
        run_generate(
            "--size", "32", "--workers", "0", "--out", str(split), "--shards", shard_range, *flags
        )
        if shard_range == "2:":
            assert not read_manifest(split)["complete"]
    assert read_manifest(split)["complete"]
    assert shard_bytes(split) == shard_bytes(reference)
    assert read_manifest(split)["shards"] == read_manifest(reference)["shards"]


def test_a_shard_step_samples_the_dataset(make_dataset, tmp_path, monkeypatch):
    """`--shards START:STOP:STEP` writes every STEP-th shard (a sample of a large dataset), the
    same bytes as the whole run's; torchrun ranks deal the selected shards out in turn."""
    flags = ("--n", "10", "--shard-size", "2")
    whole = make_dataset("whole", *flags)
    sampled = make_dataset("sampled", *flags, "--shards", "1::2")
    assert sorted(p.name for p in sampled.glob("shard-*.tar")) == [
        "shard-000001.tar",
        "shard-000003.tar",
    ]
    for name in ("shard-000001.tar", "shard-000003.tar"):
        assert (sampled / name).read_bytes() == (whole / name).read_bytes()
    assert not read_manifest(sampled)["complete"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    ranked = make_dataset("ranked", *flags, "--shards", "0:5:2")  # shards 0, 2, 4: rank 1 gets 2
    assert [p.name for p in ranked.glob("shard-*.tar")] == ["shard-000002.tar"]


def test_torchrun_ranks_take_disjoint_shares(make_dataset, tmp_path, monkeypatch):
    flags = ("--n", "10", "--shard-size", "2", "--size", "32", "--workers", "0")
    out = tmp_path / "ranks"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    run_generate("--out", str(out), *flags)
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [
        "shard-000001.tar",
        "shard-000003.tar",
    ]
    monkeypatch.setenv("RANK", "0")
    run_generate("--out", str(out), *flags)
    assert read_manifest(out)["complete"]
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert shard_bytes(out) == shard_bytes(make_dataset("single", "--n", "10", "--shard-size", "2"))


def _generate_process(out: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "genrep.generate.cli",
        "--no-progress",
        "--size",
        "32",
        "--n",
        "40",
        "--shard-size",
        "2",
        "--neighbors",
        "2",
        "--workers",
        "1",
        "--batch-size",
        "3",
        "--out",
        str(out),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill_9_at_any_moment_then_rerun_gives_the_uninterrupted_result(make_dataset, tmp_path):
    reference = make_dataset("ref", "--n", "40", "--shard-size", "2", "--neighbors", "2")
    out = tmp_path / "killed"
    for kill_after_shards in (0, 3, 11):  # before the first shard, and twice mid-run
        process = _generate_process(out)
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            if len(list(out.glob("shard-*.tar"))) > kill_after_shards:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        present = list(out.glob("shard-*.tar"))
        for path in present:  # whatever is visible under a shard name is complete
            assert sum(1 for _ in iter_raw_samples(path)) == 2
    assert _generate_process(out).wait() == 0
    assert read_manifest(out)["complete"]
    assert shard_bytes(out) == shard_bytes(reference)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert read_manifest(out)["shards"] == read_manifest(reference)["shards"]


def test_memory_stays_flat_as_n_grows(tmp_path):
    """Peak Python/NumPy memory (images, encoded bytes) of a 10x larger run stays about the same."""
    import tracemalloc

    peaks = []
    for n in (30, 300):
        tracemalloc.start()
        run_generate(
            "--size",
            "64",
            "--format",
            "png",
            "--n",
            str(n),
            "--shard-size",
            "15",
            "--workers",
            "0",
            "--out",
            str(tmp_path / str(n)),
        )
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # Holding all 300 x 2 encoded images (~10 KB png each) would add ~6 MB; a shard is ~0.3 MB.
    assert peaks[1] < peaks[0] + 2**20, peaks


def test_yaml_config_sets_flags_and_command_line_wins(tmp_path):
    config = tmp_path / "gen.yaml"
    config.write_text("n: 5\nshard-size: 2\nsize: 32\nworkers: 0\nseed: 7\n")
    out = tmp_path / "ds"
    run_generate("--config", str(config), "--seed", "8", "--out", str(out))
    manifest = read_manifest(out)
    assert manifest["n"] == 5 and manifest["num_shards"] == 3 and manifest["seed"] == 8
    config.write_text("n: 5\nbatchsize: 2\n")
    result = run_generate("--config", str(config), "--out", str(tmp_path / "x"), expect_ok=False)
    assert result.exit_code == 2 and "unknown key 'batchsize'" in result.output


def test_config_valid_keys_are_the_settings_a_file_can_hold(tmp_path):
    """`--list` is an action and `out` is never read from a file: neither is offered as a key."""
    config = tmp_path / "gen.yaml"
    config.write_text("batchsize: 2\n")
    result = run_generate("--config", str(config), expect_ok=False)
    keys = result.output.split("valid keys: ", 1)[1].strip().split(", ")
    assert result.exit_code == 2 and "batch-size" in keys and "n" in keys, result.output
    assert "list" not in keys and "out" not in keys
    config.write_text("list: true\n")
    result = run_generate("--config", str(config), expect_ok=False)
    assert result.exit_code == 2 and "unknown key 'list'" in result.output


def test_model_options_are_typed_and_replay_from_the_saved_config(tmp_path):
    out = tmp_path / "ds"
    run_generate(
        "--n",
        "2",
        "--size",
        "32",
        "--workers",
        "0",
        "--model-option",
        "resolution=64",
        "--out",
        str(out),
    )
    manifest = read_manifest(out)
    assert manifest["generator"]["resolution"] == 64 and manifest["config"]["model_option"] == {
        "resolution": 64
    }
    before = shard_bytes(out)
    run_generate("--config", str(out / "config.yaml"), "--out", str(tmp_path / "again"))
    assert shard_bytes(tmp_path / "again") == before
    result = run_generate(
        "--n", "2", "--model-option", "resolution", "--out", str(tmp_path / "x"), expect_ok=False
    )
    assert result.exit_code == 2 and "'resolution' is not KEY=VALUE" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "biggan-deep-9000"], "unknown model 'biggan-deep-9000'; choose one of: "),
        (["--view", "wobble"], "unknown view 'wobble'; choose one of: gaussian, independent, none"),
        (["--n", "0"], "--n must be > 0"),
        (["--n", "-3"], "--n must be > 0"),
        ([], "pass --n"),
        (["--view", "independent"], "view 'independent' needs a class-conditional model"),
        (["--view", "none", "--sigma", "0.5"], "view 'none' does not take --sigma"),
        (["--classes", "3", "--per-class", "2", "--n", "7"], "--n 7 disagrees with --per-class 2"),
        (["--classes", "two"], "--classes for the embedded generator is a number of classes K"),
        (["--size", "256"], "--size 256 would enlarge the generator's 128x128 frame"),
        (["--frame", "center-crop", "--size", "256"], "smaller than --size 256"),
        (["--shards", "5"], "is not START:STOP"),
        (["--shards", "0:4:0"], "is not START:STOP"),
        (["--per-class", "3"], "--per-class needs a class-conditional model"),
        (["--truncation", "-1"], "--truncation must be a finite number > 0"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    if args and args[0] != "--n" and "--n" not in args and "--per-class" not in args:
        args = [*args, "--n", "4"]
    result = run_generate("--out", str(tmp_path / "ds"), "--workers", "0", *args, expect_ok=False)
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.output


def test_class_selection_specs():
    generator = build_generator("embedded", classes=5, resolution=32)
    generator.class_subsets = {"odd": [1, 3]}
    assert generator.resolve_classes(None) == generator.resolve_classes("all") == [0, 1, 2, 3, 4]
    assert generator.resolve_classes("odd") == [1, 3]
    assert generator.resolve_classes(2) == [0, 1]
    assert generator.resolve_classes("4,0") == [4, 0]
    with pytest.raises(UsageError, match="class ids must lie in 0..4"):
        generator.resolve_classes("0,5")
    with pytest.raises(UsageError, match="is not one of: all, odd"):
        generator.resolve_classes("evens")
    unconditional = build_generator("embedded", resolution=32)
    assert unconditional.resolve_classes(None) is None
    with pytest.raises(
        UsageError, match="--classes does not apply: model 'embedded' is unconditional"
    ):
        unconditional.resolve_classes("all")


def test_existing_dataset_with_another_config_is_left_untouched(make_dataset):
    out = make_dataset("ds", "--n", "6", "--shard-size", "3")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run_generate(
        "--size",
        "32",
        "--workers",
        "0",
        "--out",
        str(out),
        "--n",
        "7",
        "--shard-size",
        "3",
        expect_ok=False,
    )
    assert result.exit_code == 2 and "different config (differs in: n)" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the same config is a no-op resume, which says so in one line (no empty progress bar)
    rerun = run_generate(
        "--size", "32", "--workers", "0", "--out", str(out), "--n", "6", "--shard-size", "3",
        "--progress",
    )  # fmt: skip
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert rerun.stderr.strip().splitlines() == [
        f"{out}: dataset complete: 6 samples in 2 shards; nothing to do"
    ]


def test_folder_with_foreign_shards_is_refused(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "shard-000000.tar").write_bytes(b"not ours")
    result = run_generate("--out", str(out), "--n", "2", expect_ok=False)
    assert result.exit_code == 2 and "holds shards but no manifest" in result.output
    assert (out / "shard-000000.tar").read_bytes() == b"not ours"


def test_default_output_folder_is_a_dataset_subfolder_of_shards(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_generate("--n", "2", "--size", "32", "--workers", "0")
    assert read_manifest(tmp_path / "shards" / "embedded-gaussian")["complete"]
    assert load_dataset(tmp_path / "shards")[0]["n"] == 2  # `genrep-train shards/` finds it


def test_list_names():
    result = run_generate("--list")
    assert "embedded" in result.output and "gaussian" in result.output
