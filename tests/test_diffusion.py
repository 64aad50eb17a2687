"""`--model diffusers` on a tiny random Stable Diffusion pipeline built offline: prompts as classes,
the initial noise as z, determinism for any batch size, the views, and bad input in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import run_generate
from diffusion_helpers import make_tiny_pipeline
from stage_helpers import invoke_generate as invoke
from stage_helpers import one_line_error, shard_bytes, train_tiny, verify

from genrep.errors import UsageError
from genrep.generate.cli import steer_main
from genrep.generate.models import build_generator
from genrep.generate.models.diffusion import (
    DEFAULT_PIPELINE,
    pipeline_sha256,
    read_prompts,
)
from genrep.io import sha256_file
from genrep.manifest import load_dataset, read_manifest
from genrep.paths import weights_dir
from genrep.shards import decode_sample, iter_raw_samples

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

PROMPTS = {
    "dog": ["a photo of a dog", "a dog running on grass"],
    "cat": "a photo of a cat",
    "car": ["a red car", "a blue car", "an old car"],
}
STEPS = ("--model-option", "steps=3")


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny networks gain nothing from threads, and OpenMP threads spinning on a busy 2-core
    machine make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_pipeline(tmp_path_factory.mktemp("diffusers") / "tiny-sd")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "classes.yaml"
    path.write_text(yaml.safe_dump(PROMPTS, sort_keys=False))
    return path


def model_flags(pipeline: Path, prompts: Path) -> tuple[str, ...]:
    return (
        "--model",
        "diffusers",
        "--weights",
        str(pipeline),
        "--model-option",
        f"prompts={prompts}",
        *STEPS,
    )


def samples(folder: Path):
    _, paths = load_dataset(folder)
    return [decode_sample(raw) for path in paths for raw in iter_raw_samples(path)]


def test_prompts_as_classes_generate_verify_and_train_supcon(pipeline, prompts, tmp_path):
    out = tmp_path / "ds"
    run_generate(
        *model_flags(pipeline, prompts), "--per-class", "4", "--view", "independent",
        "--size", "32", "--workers", "0", "--out", str(out),
    )  # fmt: skip
    manifest = read_manifest(out)
    generator = manifest["generator"]
    assert generator["name"] == "diffusers" and generator["source"] == {"from": "genrep"}
    assert generator["z_dim"] == 4 * 16 * 16 and generator["resolution"] == 32
    assert generator["sampler"] == {
        "scheduler": "ddim", "eta": 0.0, "steps": 3, "guidance_scale": 2.0, "negative_prompt": "",
    }  # fmt: skip
    assert generator["class_names"] == ["dog", "cat", "car"]
    assert generator["prompts_per_class"] == [2, 1, 3]
    assert generator["prompts_sha256"] == sha256_file(prompts)
    assert generator["weights_sha256"] == pipeline_sha256(pipeline)
    assert manifest["classes"] == [0, 1, 2] and manifest["n"] == 12

    names = list(PROMPTS)
    for sample in samples(out):
        index = int(sample.key)
        label, k = index % 3, index // 3
        options = PROMPTS[names[label]]
        options = [options] if isinstance(options, str) else options
        assert sample.label == label
        # the k-th sample of a class takes its prompts in turn; the neighbor shares the prompt
        assert sample.meta["condition"] == {
            "prompt": options[k % len(options)], "prompt_index": k % len(options),
        }  # fmt: skip
        # independent: fresh noise, so another image
        assert abs(np.corrcoef(sample.latent, sample.neighbor_latents[0])[0, 1]) < 0.2
        assert np.asarray(sample.anchor).shape == (32, 32, 3)
        assert not np.array_equal(np.asarray(sample.anchor), np.asarray(sample.neighbors[0]))
    verify(out)
    records = train_tiny(out, tmp_path / "run", objective="supcon")
    assert all(np.isfinite(r["loss"]) for r in records)


def test_an_image_is_a_function_of_its_noise_and_prompt(pipeline, prompts):
    generator = build_generator("diffusers", weights=str(pipeline), prompts=str(prompts), steps=3)
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 1024), np.float32))
    y = torch.tensor([0, 1, 2])
    with torch.inference_mode():
        images = generator(z, y)
        assert images.shape == (3, 3, 32, 32) and images.abs().max() <= 1
        assert torch.equal(generator(z, y), images)
        # per sample on the CPU: a sample's pixels do not depend on its batch
        assert torch.equal(generator(z[1:2], y[1:2]), images[1:2])
        # y = class + num_classes * prompt index: class 0's second prompt is another image
        assert generator.condition(0, 1) == (
            3,
            {"prompt": "a dog running on grass", "prompt_index": 1},
        )
        assert not torch.equal(generator(z[:1], torch.tensor([3])), images[:1])
        # bf16 autocast runs the UNet in bf16 only: close to the fp32 images
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = generator(z[:1], y[:1])
        assert low.dtype == torch.float32 and (low - images[:1]).abs().mean() < 0.05
    other = build_generator("diffusers", weights=str(pipeline), prompts=str(prompts), steps=4)
    assert other.describe()["sampler"]["steps"] == 4
    assert other.weights_sha256 == generator.weights_sha256


def test_shards_are_byte_identical_for_any_batch_size(pipeline, prompts, tmp_path):
    flags = (*model_flags(pipeline, prompts), "--n", "5", "--shard-size", "3", "--size", "32")
    run_generate(*flags, "--workers", "0", "--batch-size", "64", "--out", str(tmp_path / "a"))
    run_generate(*flags, "--workers", "0", "--batch-size", "3", "--out", str(tmp_path / "b"))
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    view = read_manifest(tmp_path / "a")["view"]
    assert view == {"name": "gaussian", "params": {"sigma": 0.2, "truncation": None}}
    for sample in samples(tmp_path / "a"):
        offset = sample.neighbor_latents[0] - sample.latent
        assert 0.15 < offset.std() < 0.25  # the diffusion model's sigma, not the GANs' 1.0


def test_view_none_and_class_selection(pipeline, prompts, tmp_path):
    out = tmp_path / "none"
    run_generate(
        *model_flags(pipeline, prompts), "--view", "none", "--classes", "2", "--per-class", "1",
        "--size", "16", "--resize", "resize", "--workers", "0", "--out", str(out),
    )  # fmt: skip
    decoded = samples(out)
    assert [s.label for s in decoded] == [0, 1] and all(not s.neighbors for s in decoded)
    assert decoded[0].anchor.size == (16, 16)
    line = one_line_error(
        invoke(*model_flags(pipeline, prompts), "--classes", "0,5", "--n", "2"), 2
    )
    assert "class ids must lie in 0..2" in line


def test_steer_is_refused_in_one_line(pipeline, prompts, tmp_path):
    line = one_line_error(invoke(*model_flags(pipeline, prompts), "--view", "steer", "--n", "2"), 2)
    assert "view 'steer' is not supported for model 'diffusers'" in line
    result = CliRunner().invoke(
        steer_main, [*model_flags(pipeline, prompts), "--out", str(tmp_path / "w.pt")]
    )
    assert "view 'steer' is not supported" in one_line_error(result, 2)
    assert not (tmp_path / "w.pt").exists()


def test_prompt_file_formats(tmp_path):
    text = tmp_path / "classes.txt"
    text.write_text("# ImageNet-style classes\na photo of a dog\n\n  a photo of a cat  \n")
    read = read_prompts(text)
    assert read.class_names == ["a photo of a dog", "a photo of a cat"]
    assert read.prompts == [["a photo of a dog"], ["a photo of a cat"]]
    listed = tmp_path / "list.yaml"
    listed.write_text(yaml.safe_dump(["a dog", ["a cat", "a kitten"]]))
    assert read_prompts(listed).prompts == [["a dog"], ["a cat", "a kitten"]]
    for name, content, message in [
        ("empty.txt", "# nothing\n", "holds no prompts"),
        ("empty-class.yaml", "dog: []\n", "class 'dog'"),
        ("number.yaml", "dog: [3]\n", "class 'dog'"),
        ("scalar.yaml", "3\n", "holds neither a mapping nor a list"),
        ("bad.yaml", "dog: [a\n", "not valid YAML"),
    ]:
        (tmp_path / name).write_text(content)
        with pytest.raises(UsageError, match=message):
            read_prompts(tmp_path / name)
    with pytest.raises(UsageError, match="there is no file"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("un café\n".encode("latin-1"))
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        read_prompts(tmp_path / "latin1.txt")


def test_bad_options_and_pipelines_fail_in_one_line(pipeline, prompts, tmp_path, monkeypatch):
    base = ("--model", "diffusers", "--n", "2", "--out", str(tmp_path / "ds"))
    weights = ("--weights", str(pipeline))
    prompt_option = ("--model-option", f"prompts={prompts}")
    cases = [
        ((*base, *weights), 2, "needs its classes as prompts: pass --model-option prompts=FILE"),
        ((*base, *weights, *prompt_option, "--model-option", "guidance_scale=0.5"), 2,
         "guidance_scale=0.5 must be >= 1"),
        ((*base, *weights, *prompt_option, "--model-option", "steps=0"), 2,
         "steps=0 must be an integer >= 1"),
        ((*base, *weights, *prompt_option, "--model-option", "resolution=30"), 2,
         "resolution=30 must be a multiple of 4"),
        ((*base, "--weights", str(prompts), *prompt_option), 1,
         "is a file; the diffusers model takes a pipeline folder"),
    ]  # fmt: skip
    for args, exit_code, message in cases:
        assert message in one_line_error(invoke(*args), exit_code)

    pickled = tmp_path / "pickled"
    shutil.copytree(pipeline, pickled)
    unet = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    unet.rename(unet.with_suffix(".bin"))
    line = one_line_error(invoke(*base, "--weights", str(pickled), *prompt_option), 1)
    assert "lacks unet/*.safetensors" in line and "pickled .bin weights" in line

    monkeypatch.setenv("GENREP_OFFLINE", "1")
    for hub_args, hub_id in [
        (("--weights", "someone/tiny-sd"), "someone/tiny-sd"),
        ((), DEFAULT_PIPELINE),
    ]:
        line = one_line_error(invoke(*base, *hub_args, *prompt_option), 1)
        cache = weights_dir() / "diffusers" / hub_id.replace("/", "--")
        assert f"diffusers pipeline {hub_id} is not in the cache" in line
        assert f"hf download {hub_id} --local-dir {cache}" in line
    # a Hub pipeline already in genrep's cache, or complete in Hugging Face's, needs no network
    shutil.copytree(pipeline, weights_dir() / "diffusers" / "someone--tiny-sd")
    built = build_generator("diffusers", weights="someone/tiny-sd", prompts=str(prompts), steps=2)
    assert built.weights_sha256 == pipeline_sha256(pipeline)
    hub_cache = tmp_path / "hf-hub"
    repo = hub_cache / "models--someone--cached-sd"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    shutil.copytree(pipeline, repo / "snapshots" / "0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    built = build_generator("diffusers", weights="someone/cached-sd", prompts=str(prompts))
    assert built.weights_sha256 == pipeline_sha256(pipeline)
    shutil.rmtree(repo / "snapshots" / "0123abcd" / "vae")  # incomplete: genrep would fetch it
    assert "someone/cached-sd is not in the cache" in one_line_error(
        invoke(*base, "--weights", "someone/cached-sd", *prompt_option), 1
    )

    sdxl = tmp_path / "sdxl"
    shutil.copytree(pipeline, sdxl)
    (sdxl / "model_index.json").write_text('{"text_encoder_2": ["transformers", "X"]}')
    with pytest.raises(Exception, match="two text encoders"):
        build_generator("diffusers", weights=str(sdxl), prompts=str(prompts))
