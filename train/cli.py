"""`genrep-train`: learn an encoder from generated shards (or real images); `genrep-export`."""

from __future__ import annotations

from typing import Any

import click

from genrep.encoders import resnet_names
from genrep.errors import Command
from genrep.generate.cli import sample_options
from genrep.generate.models import GENERATORS
from genrep.options import RegistryChoice, common_options, config_option, parse_key_values
from genrep.remote import DatasetLocation
from genrep.runs import EXPORT_FORMATS, export_backbone
from genrep.train.config import DEFAULT_EPOCHS, OBJECTIVE_CONTEXT, TX_PLACES, TrainConfig
from genrep.train.objectives import OBJECTIVES
from genrep.train.objectives.base import BASE_TEMPERATURE, PROJECTION_DIM, TEMPERATURE
from genrep.train.trainer import train
from genrep.train.tx import TX_RECIPES

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


def _log(message: str) -> None:
    click.echo(message, err=True)


def _takers(option: str) -> str:
    """The objectives that take `option` (the others refuse it)."""
    return ", ".join(
        name
        for name in OBJECTIVES.canonical_names()
        if option in OBJECTIVES.options(name, OBJECTIVE_CONTEXT)
    )


@click.command(cls=Command, context_settings=CONTEXT, recorded_keys=TrainConfig.derived_fields())
@config_option
@click.argument("shards", nargs=-1, type=DatasetLocation())
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
    "--generator",
    type=RegistryChoice(GENERATORS),
    default=None,
    help="Train online on fresh samples of this generator instead of shards: the samples that "
    "genrep-generate makes with the same flags (--view, --n, --classes, ... below).",
)
@click.option("--generator-weights", default=None, help="--generator's weights (as --weights).")
@click.option(
    "--generator-option",
    multiple=True,
    callback=parse_key_values,
    metavar="KEY=VALUE",
    help="Extra --generator option, repeatable (as genrep-generate --model-option).",
)
@click.option(
    "--generator-device",
    default=None,
    help="Where --generator runs (in eval mode, without gradients) [default: --device].",
)
@click.option(
    "--generator-batch-size",
    type=int,
    default=TrainConfig.generator_batch_size,
    help="Images per --generator forward pass.",
)
@click.option(
    "--generator-seed",
    type=int,
    default=TrainConfig.generator_seed,
    help="Latent seed of --generator's samples (genrep-generate --seed).",
)
@click.option(
    "--stream",
    is_flag=True,
    help="With --generator: every epoch is --n fresh samples (the paper's continuous stream), "
    "not the same --n samples again.",
)
@sample_options
@click.option(
    "--objective",
    type=RegistryChoice(OBJECTIVES),
    default=TrainConfig.objective,
    help="simclr (InfoNCE, eq. 1), supcon (class positives), inverter (regress z), "
    "classifier (class cross-entropy).",
)
@click.option(
    "--arch",
    type=click.Choice(resnet_names()),
    default=TrainConfig.arch,
    help="torchvision ResNet encoder.",
)
@click.option(
    "--tx",
    type=RegistryChoice(TX_RECIPES),
    default=TrainConfig.tx,
    help="Pixel augmentation recipe Tx.",
)
@click.option(
    "--tx-on",
    type=click.Choice(TX_PLACES),
    default=TrainConfig.tx_on,
    help="Where Tx runs: workers (DataLoader processes, per image, PIL) or device (batched on "
    "the training device after the workers decoded the frames; CUDA: keeps a GPU fed) "
    "[auto: device on CUDA, else workers; --real always uses workers].",
)
@click.option(
    "--augment/--no-augment",
    default=None,
    help="Apply Tx to each view [default: yes, except for the inverter]. --no-augment "
    "trains on Tz only: the central 128 px of each whole generated frame (App. A), or the "
    "center of stored crops.",
)
@click.option(
    "--input-size",
    type=int,
    default=None,
    help="Encoder input side [default: genrep: 0.875 x 128 = 112, simclr: 128 (for whole "
    "frames and real images; stored crops: of their side; smaller stored frames: of their "
    "short side)].",
)
@click.option(
    "--views",
    type=int,
    default=None,
    help="Views per sample: anchor + V-1 of its K neighbors, or V Tx of the anchor "
    "when it has none [default: K+1 (2 if K=0); 1 for inverter/classifier].",
)
@click.option(
    "--batch-size",
    type=int,
    default=TrainConfig.batch_size,
    help="Global batch (samples), split over ranks.",
)
@click.option(
    "--lr",
    type=float,
    default=TrainConfig.lr,
    help="SGD learning rate at batch 256; scaled linearly with --batch-size.",
)
@click.option("--momentum", type=float, default=TrainConfig.momentum, help="SGD momentum.")
@click.option(
    "--weight-decay", type=float, default=TrainConfig.weight_decay, help="SGD weight decay."
)
@click.option(
    "--temperature",
    type=float,
    default=None,
    help=f"Contrastive temperature ({_takers('temperature')}) [default: {TEMPERATURE}].",
)
@click.option(
    "--base-temperature",
    type=float,
    default=None,
    help=f"The loss is scaled by temperature / base temperature, as the released code's "
    f"({_takers('base_temperature')}) [default: {BASE_TEMPERATURE}; equal to --temperature: the "
    "plain loss of eq. 1].",
)
@click.option(
    "--projection-dim",
    type=int,
    default=None,
    help=f"Output of the 2-layer projection head ({_takers('projection_dim')}) "
    f"[default: {PROJECTION_DIM}].",
)
@click.option(
    "--epochs", type=int, default=None, help=f"Passes over the data [default: {DEFAULT_EPOCHS}]."
)
@click.option(
    "--steps",
    type=int,
    default=None,
    help="Fixed number of steps instead of --epochs (Fig. 6: one budget for every dataset size).",
)
@click.option(
    "--warmup-steps",
    type=int,
    default=TrainConfig.warmup_steps,
    help="Linear lr warmup before the cosine decay.",
)
@click.option(
    "--shuffle-buffer",
    type=int,
    default=TrainConfig.shuffle_buffer,
    help="Samples in each worker's shuffle buffer.",
)
@click.option(
    "--seed",
    type=int,
    default=TrainConfig.seed,
    help="Seed of the encoder's initialization, the data order and the Tx draws.",
)
@common_options(device=True, precision=True, workers=True, progress=True)
@click.option(
    "--checkpoint-every",
    type=int,
    default=TrainConfig.checkpoint_every,
    help="Steps between checkpoints.",
)
@click.option(
    "--log-every", type=int, default=TrainConfig.log_every, help="Steps between log records."
)
@click.option(
    "--strict",
    is_flag=True,
    help="Stop at a bad sample (a missing or undecodable view) or a damaged shard instead of "
    "skipping it.",
)
@click.option(
    "--verify/--no-verify",
    default=True,
    help="Check each shard's size and sha256 against its manifest the first time it is read "
    "(hashed while streaming); a shard that differs is skipped like a damaged one.",
)
@click.option(
    "--out",
    default=None,
    help="Run folder: new, empty, or this command's own run to resume "
    "[default: runs/<dataset>-<objective>].",
)
def main(**options: Any) -> None:
    """Train an encoder on the shard folders SHARDS made by genrep-generate (or on --real images,
    or online on a --generator's samples, with no shards).

    Rerunning the same command resumes from the run folder's last checkpoint. For several GPUs or
    nodes, launch it with torchrun. The run folder gets backbone.pth (a state dict that
    torchvision.models.<arch>() with fc = Identity loads strictly), checkpoint.pt, config.yaml,
    log.jsonl and TensorBoard scalars.
    """
    train(TrainConfig(**options), log=_log)


@click.command(cls=Command, context_settings=CONTEXT)
@config_option
@click.argument("checkpoint", type=click.Path(exists=True))
@click.argument("out", type=click.Path())
@click.option(
    "--format",
    "format_",
    type=click.Choice(EXPORT_FORMATS),
    default=None,
    help="torch (torch.save) or safetensors [default: by OUT's extension: .safetensors or torch].",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def export_main(checkpoint: str, out: str, format_: str | None, overwrite: bool) -> None:
    """Write the backbone of CHECKPOINT (a checkpoint.pt or run folder) to OUT as a state dict.

    OUT loads with strict=True into torchvision.models.<arch>() whose fc is torch.nn.Identity(),
    and into timm, whose ResNets use the same names:
    timm.create_model(ARCH, num_classes=0, checkpoint_path=OUT). A .safetensors OUT records its
    architecture in the file's metadata (`arch`).
    """
    arch = export_backbone(checkpoint, out, overwrite=overwrite, format=format_)
    click.echo(f"wrote the {arch} backbone of {checkpoint} to {out}", err=True)


if __name__ == "__main__":
    main()
