"""Exercise, check and time every CUDA path of genrep in one run (random weights, no download).

    python benchmarks/gpu_check.py                      # on the GPU: under 5 minutes
    python benchmarks/gpu_check.py --device cpu --quick # the same paths at toy sizes (CI)

Paths: BigGAN-deep-256 and StyleGAN2-256 forward passes in fp32/bf16/fp16 with channels_last;
genrep-generate end to end against the forward passes alone (Pillow encoder pool, and JPEG on the
GPU); steering-walk training; genrep-train of a ResNet-50 at 128 px in bf16 with channels_last
(input pipeline alone with Tx in the DataLoader workers and with Tx batched on the device, the
device Tx against the PIL Tx, model step alone, end to end), and online from the embedded
generator (`--generator`) against it; a 1-process DDP run under torchrun (nccl on
CUDA, gloo on CPU); the kNN probe's faiss GPU search against the torch engine; a tiny diffusers
pipeline when diffusers is installed.

It prints one table (path, device, dtype, metric, value, goal, ok) and exits 1 if any check
fails. Correctness checks (finite images, fp16/bf16 against fp32, exit codes, agreement) count on
every device; the speed goals are those of an H100/H200-class GPU with a 16-core host, so on the
CPU they are reported with ok `-`:

- genrep-generate end to end >= 0.95 x the generator's forward-only rate, with the default encoder
  workers (a 16-core machine: 8);
- 1.3M BigGAN-deep-256 anchor/neighbor pairs (2.6M images) in under 1 hour (projected from the
  measured end-to-end rate);
- the training input pipeline is never the bottleneck: pipeline img/s / ResNet-50 bf16 step img/s
  >= 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))

from generate_overhead import ForwardClock, forward_only, sync  # noqa: E402

from genrep.generate.image_encoders import IMAGE_ENCODERS, build_encoder  # noqa: E402
from genrep.generate.pipeline import Plan, generate, make_plan  # noqa: E402
from genrep.options import PRECISIONS, default_workers, resolve_device  # noqa: E402
from genrep.runs import LOG  # noqa: E402
from genrep.train.tx import build_recipe  # noqa: E402

RANDOM_MODELS = BENCHMARKS / "random_models.py"
#: anchor/neighbor pairs of the paper's ImageNet-1k-sized datasets
PAIRS_GOAL = 1_300_000


@dataclass(frozen=True)
class Sizes:
    """How big each check runs: the GPU sizes, or toy sizes for a CPU (--quick)."""

    biggan: tuple[int, int] = (256, 128)  # resolution, channel width
    stylegan2: tuple[int, int] = (256, 512)  # resolution, widest layer
    batch: int = 64
    forward_images: int = 2048
    anchors: int = 4096
    shard_size: int = 512
    steer_steps: int = 10
    steer_batch: int = 32
    arch: str = "resnet50"
    train_side: int = 128
    train_anchors: int = 2048
    train_batch: int = 256
    train_steps: int = 30
    knn: tuple[int, int, int] = (100_000, 10_000, 2048)  # train, queries, dim
    diffusion_steps: int = 10


QUICK = Sizes(
    biggan=(128, 4),
    stylegan2=(32, 16),
    batch=2,
    forward_images=4,
    anchors=4,
    shard_size=2,
    steer_steps=1,
    steer_batch=2,
    arch="resnet18",
    train_side=32,
    train_anchors=16,
    train_batch=4,
    train_steps=3,
    knn=(500, 50, 32),
    diffusion_steps=2,
)


@dataclass
class Row:
    path: str
    device: str
    dtype: str
    metric: str
    value: Any
    goal: str = ""
    #: True/False: checked; None: a speed goal not applicable on this device
    ok: bool | None = None


class Check:
    """Collects the table; a path that raises becomes a failed row and the others still run."""

    def __init__(self, device: torch.device, sizes: Sizes, work: Path, workers: int) -> None:
        self.device, self.sizes, self.work, self.workers = device, sizes, work, workers
        self.rows: list[Row] = []
        #: generators built by the generation checks, reused by later ones
        self.generators: dict[str, torch.nn.Module] = {}

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def add(self, path: str, dtype: str, metric: str, value: Any, goal: str = "", ok=None) -> None:
        self.rows.append(Row(path, self.device.type, dtype, metric, value, goal, ok))

    def speed(self, path: str, dtype: str, metric: str, value: float, goal: str, met: bool) -> None:
        """A speed goal: judged on the GPU only (it is an H100/H200-class goal)."""
        self.add(path, dtype, metric, value, goal, met if self.on_gpu else None)

    def run(self, path: str, function: Callable[[], None]) -> None:
        started = time.perf_counter()
        try:
            function()
        except Exception as err:  # noqa: BLE001 - every failure becomes a row
            traceback.print_exc(file=sys.stderr)
            self.add(path, "-", "error", f"{type(err).__name__}: {err}"[:120], "runs", False)
        print(f"[{path}] {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- generation


def check_forward(check: Check, name: str, model: torch.nn.Module) -> dict[str, float]:
    """Forward-only img/s per precision; fp16/bf16 images against fp32's."""
    sizes, device = check.sizes, check.device
    model = model.to(memory_format=torch.channels_last)
    z = torch.randn(sizes.batch, model.z_dim, device=device).clamp(-2, 2)
    y = torch.arange(sizes.batch, device=device) % model.num_classes if model.conditional else None
    rates, reference = {}, None
    for precision, dtype in PRECISIONS.items():
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            images = model(z, y).float()
        finite = bool(torch.isfinite(images).all())
        if reference is None:
            reference = images
            check.add(name, precision, "finite, std", f"{finite}, {images.std():.3f}", "", finite)
        else:
            error = float((images - reference).abs().mean())
            check.add(name, precision, "mean |x - fp32|", error, "< 0.05", finite and error < 0.05)
        rates[precision] = forward_only(model, sizes.forward_images, sizes.batch, device, precision)
        check.add(name, precision, "forward img/s", rates[precision])
    return rates


