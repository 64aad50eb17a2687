"""`genrep-steer` and `genrep-generate --view steer` end to end: walk files, checkpoints and resume,
the cached auto-learn, refusals with one clear line. Budgets are tiny: this is plumbing, not quality
(test_steer.py shows the walks work)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import run_generate
from PIL import Image

from genrep.errors import CheckpointError, UsageError
from genrep.generate import steer
from genrep.generate.cli import steer_main
from genrep.generate.models import build_generator
from genrep.generate.steer import SteerConfig, checkpoint_path, learn_walks
from genrep.generate.views import build_view
from genrep.generate.walks import cached_walks_path, latent_steps, load_walks
from genrep.io import sha256_file
from genrep.manifest import load_dataset
from genrep.shards import decode_sample, iter_raw_samples
from genrep.shards_cli import main as shards_main

TINY = SteerConfig(num_samples=16, batch_size=4, lr=0.03, eval_size=4)


def steer_cli(*args: object):
    return CliRunner().invoke(steer_main, ["--no-progress", *map(str, args)])


@pytest.fixture(scope="module")
def small_generator():
    return build_generator("embedded", resolution=32)


@pytest.fixture(scope="module")
def walks_file(tmp_path_factory):
    """Walks learned by the CLI (32 px images through a YAML config, 4 steps of 4 latents)."""
    folder = tmp_path_factory.mktemp("steer-cli")
    config = folder / "steer.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_option": {"resolution": 32},
                "num_samples": 16,
                "batch_size": 4,
                "eval_size": 4,
                "lr": 0.03,
            }
        )
    )
    out = folder / "walks.pt"
    result = steer_cli("--config", config, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"wrote 8 walks for embedded to {out}" in result.stderr
    return out


def test_cli_writes_walks_and_config_and_refuses_to_overwrite(walks_file):
    record = torch.load(walks_file, weights_only=True)
    assert record["steps"] == 4 and record["config"]["batch_size"] == 4
    saved = yaml.safe_load(walks_file.with_suffix(".config.yaml").read_text())
    assert saved["model_option"] == {"resolution": 32} and saved["out"] == str(walks_file)
    result = steer_cli("--out", walks_file)
    assert result.exit_code == 2 and "exists; pass --overwrite" in result.output
    assert sha256_file(walks_file) == sha256_file(walks_file)  # untouched


def test_saved_config_reruns_the_same_training(walks_file, tmp_path):
    again = tmp_path / "again.pt"
    result = steer_cli("--config", walks_file.with_suffix(".config.yaml"), "--out", again)
    assert result.exit_code == 0, result.output
    assert torch.equal(
        torch.load(again, weights_only=True)["walks"],
        torch.load(walks_file, weights_only=True)["walks"],
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--transforms", "shift_x,shear"], "unknown steering transformation 'shear'"),
        (["--shift-range", "1.5"], "--shift-range: the shift range is a fraction"),
        (["--zoom-range", "0.5"], "--zoom-range: the zoom range is the largest factor"),
        (["--rotate-3d-range", "90"], "--rotate-3d-range"),
        (["--batch-size", "0"], "--batch-size must be > 0"),
        (["--lr", "-1"], "--lr must be a finite number > 0"),
        (["--device", "gpu0"], "--device"),
        (["--model", "nope"], "unknown model 'nope'"),
    ],
)
def test_bad_flags_give_one_clear_line(tmp_path, args, message):
    result = steer_cli("--out", tmp_path / "w.pt", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "w.pt").exists()


def _interrupt_optimizer_at(monkeypatch, step: int, error: type[BaseException]) -> None:
    original = torch.optim.Adam.step
    calls = {"n": 0}

    def step_or_fail(self, *args, **kwargs):
        if calls["n"] == step:
            raise error("stopped by the test")
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step_or_fail)


RESUMABLE = dataclasses.replace(TINY, num_samples=32, lr_schedule="cosine")


@pytest.fixture(scope="module")
def uninterrupted(small_generator, tmp_path_factory):
    return learn_walks(
        small_generator,
        RESUMABLE,
        tmp_path_factory.mktemp("whole") / "w.pt",
        progress=False,
        log=lambda message: None,
    )


@pytest.mark.parametrize("error, resumed_from", [(KeyboardInterrupt, 5), (RuntimeError, 4)])
def test_interrupted_training_resumes_to_the_same_walks(
    small_generator, uninterrupted, tmp_path, monkeypatch, error, resumed_from
):
    config, whole = RESUMABLE, uninterrupted
    out = tmp_path / "cut.pt"
    with monkeypatch.context() as patch:
        _interrupt_optimizer_at(patch, 5, error)
        with pytest.raises(error):
            learn_walks(
                small_generator,
                config,
                out,
                checkpoint_every=2,
                progress=False,
                log=lambda message: None,
            )
    assert not out.exists()
    # Ctrl-C saves where it stopped; a crash leaves the last periodic checkpoint
    assert torch.load(checkpoint_path(out), weights_only=True)["step"] == resumed_from
    messages = []
    resumed = learn_walks(
        small_generator, config, out, checkpoint_every=2, progress=False, log=messages.append
    )
    assert f"resuming {out} from step {resumed_from} of 8" in messages
    assert torch.equal(resumed["walks"], whole["walks"])
    assert resumed["loss"] == whole["loss"] and torch.equal(resumed["losses"], whole["losses"])
    assert not checkpoint_path(out).exists()


def test_a_checkpoint_of_another_config_is_refused(small_generator, tmp_path, monkeypatch):
    out = tmp_path / "w.pt"
    with monkeypatch.context() as patch:
        _interrupt_optimizer_at(patch, 1, KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            learn_walks(small_generator, TINY, out, progress=False, log=lambda message: None)
    other = dataclasses.replace(TINY, lr=0.01)
    with pytest.raises(UsageError, match="was made for another model or config; pass --no-resume"):
        learn_walks(small_generator, other, out, progress=False, log=lambda message: None)
    record = learn_walks(
        small_generator, other, out, resume=False, progress=False, log=lambda message: None
    )
    assert record["config"]["lr"] == 0.01 and out.exists()


class _Payload:
    """Unpickling this would run code: weights_only loading must refuse it."""


def test_unreadable_or_foreign_walk_files_are_refused(small_generator, tmp_path, walks_file):
    with pytest.raises(CheckpointError, match="does not exist; learn one with `genrep-steer"):
        load_walks(tmp_path / "missing.pt")
    torch.save({"walks": torch.zeros(2, 2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a walk file of genrep-steer"):
        load_walks(tmp_path / "plain.pt")
    torch.save({"format": "genrep-walks", "payload": _Payload()}, tmp_path / "code.pt")
    with pytest.raises(
        CheckpointError,
        match="not a walk file of genrep-steer: it asks for the Python global .*_Payload",
    ):
        load_walks(tmp_path / "code.pt")
    record = torch.load(walks_file, weights_only=True)
    record["names"] = record["names"][:-1]
    torch.save(record, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="damaged walk file"):
        load_walks(tmp_path / "damaged.pt")
    record = torch.load(walks_file, weights_only=True)
    del record["model"]
    torch.save(record, tmp_path / "anonymous.pt")
    with pytest.raises(CheckpointError, match="damaged walk file .missing model"):
        load_walks(tmp_path / "anonymous.pt")
    record = torch.load(walks_file, weights_only=True)
    record["format_version"] = 99
    torch.save(record, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="upgrade genrep"):
        load_walks(tmp_path / "newer.pt")


def test_walks_of_another_model_are_refused(tmp_path, walks_file):
    other = build_generator("embedded", resolution=32, z_dim=64)
    with pytest.raises(
        CheckpointError,
        match="learned for model 'embedded' .*z_dim 128.*, not for "
        "'embedded' .*z_dim 64.*genrep-steer --model embedded",
    ):
        load_walks(walks_file, other)
    result = run_generate(
        "--view",
        "steer",
        "--walks",
        str(walks_file),
        "--classes",
        "3",
        "--n",
        "2",
        "--out",
        str(tmp_path / "ds"),
        expect_ok=False,
    )
    assert result.exit_code == 1 and "holds walks learned for model 'embedded'" in result.output
    assert not (tmp_path / "ds").exists()


def _samples(folder):
    _, shards = load_dataset(folder)
    return [decode_sample(raw) for shard in shards for raw in iter_raw_samples(shard)]


def test_generate_view_steer_with_a_walk_file(walks_file, tmp_path):
    args = [
        "--view",
        "steer",
        "--walks",
        str(walks_file),
        "--n",
        "4",
        "--neighbors",
        "2",
        "--size",
        "32",
        "--workers",
        "0",
        "--format",
        "png",
    ]
    run_generate(*args, "--out", str(tmp_path / "a"))
    manifest, shards = load_dataset(tmp_path / "a")
    params = manifest["view"]["params"]
    record = load_walks(walks_file)
    assert params["walks_sha256"] == sha256_file(walks_file)
    assert params["model"] == "embedded" and params["ranges"] == record["ranges"]
    # the released generation's 3D rotation: 5 times the learned step (RELEASED_STEP_SCALES)
    assert params["step_scales"] == {"rotate_3d": 5.0}
    scales = np.array([5.0 if name == "rotate_3d" else 1.0 for name in record["names"]])
    walks = record["walks"].double().numpy()
    for sample in _samples(tmp_path / "a"):
        assert len(sample.neighbors) == 2
        for j, neighbor in enumerate(sample.meta["neighbors"]):
            alpha = neighbor["params"]["alpha"]
            assert sorted(alpha) == sorted(record["names"])
            assert abs(alpha["shift_x"]) <= 0.4 and 0.25 <= alpha["zoom"] <= 4
            assert abs(alpha["rotate_3d"]) <= 60 and abs(alpha["color_g"]) <= 0.5
            steps = latent_steps({k: np.array([v]) for k, v in alpha.items()}, record["ranges"])
            expected = sample.latent.astype(np.float64) + (steps * scales @ walks)[0]
            assert np.allclose(sample.neighbor_latents[j], expected, atol=1e-5)
    # a shard is a pure function of the config: the same command writes the same bytes
    run_generate(*args, "--out", str(tmp_path / "b"))
    assert [sha256_file(p) for p in shards] == [
        sha256_file(p) for p in load_dataset(tmp_path / "b")[1]
    ]
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(shards_main, ["preview", str(tmp_path / "a"), "--out", str(sheet)])
    assert result.exit_code == 0, result.output
    with Image.open(sheet) as image:  # anchor + 2 steered neighbors per row, 4 rows
        assert image.size == (3 * 32 + 2 * 2, 4 * 32 + 3 * 2)


def test_step_scales_multiply_each_edits_latent_step(walks_file):
    generator = build_generator("embedded", resolution=32)
    record = load_walks(walks_file)
    walks, names = record["walks"].double().numpy(), record["names"]

    def neighbor(**options):
        view = build_view("steer", generator, truncation=2.0, walks=str(walks_file), **options)
        z, params = view.neighbors(np.zeros(128, np.float32), None, np.random.default_rng(0), 1)
        alpha = {name: np.array([value]) for name, value in params[0]["alpha"].items()}
        return view, z[0].astype(np.float64), latent_steps(alpha, record["ranges"])[0]

    released, z, steps = neighbor()
    assert released.params()["step_scales"] == {"rotate_3d": 5.0}
    rotate = names.index("rotate_3d")
    assert np.allclose(z, steps @ walks + 4 * steps[rotate] * walks[rotate], atol=1e-5)
    learned, z, steps = neighbor(step_scale={"rot3d": 1})
    assert learned.params()["step_scales"] == {} and np.allclose(z, steps @ walks, atol=1e-5)
    zoomed, z, steps = neighbor(step_scale={"zoom": 2, "rotate_3d": 5})
    assert zoomed.params()["step_scales"] == {"zoom": 2.0, "rotate_3d": 5.0}
    scales = np.array([{"zoom": 2.0, "rotate_3d": 5.0}.get(name, 1.0) for name in names])
    assert np.allclose(z, steps * scales @ walks, atol=1e-5)
    with pytest.raises(UsageError, match="must be a number > 0"):
        neighbor(step_scale={"zoom": 0})


def test_step_scale_flag_is_for_view_steer_only(walks_file, tmp_path):
    common = ["--n", "2", "--size", "32", "--workers", "0", "--out", str(tmp_path / "d")]
    result = run_generate("--step-scale", "zoom=2", *common, expect_ok=False)
    assert result.exit_code == 2 and "does not take --step-scale" in result.output
    result = run_generate(
        "--view",
        "steer",
        "--walks",
        str(walks_file),
        "--step-scale",
        "tilt=2",
        *common,
        expect_ok=False,
    )
    assert result.exit_code != 0 and "tilt" in result.output


def test_view_steer_without_walks_learns_once_and_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(steer, "AUTO_LEARN_CONFIG", TINY)
    args = ["--view", "steer", "--n", "2", "--size", "32", "--workers", "0"]
    first = run_generate(*args, "--learn-walks", "--out", str(tmp_path / "a"))
    cache = cached_walks_path(build_generator("embedded"))
    assert cache.parent == tmp_path / "home" / "walks" and cache.exists()
    assert "no --walks given, so learning the steering walks of embedded once" in first.stderr
    assert str(cache) in first.stderr
    stamp = cache.stat().st_mtime_ns
    second = run_generate(*args, "--out", str(tmp_path / "b"))
    assert f"using the cached walks {cache}" in second.stderr and "learning" not in second.stderr
    assert cache.stat().st_mtime_ns == stamp
    views = [load_dataset(tmp_path / name)[0]["view"]["params"] for name in ("a", "b")]
    assert views[0] == views[1] and views[0]["walks_sha256"] == sha256_file(cache)
    assert yaml.safe_load(cache.with_suffix(".config.yaml").read_text())["model"] == "embedded"


def test_view_steer_without_walks_on_a_cpu_refuses_to_learn_unasked(tmp_path, monkeypatch):
    """Learning walks takes hours on a CPU: without --walks or --learn-walks it is one line."""
    monkeypatch.setenv("GENREP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(steer, "AUTO_LEARN_CONFIG", TINY)  # were it learned, quickly
    args = ["--view", "steer", "--n", "2", "--size", "32", "--workers", "0", "--device", "cpu"]
    result = run_generate(*args, "--out", str(tmp_path / "a"), expect_ok=False)
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    for advice in (
        "pass --walks FILE (learned with genrep-steer)",
        "--device cuda",
        "--learn-walks",
    ):
        assert advice in errors[0]
    assert not (tmp_path / "a").exists()
    assert not list((tmp_path / "home").rglob("*.pt"))


def test_view_neighbors_follow_the_samples_random_stream(walks_file):
    view = build_view(
        "steer", build_generator("embedded", resolution=32), truncation=2.0, walks=str(walks_file)
    )
    z = np.zeros(128, np.float32)
    first = view.neighbors(z, None, np.random.default_rng(3), 3)
    again = view.neighbors(z, None, np.random.default_rng(3), 3)
    other = view.neighbors(z, None, np.random.default_rng(4), 3)
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    assert not np.array_equal(first[0], other[0])
    assert first[0].dtype == np.float32 and first[0].shape == (3, 128)
    json.dumps(first[1])  # the alphas go into the sample's json


def test_class_conditional_generators_learn_with_sampled_classes(tmp_path, monkeypatch):
    generator = build_generator("embedded", classes=3, resolution=32)
    seen = []
    original = type(generator).forward

    def record_classes(self, z, y=None):
        seen.extend(y.tolist())
        return original(self, z, y)

    monkeypatch.setattr(type(generator), "forward", record_classes)
    record = learn_walks(
        generator,
        dataclasses.replace(TINY, classes="0,2"),
        tmp_path / "w.pt",
        progress=False,
        log=lambda message: None,
    )
    assert record["model"]["num_classes"] == 3 and set(seen) == {0, 2}
    with pytest.raises(CheckpointError, match="z_dim 128"):  # another class count, other weights
        load_walks(tmp_path / "w.pt", build_generator("embedded", classes=4))
