"""Does the stage-1 pipeline slow the generator down? images/s end to end vs. forward passes only.

For each model, in one run and with the same generator, batch size, device and precision:

- forward only: `generator(z, y)` on batches of random latents, nothing else;
- pipeline: `genrep-generate` in this process (latents, views, forward, crop, JPEG encoding in the
  worker pool, shards, manifest), minus the time it takes to build the generator;
- CLI: the `genrep-generate` command in a fresh process, start-up and weight loading included.

Ratios are images/s relative to forward only (goal for biggan-deep-128: pipeline >= 0.9). On a
shared machine the separate measurements see different loads, so the pipeline run also clocks the
generator's own forward calls ("in-run"): pipeline / in-run forward is the share of the pipeline's
wall time spent in the generator, measured under one and the same load.
biggan-deep-128 runs with random weights in the published layout, written to a temporary
folder and passed with --weights (needs the test extra pytorch-pretrained-biggan for the layout).

    python benchmarks/generate_overhead.py [--n 32] [--batch-size 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from genrep.generate.cli import main as generate_main
from genrep.generate.models import Generator, build_generator
from genrep.generate.models._layers import read_json
from genrep.options import PRECISIONS


def random_biggan_weights(folder: Path) -> Path:
    """biggan-deep-128 with random values in the layout of the published pytorch_model.bin."""
    try:
        from pytorch_pretrained_biggan import BigGAN, BigGANConfig
    except ImportError:
        sys.exit(
            "needs pytorch-pretrained-biggan for the checkpoint layout: "
            "pip install pytorch-pretrained-biggan (the test extra)"
        )
    config = BigGANConfig.from_dict(copy.deepcopy(read_json("biggan-deep-128-config.json")))
    with torch.device("meta"):
        layout = BigGAN(config).state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, meta in layout.items():
        value = torch.randn(meta.shape, generator=generator)
        state[key] = value.abs() + 0.5 if key.endswith("running_vars") else value * 0.05
    for key in [k for k in state if k.endswith("weight_orig")]:  # consistent u, v
        prefix, matrix = key[: -len("orig")], state[key].flatten(1)
        state[prefix + "v"] = torch.nn.functional.normalize(matrix.t() @ state[prefix + "u"], dim=0)
        state[prefix + "u"] = torch.nn.functional.normalize(matrix @ state[prefix + "v"], dim=0)
    path = folder / "biggan-deep-128-pytorch_model.bin"
    torch.save(state, path)
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ForwardClock:
    """Adds up the wall time and images of every `Generator` forward call while active."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self.images = device, 0.0, 0
        self._started = 0.0

    def _pre(self, module: torch.nn.Module, _args) -> None:
        if isinstance(module, Generator):
            sync(self.device)
            self._started = time.perf_counter()

    def _post(self, module: torch.nn.Module, _args, output: torch.Tensor) -> None:
        if isinstance(module, Generator):
            sync(self.device)
            self.seconds += time.perf_counter() - self._started
            self.images += output.shape[0]

    def __enter__(self) -> ForwardClock:
        hooks = torch.nn.modules.module
        self._handles = [
            hooks.register_module_forward_pre_hook(self._pre),
            hooks.register_module_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


def forward_only(
    model: torch.nn.Module, images: int, batch_size: int, device: torch.device, precision: str
) -> float:
    """images/s of bare forward passes over `images` images in batches of `batch_size`."""
    dtype = PRECISIONS[precision]
    z = torch.randn(batch_size, model.z_dim, device=device)
    y = (
        torch.randint(0, model.num_classes, (batch_size,), device=device)
        if model.conditional
        else None
    )
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
    ):
        model(z, y)  # warm-up (allocator, kernels)
        sync(device)
        started = time.perf_counter()
        for start in range(0, images, batch_size):
            count = min(batch_size, images - start)
            model(z[:count], None if y is None else y[:count])
        sync(device)
    return images / (time.perf_counter() - started)


def cli_args(model: str, weights: Path | None, out: Path, args: argparse.Namespace) -> list[str]:
    flags = [
        "--model",
        model,
        "--n",
        str(args.n),
        "--neighbors",
        "1",
        "--view",
        "gaussian",
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--workers",
        str(args.workers),
        "--size",
        str(args.size),
        "--out",
        str(out),
        "--no-progress",
    ]
    if weights is not None:
        flags += ["--weights", str(weights)]
    if model == "biggan-deep-128":
        flags += ["--classes", "imagenet100"]
    return flags


def measure(model: str, weights: Path | None, work: Path, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    images = args.n * 2  # anchor + one neighbor each
    started = time.perf_counter()
    generator = build_generator(
        model, weights=None if weights is None else str(weights), device=device
    )
    build_s = time.perf_counter() - started
    result = {"forward": 0.0, "pipeline": 0.0, "in_run": 0.0, "cli": 0.0, "build_s": build_s}
    for repeat in range(args.repeats):  # best of `repeats`: the machine may be shared
        result["forward"] = max(
            result["forward"],
            forward_only(generator, images, args.batch_size, device, args.precision),
        )
        out = work / f"{model}-{repeat}"
        with ForwardClock(device) as clock:
            started = time.perf_counter()
            generate_main.main(cli_args(model, weights, out, args), standalone_mode=False)
            pipeline_s = time.perf_counter() - started - build_s
        if images / pipeline_s > result["pipeline"]:
            result["pipeline"] = images / pipeline_s
            result["in_run"] = clock.images / clock.seconds
        shutil.rmtree(out)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "genrep.generate.cli", *cli_args(model, weights, out, args)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        result["cli"] = max(result["cli"], images / (time.perf_counter() - started))
        shutil.rmtree(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="biggan-deep-128,embedded")
    parser.add_argument("--n", type=int, default=32, help="anchors (2 images each)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="best of N (shared machines)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="genrep-bench-") as tmp:
        work = Path(tmp)
        print(
            f"device {args.device}, {args.precision}, batch {args.batch_size}, "
            f"{args.n} anchors + {args.n} neighbors, {args.workers} encoder workers, "
            f"torch threads {torch.get_num_threads()}"
        )
        print(
            f"{'model':<17}{'forward':>9}{'pipeline':>10}{'ratio':>7}{'in-run fwd':>12}"
            f"{'ratio':>7}{'CLI':>8}{'ratio':>7}{'build s':>9}   (img/s)"
        )
        for model in args.models.split(","):
            weights = random_biggan_weights(work) if model == "biggan-deep-128" else None
            r = measure(model, weights, work, args)
            print(
                f"{model:<17}{r['forward']:>9.2f}{r['pipeline']:>10.2f}"
                f"{r['pipeline'] / r['forward']:>7.2f}{r['in_run']:>12.2f}"
                f"{r['pipeline'] / r['in_run']:>7.2f}{r['cli']:>8.2f}"
                f"{r['cli'] / r['forward']:>7.2f}{r['build_s']:>9.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