def check_generate_end_to_end(check: Check, plan: Plan, forward: dict[str, float]) -> None:
    """genrep-generate's pipeline (latents, views, forward, JPEG, shards, manifest) vs forward,
    with each image encoder."""
    model, workers = plan.generator.name.rsplit(":random_", 1)[-1], check.workers
    for encoder in IMAGE_ENCODERS.names():
        run = replace(
            plan,
            encoder=build_encoder(encoder, plan.image_format, plan.quality, check.device),
            out=check.work / f"{model}-{encoder}",
        )
        # Warm-up: one shard starts the encoder processes' server (once per process, a few
        # seconds of imports) and the device's kernels, so the timed run is the steady state.
        warm = replace(run, n=plan.shard_size, out=check.work / f"{model}-{encoder}-warm-up")
        generate(warm, batch_size=check.sizes.batch, workers=workers, progress=False)
        images = plan.n * (1 + plan.neighbors)
        with ForwardClock(check.device) as clock:
            started = time.perf_counter()
            generate(run, batch_size=check.sizes.batch, workers=workers, progress=False)
            seconds = time.perf_counter() - started
        rate, precision = images / seconds, plan.precision
        path = f"generate {model} --encoder {encoder}"
        check.add(path, precision, f"end-to-end img/s ({workers} workers)", rate)
        ratio = rate / forward[precision]
        check.speed(path, precision, "end-to-end / forward-only", ratio, ">= 0.95", ratio >= 0.95)
        check.add(path, precision, "share of wall time in forward", clock.seconds / seconds)
        if model == "biggan_deep":
            hours = 2 * PAIRS_GOAL / rate / 3600
            check.speed(path, precision, "projected h for 1.3M pairs", hours, "< 1", hours < 1)


