"""Online training (`genrep-train --generator`) against offline training from shards, in one run.

Both are the real genrep-train on the same samples of a generator (the embedded one by default),
same encoder, Tx, batch and DataLoader workers; they run in turn over several rounds (a shared
machine's load drifts). It prints:

- the steady training images/s of each (median over the steps after the first `--warmup`),
- the ratio online / offline,
- the generation cost of the shards (genrep-generate, its default JPEG encoder), and from it the
  number of epochs over one fixed dataset after which shards pay off: making the shards once costs
  as much as the extra time online training spends generating again every epoch.

    python benchmarks/online_vs_offline.py                       # CPU, embedded generator
    python benchmarks/online_vs_offline.py --device cuda --model biggan-deep-256 --arch resnet50
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click
from click.testing import CliRunner

from genrep.generate.cli import main as generate_main
from genrep.options import default_workers
from genrep.runs import LOG
from genrep.train.cli import main as train_main
from genrep.train.config import TrainConfig
from genrep.train.trainer import train


def steady_rate(run: Path, warmup: int) -> float:
    """Median images/s of the logged steps after the first `warmup` (workers and caches warm)."""
    records = [json.loads(line) for line in (run / LOG).read_text().splitlines()]
    return statistics.median(r["images_per_s"] for r in records if r["step"] > warmup)


def run_training(args: list[str], out: Path, warmup: int) -> float:
    context = train_main.make_context("genrep-train", [*args, "--out", str(out)])
    train(TrainConfig(**context.params), log=lambda _message: None)
    return steady_rate(out, warmup)


@click.command()
@click.option("--model", default="embedded", help="Generator (genrep-generate --model).")
@click.option("--n", type=int, default=512, help="Anchors of the fixed dataset.")
@click.option("--size", type=int, default=None, help="genrep-generate --size [default: native].")
@click.option("--arch", default="resnet18", help="Encoder trained.")
@click.option("--batch-size", type=int, default=32)
@click.option("--steps", type=int, default=10, help="Training steps per run.")
@click.option("--warmup", type=int, default=3, help="Steps left out of the rates.")
@click.option("--rounds", type=int, default=3, help="Offline and online runs, in turn.")
@click.option("--workers", type=int, default=default_workers(), help="DataLoader workers.")
@click.option("--device", default="cpu")
def main(
    model: str,
    n: int,
    size: int | None,
    arch: str,
    batch_size: int,
    steps: int,
    warmup: int,
    rounds: int,
    workers: int,
    device: str,
) -> None:
    samples = ["--n", str(n), *(["--size", str(size)] if size else [])]
    common = ["--arch", arch, "--batch-size", str(batch_size), "--steps", str(steps)]
    common += ["--workers", str(workers), "--device", device, "--log-every", "1", "--no-progress"]
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        start = time.perf_counter()
        result = CliRunner().invoke(
            generate_main,
            [*samples, "--model", model, "--device", device, "--workers", str(workers)]
            + ["--no-progress", "--out", str(shards)],
        )
        if result.exit_code:
            raise click.ClickException(result.output)
        generation_s = time.perf_counter() - start
        rates: dict[str, list[float]] = {"offline": [], "online": []}
        for i in range(rounds):
            rates["offline"].append(
                run_training([str(shards), *common], Path(tmp) / f"offline{i}", warmup)
            )
            rates["online"].append(
                run_training(
                    ["--generator", model, *samples, *common], Path(tmp) / f"online{i}", warmup
                )
            )
    offline, online = (statistics.median(rates[name]) for name in ("offline", "online"))
    ratio = statistics.median(
        on / off for on, off in zip(rates["online"], rates["offline"], strict=True)
    )
    images = n * 2  # anchor + 1 neighbor per sample, both views used by training
    click.echo(
        f"{model} -> {arch}, {device}, batch {batch_size}, {workers} workers, medians of {rounds} "
        f"rounds of {steps - warmup} steps:"
    )
    click.echo(f"offline (shards):  {offline:8.1f} training images/s")
    click.echo(f"online (generator): {online:7.1f} training images/s")
    click.echo(f"ratio online / offline: {ratio:.2f}")
    click.echo(
        f"generating the shards ({images} images): {generation_s:.1f}s, "
        f"{images / generation_s:.1f} images/s"
    )
    extra_per_epoch = images / online - images / offline
    if extra_per_epoch > 0:
        click.echo(
            f"shards pay off after {generation_s / extra_per_epoch:.1f} epochs over the same "
            "dataset (fewer epochs, or fresh samples every epoch: online wins)"
        )
    else:
        click.echo("online training is as fast as training from shards: no shards needed")


if __name__ == "__main__":
    main()
