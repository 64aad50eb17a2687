"""`genrep-train`: learn an encoder from generated shards (or real images); `genrep-export`."""

from __future__ import annotations

import os
from typing import Any

import click

from genrep.options import config_option
from genrep.registry import RegistryError


def default_workers() -> int:
    """DataLoader workers per rank: this process's CPUs shared by the local ranks, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(8, cpus // local_ranks))


def _user_errors() -> tuple[type[Exception], ...]:
    from genrep.train.checkpoint import CheckpointError
    from genrep.train.data import DataError
    from genrep.train.model import ArchError
    from genrep.train.objectives import ObjectiveError
    from genrep.train.trainer import TrainError

    return (TrainError, DataError, ObjectiveError, ArchError, CheckpointError, RegistryError)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@config_option
@click.argument("shards", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--real",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Real images in ImageFolder layout (alone: the paper's 'Real' baselines).",
)
@click.option(
    "--real-fraction",
    type=float,
    default=None,
    help="With shard folders and --real: fraction of training samples drawn from "
    "the real images (App. F).",
)
@click.option(
    "--objective",
    default="simclr",
    help="simclr (InfoNCE, eq. 1), supcon (class positives), inverter (regress z), "
    "classifier (class cross-entropy).",
)
@click.option("--arch", default="resnet50", help="torchvision ResNet encoder.")
@click.option("--tx", default="genrep", help="Pixel augmentation recipe Tx: genrep or simclr.")
@click.option(
    "--augment/--no-augment",
    default=None,
    help="Apply Tx to each view [default: yes, except for the inverter]. --no-augment "
    "trains on Tz only (resize + center crop).",
)
@click.option(
    "--input-size",
    type=int,
    default=None,
    help="Encoder input side [default: genrep: 0.875 x stored side; simclr: stored side].",
)
@click.option(
    "--views",
    type=int,
    default=None,
    help="Views per sample: anchor + V-1 of its K neighbors, or V Tx of the anchor "
    "when it has none [default: K+1 (2 if K=0); 1 for inverter/classifier].",
)
@click.option(
    "--batch-size", type=int, default=256, help="Global batch (samples), split over ranks."
)
@click.option(
    "--lr",
    type=float,
    default=0.03,
    help="SGD learning rate at batch 256; scaled linearly with --batch-size.",
)
@click.option("--momentum", type=float, default=0.9)
@click.option("--weight-decay", type=float, default=1e-4)
@click.option("--temperature", type=float, default=0.1, help="Contrastive temperature.")
@click.option(
    "--projection-dim", type=int, default=128, help="Output of the 2-layer projection head."
)
@click.option("--epochs", type=int, default=None, help="Passes over the data [default: 20].")
@click.option(
    "--steps",
    type=int,
    default=None,
    help="Fixed number of steps instead of --epochs (Fig. 6: one budget for every dataset size).",
)
@click.option(
    "--warmup-steps", type=int, default=0, help="Linear lr warmup before the cosine decay."
)
@click.option("--workers", type=int, default=default_workers(), help="DataLoader workers per rank.")
@click.option(
    "--shuffle-buffer", type=int, default=1000, help="Samples in each worker's shuffle buffer."
)
@click.option("--seed", type=int, default=0)
@click.option("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N.")
@click.option(
    "--precision",
    type=click.Choice(["auto", "bf16", "fp32"]),
    default="auto",
    help="auto: bf16 autocast on CUDA, fp32 on CPU.",
)
@click.option("--checkpoint-every", type=int, default=500, help="Steps between checkpoints.")
@click.option("--log-every", type=int, default=10, help="Steps between log records.")
@click.option(
    "--strict",
    is_flag=True,
    help="Stop at a sample with a missing or undecodable view instead of skipping it.",
)
@click.option("--out", default=None, help="Run folder [default: runs/<dataset>-<objective>].")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def main(**options: Any) -> None:
    """Train an encoder on the shard folders SHARDS made by genrep-generate (or on --real images).

    Rerunning the same command resumes from the run folder's last checkpoint. For several GPUs or
    nodes, launch it with torchrun. The run folder gets backbone.pth (a state dict that
    torchvision.models.<arch>() with fc = Identity loads strictly), checkpoint.pt, config.yaml,
    log.jsonl and TensorBoard scalars.
    """
    from genrep.train.trainer import train

    options["shards"] = list(options["shards"])
    for key in (
        "checkpoint_every",
        "log_every",
        "batch_size",
        "shuffle_buffer",
        "steps",
        "epochs",
        "input_size",
        "views",
    ):
        if options[key] is not None and options[key] < 1:
            raise click.BadParameter(
                f"must be >= 1, got {options[key]}", param_hint="--" + key.replace("_", "-")
            )
    if options["workers"] < 0 or options["warmup_steps"] < 0:
        raise click.UsageError("--workers and --warmup-steps must be >= 0")
    try:
        train(options, log=lambda message: click.echo(message, err=True))
    except _user_errors() as err:
        raise click.UsageError(str(err)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
def export_main(checkpoint: str, out: str) -> None:
    """Write the backbone of CHECKPOINT (a checkpoint.pt or run folder) to OUT as a state dict.

    OUT loads with strict=True into torchvision.models.<arch>() whose fc is torch.nn.Identity().
    """
    from genrep.train.checkpoint import export_backbone

    try:
        arch = export_backbone(checkpoint, out)
    except _user_errors() as err:
        raise click.UsageError(str(err)) from None
    click.echo(f"wrote the {arch} backbone of {checkpoint} to {out}", err=True)


if __name__ == "__main__":
    main()