def check_generation(check: Check) -> None:
    """Per generator: forward passes per precision, then genrep-generate end to end."""
    sizes = check.sizes
    for model, (resolution, width) in (
        ("biggan_deep", sizes.biggan),
        ("stylegan2", sizes.stylegan2),
    ):

        def run(model: str = model, resolution: int = resolution, width: int = width) -> None:
            plan = make_plan(
                {
                    "model": f"{RANDOM_MODELS}:random_{model}",
                    "model_option": {"resolution": resolution, "width": width},
                    "classes": 10 if model == "biggan_deep" else None,
                    "n": sizes.anchors,
                    "neighbors": 1,
                    "device": str(check.device),
                    "precision": "bf16" if check.on_gpu else "fp32",
                    "shard_size": sizes.shard_size,
                    "out": str(check.work / model),
                },
                progress=False,
            )
            check.generators[model] = plan.generator
            name = f"forward {model}-{resolution} (channels_last)"
            check_generate_end_to_end(check, plan, check_forward(check, name, plan.generator))

        check.run(f"generate {model}", run)


def check_steer(check: Check) -> None:
    from genrep.generate.models import build_generator
    from genrep.generate.steer import SteerConfig, learn_walks

    sizes = check.sizes
    resolution, width = sizes.biggan
    generator = check.generators.get("biggan_deep") or build_generator(
        f"{RANDOM_MODELS}:random_biggan_deep",
        device=check.device,
        resolution=resolution,
        width=width,
    )
    config = SteerConfig(
        num_samples=sizes.steer_steps * sizes.steer_batch,
        batch_size=sizes.steer_batch,
        eval_size=sizes.steer_batch,
        classes="10",
    )
    started = time.perf_counter()
    record = learn_walks(
        generator, config, check.work / "walks.pt", progress=False, log=lambda message: None
    )
    seconds = (time.perf_counter() - started) / sizes.steer_steps
    precision = record["config"]["precision"]
    finite = all(math.isfinite(v) for v in record["loss"].values())
    check.add("steer biggan_deep", precision, "loss initial -> final finite", finite, "", finite)
    check.add("steer biggan_deep", precision, "s/step (incl. evaluation)", seconds)
    hours = SteerConfig().steps * seconds * SteerConfig().batch_size / sizes.steer_batch / 3600
    check.add("steer biggan_deep", precision, "projected h, default budget", hours)


# ------------------------------------------------------------------------------------- training


