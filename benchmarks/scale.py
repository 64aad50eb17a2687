"""Does genrep's cost per image stay flat as datasets grow? Generation and training input at
growing n, in one run.

1. generate: `genrep-generate` of the embedded generator (small images, `--model-option
   resolution=32`) at each n, in a fresh process each; the largest n writes every `--every`-th
   shard (`--shards 0::STEP`), a sample whose per-shard costs (manifest update, resume scan) are
   those of the whole dataset. Reported: img/s of the run (as genrep-generate logs it), the
   process's peak RSS, and the time of a rerun that finds every shard present (the resume scan).
   Goals: peak RSS at the largest n <= 1.1 x at the smallest; img/s at the largest n >= 0.9 x.
2. train input: a synthetic dataset of n samples in n/1000 shards (a manifest and empty shard
   files: nothing is decoded) opened as genrep-train opens it, and one epoch planned for 64
   streams (8 ranks x 8 DataLoader workers). Reported: seconds and peak Python memory of each.

    nice -n 10 python benchmarks/scale.py                       # 10k, 100k, 1.3M anchors
    python benchmarks/scale.py --sizes 1000,10000 --plan-sizes 13000,130000
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import click

from genrep.manifest import new_manifest, write_manifest
from genrep.shards import shard_name
from genrep.train.data import open_data

RATE = re.compile(r"wrote (\d+) shards \((\d+) images\) .* in ([\d.]+)s")


def run_generate(out: Path, n: int, every: int, resolution: int, workers: int) -> dict:
    """One genrep-generate process: its logged rate, peak RSS (via wait4) and wall time."""
    command = [
        sys.executable, "-m", "genrep.generate.cli", "--model", "embedded",
        "--model-option", f"resolution={resolution}", "--n", str(n), "--shard-size", "1000",
        "--workers", str(workers), "--no-progress", "--out", str(out),
    ]  # fmt: skip
    if every > 1:
        command += ["--shards", f"0::{every}"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise click.ClickException(f"genrep-generate failed:\n{stderr[-2000:]}")
    match = RATE.search(stderr)
    shards, images, seconds = int(match.group(1)), int(match.group(2)), float(match.group(3))
    return {
        "shards": shards,
        "images": images,
        "rate": images / seconds if seconds else 0.0,
        "rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "wall": wall,
    }


def synthetic_dataset(folder: Path, n: int, shard_size: int = 1000) -> Path:
    """A complete-looking dataset of n samples: its manifest, and an empty file per shard."""
    folder.mkdir(parents=True)
    image = {"width": 32, "height": 32, "frame": "full", "native_width": 32}
    image.update(native_height=32, format="jpg", quality=95, encoder="pil")
    manifest = new_manifest(
        generator={
            "name": "embedded",
            "z_dim": 128,
            "num_classes": 0,
            "resolution": 32,
            "weights_sha256": "0" * 64,
        },
        view={"name": "gaussian", "params": {}},
        seed=0,
        n=n,
        neighbors=1,
        classes=None,
        truncation=2.0,
        image=image,
        shard_size=shard_size,
        identity={},
        config={},
    )
    for k in range(manifest["num_shards"]):
        (folder / shard_name(k)).touch()
        samples = min(shard_size, n - k * shard_size)
        manifest["shards"].append(
            {
                "name": shard_name(k),
                "samples": samples,
                "first_index": k * shard_size,
                "bytes": 0,
                "sha256": f"{k:064x}",
            }
        )
    manifest["complete"] = True
    write_manifest(folder, manifest)
    return folder


def measure(function) -> tuple[float, float, object]:
    """(seconds, peak MiB of Python allocations, result) of `function()`."""
    tracemalloc.start()
    started = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak, result


def plan_epoch(info, streams: int = 64) -> int:
    source = info.sources[0]
    return sum(1 for s in range(streams) for _ in source.epoch_ranges(0, 0, s, streams))


@click.command()
@click.option("--sizes", default="10000,100000,1300000", show_default=True, help="Anchors n.")
@click.option(
    "--every",
    default="1,1,13",
    show_default=True,
    help="Shard step at each n (13: every 13th shard, --shards 0::13).",
)
@click.option("--resolution", default=32, show_default=True)
@click.option("--workers", default=1, show_default=True, help="Encoder processes.")
@click.option("--plan-sizes", default="13000,130000,1300000", show_default=True)
@click.option("--rounds", default=3, show_default=True, help="Interleaved rounds over the sizes.")
def main(
    sizes: str, every: str, resolution: int, workers: int, plan_sizes: str, rounds: int
) -> None:
    with tempfile.TemporaryDirectory(prefix="genrep-scale-") as tmp:
        work = Path(tmp)
        click.echo(
            f"generate: embedded at {resolution} px, shards of 1000, {workers} workers, "
            f"median of {rounds} interleaved rounds"
        )
        click.echo(
            f"{'n':>9} {'shards':>7} {'images':>8} {'img/s':>8} {'peak RSS MB':>12} "
            f"{'rerun s':>8} {'img/s ratio':>12} {'RSS ratio':>10}"
        )
        steps = [int(step) for step in every.split(",")]
        pairs = list(zip(map(int, sizes.split(",")), steps, strict=True))
        runs: dict[int, list[dict]] = {n: [] for n, _ in pairs}
        # The sizes alternate within each round, so that a machine whose load drifts over the run
        # biases no size; each figure is the median over the rounds (peak RSS: the largest).
        for round_index in range(rounds):
            for n, step in pairs:
                out = work / f"gen-{n}-{round_index}"
                result = run_generate(out, n, step, resolution, workers)
                result["rerun"] = run_generate(out, n, step, resolution, workers)["wall"]
                runs[n].append(result)
                subprocess.run(["rm", "-rf", str(out)], check=True)
        summary = {
            n: {
                "shards": results[0]["shards"],
                "images": results[0]["images"],
                "rate": statistics.median(r["rate"] for r in results),
                "rss_mb": max(r["rss_mb"] for r in results),
                "rerun": statistics.median(r["rerun"] for r in results),
            }
            for n, results in runs.items()
        }
        first = summary[pairs[0][0]]
        for n, result in summary.items():
            click.echo(
                f"{n:>9} {result['shards']:>7} {result['images']:>8} {result['rate']:>8.0f} "
                f"{result['rss_mb']:>12.0f} {result['rerun']:>8.1f} "
                f"{result['rate'] / first['rate']:>12.2f} {result['rss_mb'] / first['rss_mb']:>10.2f}"
            )
        last = summary[pairs[-1][0]]
        flat = last["rss_mb"] <= 1.1 * first["rss_mb"]
        steady = last["rate"] >= 0.9 * first["rate"]
        click.echo(f"memory flat (<= 1.1x): {flat}; throughput kept (>= 0.9x): {steady}")

        click.echo("\ntrain input: synthetic datasets (manifest + empty shards), 64 streams")
        click.echo(
            f"{'n':>9} {'shards':>7} {'open_data s':>12} {'MiB':>6} {'plan s':>8} {'MiB':>6}"
        )
        for n in map(int, plan_sizes.split(",")):
            folder = synthetic_dataset(work / f"plan-{n}", n)
            open_s, open_mb, info = measure(lambda f=folder: open_data([f], None, None))
            plan_s, plan_mb, pieces = measure(lambda i=info: plan_epoch(i))
            shards = json.loads((folder / "manifest.json").read_text())["num_shards"]
            click.echo(
                f"{n:>9} {shards:>7} {open_s:>12.3f} {open_mb:>6.1f} {plan_s:>8.3f} {plan_mb:>6.1f}"
            )


if __name__ == "__main__":
    main()
