"""What genrep-train's shard checksums cost: the first epoch of its input pipeline with the
sha256 check (the default: each shard hashed while it streams, the first time a run reads it)
against `--no-verify`, in one run.

Each round times one whole epoch of each setting, in alternating order (the page cache and a
shared machine's load favour neither), each with a fresh stream, so every shard is hashed in
each verified epoch. It prints the median images/s of each and the median ratio verify /
no-verify (1.0 = no cost).

    nice -n 10 python benchmarks/verify_cost.py                # generates 1024 anchors at 128 px
    python benchmarks/verify_cost.py --data shards/demo --workers 8
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click
from input_pipeline import pair_spec  # benchmarks/, the script's folder
from torch.utils.data import DataLoader

from genrep.options import default_workers
from genrep.train.data import TrainingStream, open_data
from genrep.train.tx import build_recipe


def epoch_images_per_second(data: str, verify: bool, batch_size: int, workers: int) -> float:
    """Views per second of one epoch of genrep-train's input (anchor and one neighbor, genrep Tx)
    from a fresh stream: the shards are read (and with `verify` hashed) for the first time."""
    info = open_data([data], None, None, verify=verify)
    recipe = build_recipe("genrep")
    spec = pair_spec(info, recipe.augment(recipe.default_input_size(info.train_side)))
    stream = TrainingStream(
        info, spec, rank=0, world=1, batch_size=batch_size, start_step=0, shuffle_buffer=1
    )
    batches = iter(DataLoader(stream, batch_size=batch_size, num_workers=workers))
    start, images = time.perf_counter(), 0
    for _ in range(info.epoch_size // batch_size):
        batch = next(batches)
        images += batch["images"].shape[0] * batch["images"].shape[1]
    return images / (time.perf_counter() - start)


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--n", type=int, default=1024, help="Anchors to generate when --data is not given.")
@click.option("--size", type=int, default=128, help="Image side of the generated dataset.")
@click.option("--batch-size", type=int, default=64)
@click.option("--rounds", type=int, default=5)
@click.option("--workers", type=int, default=default_workers(), help="DataLoader workers.")
def main(data: str | None, n: int, size: int, batch_size: int, rounds: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            from click.testing import CliRunner

            from genrep.generate.cli import main as generate

            data = str(Path(tmp) / "shards")
            click.echo(f"generating {n} anchors + 1 neighbor at {size} px ...", err=True)
            args = ["--n", str(n), "--size", str(size), "--shard-size", "128", "--no-progress"]
            result = CliRunner().invoke(generate, [*args, "--out", data])
            if result.exit_code:
                raise click.ClickException(result.output)
        rates: dict[bool, list[float]] = {True: [], False: []}
        for r in range(rounds):
            for verify in (True, False) if r % 2 == 0 else (False, True):
                rates[verify].append(epoch_images_per_second(data, verify, batch_size, workers))
    ratio = statistics.median(v / t for v, t in zip(rates[True], rates[False], strict=True))
    click.echo(f"medians of {rounds} first epochs, {workers} workers, batch {batch_size}:")
    click.echo(f"verify (default): {statistics.median(rates[True]):8.0f} images/s")
    click.echo(f"--no-verify:      {statistics.median(rates[False]):8.0f} images/s")
    click.echo(f"ratio verify / no-verify: {ratio:.2f}")


if __name__ == "__main__":
    main()