def _train_args(check: Check, data: Path, out: Path, steps: int) -> list[str]:
    sizes = check.sizes
    return [
        str(data),
        "--arch", sizes.arch,
        "--input-size", str(sizes.train_side),
        "--batch-size", str(sizes.train_batch),
        "--steps", str(steps),
        "--device", str(check.device),
        "--precision", "bf16" if check.on_gpu else "fp32",
        "--log-every", str(max(1, steps // 3)),
        "--workers", str(check.workers),
        "--no-progress",
        "--out", str(out),
    ]  # fmt: skip


def model_step_rate(check: Check, config: Any, info: Any) -> float:
    """img/s of genrep-train's model step alone (forward, backward, SGD) on a batch already on
    the device, as the trainer runs it (channels_last and autocast on CUDA)."""
    from genrep.encoders import normalize
    from genrep.train.trainer import _build_model

    device, side, steps = check.device, check.sizes.train_side, check.sizes.train_steps
    model = _build_model(config, info, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    views, dtype = config.views, PRECISIONS[config.precision]
    pixels = torch.randint(0, 256, (config.batch_size * views, 3, side, side), device=device)
    pixels = pixels.to(torch.uint8)

    def step() -> None:
        images = normalize(pixels)
        if check.on_gpu:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = model(images, {"views": views})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return pixels.shape[0] * steps / (time.perf_counter() - started)


def pipeline_rate(check: Check, config: Any, info: Any, workers: int) -> float:
    """img/s of genrep-train's input: its DataLoader, the copy to the device, and the batched
    Tx there with `config.tx_on` device (a warm-up first; the model is left out)."""
    from genrep.train.trainer import Distributed, _loader, device_tx_generator

    device = check.device
    env = Distributed(0, 1, 0, device)
    tx = build_recipe(config.tx).batched(config.input_size) if config.tx_on == "device" else None
    loader = iter(_loader(config, info, env, 0, workers))

    def deliver(step: int) -> int:
        images = next(loader)["images"].to(device, non_blocking=True).flatten(0, 1)
        if tx is not None:
            images = tx(images, device_tx_generator(config, env, step))
        return images.shape[0]

    for step in range(2):
        deliver(step)
    sync(device)
    started = time.perf_counter()
    images = sum(deliver(step) for step in range(check.sizes.train_steps))
    sync(device)
    return images / (time.perf_counter() - started)


def check_device_tx(check: Check, config: Any) -> None:
    """The batched Tx on this device against the per-image PIL path: the per-view channel means
    of many views of one image must be alike in distribution (KS statistic)."""
    import numpy as np
    from PIL import Image
    from scipy.stats import ks_2samp

    views, side = 2000, check.sizes.train_side
    y, x = np.mgrid[0:side, 0:side] * (255 // max(1, side - 1))
    frame = np.stack([x, y, (x + y) // 2], -1).clip(0, 255).astype(np.uint8)
    recipe = build_recipe(config.tx)
    size = recipe.default_input_size(side)
    transform, image = recipe.augment(size), Image.fromarray(frame)
    pil = torch.stack([transform(image) for _ in range(views)]).double().mean((2, 3))
    frames = torch.from_numpy(frame).permute(2, 0, 1).to(check.device)
    generator = torch.Generator(check.device).manual_seed(0)
    batched = recipe.batched(size)(frames.expand(views, -1, -1, -1).contiguous(), generator)
    ours = batched.double().mean((2, 3)).cpu()
    distance = max(
        float(ks_2samp(ours[:, c], pil[:, c], method="asymp").statistic) for c in range(3)
    )
    check.add(
        f"train Tx on device vs PIL ({config.tx})",
        "uint8",
        "KS of color means",
        distance,
        "< 0.1",
        distance < 0.1,
    )


def check_training(check: Check) -> Path:
    """Input pipeline alone vs model step alone vs genrep-train, on a dataset made here."""
    from genrep.train.cli import main as train_main
    from genrep.train.config import TrainConfig
    from genrep.train.data import check_stream_sizes, open_data

    sizes, device = check.sizes, check.device
    data = check.work / "train-data"
    plan = make_plan(
        {
            "model": "embedded",
            "model_option": {"resolution": sizes.train_side},
            "n": sizes.train_anchors,
            "shard_size": max(1, sizes.train_anchors // 8),
            "device": str(device),
            "out": str(data),
        },
        progress=False,
    )
    generate(plan, batch_size=256, workers=check.workers, progress=False)
    info = open_data([str(data)], None, None)
    config = TrainConfig(
        shards=(str(data),),
        arch=sizes.arch,
        input_size=sizes.train_side,
        batch_size=sizes.train_batch,
        steps=sizes.train_steps,
        device=str(device),
        precision="bf16" if check.on_gpu else "fp32",
        workers=check.workers,
    ).resolve(info, 1, device)
    precision = config.precision
    workers = check_stream_sizes(info, 1, config.workers, config.batch_size)

    # The input pipeline alone, with Tx in the workers and batched on the device (the workers
    # only decode): genrep-train's DataLoader and Tx, batches counted after a warm-up.
    rates = {}
    for place in ("workers", "device"):
        placed = replace(config, tx_on=place)
        rates[place] = pipeline_rate(check, placed, info, workers)
        check.add(f"train input pipeline (Tx on {place})", "uint8", "img/s", rates[place])
    check.add(
        "train Tx on device / on workers",
        "uint8",
        "img/s ratio",
        rates["device"] / rates["workers"],
    )
    check_device_tx(check, config)

    model_rate = model_step_rate(check, config, info)
    check.add(f"train step {sizes.arch}-{sizes.train_side}", precision, "img/s", model_rate)
    for place, rate in rates.items():
        ratio = rate / model_rate
        check.speed(
            f"train input vs step (Tx on {place})",
            precision,
            "pipeline / step img/s",
            ratio,
            ">= 1",
            ratio >= 1,
        )

    # genrep-train end to end (the rate it logs over its last window).
    run = check.work / "train-run"
    train_main.main(_train_args(check, data, run, sizes.train_steps), standalone_mode=False)
    record = json.loads((run / LOG).read_text().splitlines()[-1])
    finite = math.isfinite(record["loss"])
    check.add("genrep-train", precision, "loss finite", finite, "", finite)
    check.add("genrep-train", precision, "end-to-end img/s", record["images_per_s"])
    e2e = record["images_per_s"] / model_rate
    check.speed("genrep-train", precision, "end-to-end / step img/s", e2e, ">= 0.95", e2e >= 0.95)
    return data


def check_online(check: Check) -> None:
    """genrep-train --generator on the samples of the training check's shards, generated while
    training (by DataLoader workers spawned on CUDA), against that check's run from the shards."""
    from genrep.train.cli import main as train_main

    sizes = check.sizes
    run = check.work / "online-run"
    args = _train_args(check, check.work / "train-data", run, sizes.train_steps)[1:]
    args += [
        "--generator", "embedded",
        "--generator-option", f"resolution={sizes.train_side}",
        "--n", str(sizes.train_anchors),
        "--shard-size", str(max(1, sizes.train_anchors // 8)),
    ]  # fmt: skip
    train_main.main(args, standalone_mode=False)
    precision = "bf16" if check.on_gpu else "fp32"
    record = json.loads((run / LOG).read_text().splitlines()[-1])
    finite = math.isfinite(record["loss"])
    check.add("genrep-train --generator", precision, "loss finite", finite, "", finite)
    check.add("genrep-train --generator", precision, "end-to-end img/s", record["images_per_s"])
    offline = json.loads((check.work / "train-run" / LOG).read_text().splitlines()[-1])
    ratio = record["images_per_s"] / offline["images_per_s"]
    check.add("genrep-train --generator", precision, "online / shards img/s", ratio)


def check_ddp(check: Check, data: Path) -> None:
    """genrep-train under `torchrun --nproc-per-node 1`: a real process group (nccl on CUDA)."""
    run = check.work / "ddp-run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--standalone",
        "-m", "genrep.train.cli", *_train_args(check, data, run, 3),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    ok = result.returncode == 0 and (run / "backbone.pth").exists()
    if not ok:
        print(result.stdout[-2000:], result.stderr[-4000:], file=sys.stderr)
    backend = "nccl" if check.on_gpu else "gloo"
    check.add(f"torchrun 1 process ({backend})", "-", "exit code", result.returncode, "0", ok)


# ------------------------------------------------------------------------------------ probe, etc.


def check_knn(check: Check) -> None:
    import numpy as np

    from genrep.evaluate.protocols.knn import ENGINES, faiss_gpu_available, knn_scores

    rows, queries, dim = check.sizes.knn
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(100, dim)).astype(np.float32)
    labels = rng.integers(0, 100, rows)
    train = centers[labels] + rng.normal(scale=8.0, size=(rows, dim)).astype(np.float32)
    query = centers[rng.integers(0, 100, queries)] + rng.normal(scale=8.0, size=(queries, dim))
    if "faiss" not in ENGINES:
        check.add("knn faiss", "fp32", "installed", False, "on Linux x86_64", False)
    results = {}
    for engine in ENGINES:
        sync(check.device)
        started = time.perf_counter()
        results[engine] = knn_scores(
            train, labels, query.astype(np.float32), 100, engine=engine, device=check.device
        ).argmax(1)
        sync(check.device)
        seconds = time.perf_counter() - started
        where = engine
        if engine == "faiss":
            where += " GPU" if check.on_gpu and faiss_gpu_available() else " CPU"
        check.add(f"knn {where} {rows}x{dim}, {queries} q", "fp32", "s", seconds)
    if check.on_gpu:
        gpu = faiss_gpu_available()
        check.add("knn faiss", "fp32", "GPU index", gpu, "True", gpu)
    agreement = float((results["faiss"] == results["torch"]).mean()) if len(results) > 1 else 1.0
    check.add(
        "knn faiss vs torch", "fp32", "top-1 agreement", agreement, ">= 0.999", agreement >= 0.999
    )


def check_diffusers(check: Check) -> None:
    import importlib.util

    if importlib.util.find_spec("diffusers") is None:
        check.add("diffusers tiny", "-", "skipped", "diffusers is not installed")
        return
    sys.path.insert(0, str(BENCHMARKS.parent / "tests"))
    from diffusion_helpers import make_tiny_pipeline

    pipeline = make_tiny_pipeline(check.work / "tiny-sd")
    prompts = check.work / "prompts.txt"
    prompts.write_text("a red car\na blue bird\n")
    for precision in ("fp32", "bf16" if check.on_gpu else "fp32"):
        out = check.work / f"diffusers-{precision}"
        if out.exists():
            continue
        plan = make_plan(
            {
                "model": "diffusers",
                "weights": str(pipeline),
                "model_option": {"prompts": str(prompts), "steps": check.sizes.diffusion_steps},
                "n": 4 * check.sizes.batch,
                "view": "independent",
                "device": str(check.device),
                "precision": precision,
                "out": str(out),
            },
            progress=False,
        )
        started = time.perf_counter()
        generate(plan, batch_size=check.sizes.batch, workers=0, progress=False)
        rate = 8 * check.sizes.batch / (time.perf_counter() - started)
        check.add("diffusers tiny 32 px", precision, "end-to-end img/s", rate)
    check.add("diffusers online generation", "-", "skipped", "not in genrep yet")


# ----------------------------------------------------------------------------------------- main


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def print_table(rows: list[Row]) -> None:
    header = ("path", "device", "dtype", "metric", "value", "goal", "ok")
    cells = [
        (
            r.path,
            r.device,
            r.dtype,
            r.metric,
            format_value(r.value),
            r.goal,
            {True: "yes", False: "NO", None: "-"}[r.ok],
        )
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
    for line in [header, tuple("-" * w for w in widths), *cells]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


CHECKS = ("generate", "steer", "train", "knn", "diffusers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cuda[:N] or cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes (CPU, CI)")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma list of {CHECKS}")
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="encoder and DataLoader processes [genrep's default: CPUs - 1, at most 8]",
    )
    parser.add_argument("--work", default=None, help="folder for datasets and runs [temporary]")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    sizes = QUICK if args.quick else Sizes()
    threads = torch.get_num_threads()
    if args.quick and device.type == "cpu":
        # Toy networks gain nothing from threads, which spin and wait on a busy CI machine.
        torch.set_num_threads(1)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    only = set(args.only.split(","))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="genrep-gpu-check-", dir=args.work) as work:
        check = Check(device, sizes, Path(work), args.workers)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(
            f"genrep gpu_check on {name}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
            f"{'quick' if args.quick else 'full'} sizes",
            flush=True,
        )
        if "generate" in only:
            check_generation(check)
        if "steer" in only:
            check.run("steer", lambda: check_steer(check))
        if "train" in only:
            data: list[Path] = []
            check.run("train", lambda: data.append(check_training(check)))
            if data:
                check.run("ddp", lambda: check_ddp(check, data[0]))
                check.run("online", lambda: check_online(check))
        if "knn" in only:
            check.run("knn", lambda: check_knn(check))
        if "diffusers" in only:
            check.run("diffusers", lambda: check_diffusers(check))
    torch.set_num_threads(threads)
    print_table(check.rows)
    failed = [row for row in check.rows if row.ok is False]
    print(f"{len(check.rows)} rows, {len(failed)} failed, {time.perf_counter() - started:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
