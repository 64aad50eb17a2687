"""Stage 1 commands: `genrep-generate` (views of a generator into webdataset shards) and
`genrep-steer` (the steering walks that `--view steer` uses)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from genrep.errors import Command, refuse_to_replace
from genrep.generate.edits import EDIT_NAMES, EDITS
from genrep.generate.image_encoders import DEFAULT_ENCODER, IMAGE_ENCODERS
from genrep.generate.models import GENERATORS, build_generator
from genrep.generate.pipeline import DEFAULT_CROP, generate, make_plan
from genrep.generate.steer import LR_SCHEDULES, OPTIMIZERS, SteerConfig, learn_walks
from genrep.generate.views import VIEWS
from genrep.generate.walks import cached_walks_path
from genrep.options import (
    RegistryChoice,
    common_options,
    config_option,
    parse_key_values,
    resolve_device,
)
from genrep.shards import FRAMES, IMAGE_FORMATS

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


def _log(message: str) -> None:
    click.echo(message, err=True)


def _shard_range(_ctx: click.Context, _param: click.Parameter, value: str | None):
    if value is None:
        return None
    parts = str(value).split(":")
    try:
        start = int(parts[0] or 0)
        stop = int(parts[1]) if len(parts) > 1 and parts[1] else 2**62
        step = int(parts[2]) if len(parts) > 2 and parts[2] else 1
    except ValueError:
        parts = []
    if not 2 <= len(parts) <= 3 or not 0 <= start < stop or step < 1:
        raise click.BadParameter(
            f"{value!r} is not START:STOP or START:STOP:STEP (shard numbers, STOP exclusive)"
        )
    return range(start, stop, step)


def _list_names(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """`--list`: print the models and views, then exit."""
    if not value:
        return
    click.echo("models: " + ", ".join(GENERATORS.names()))
    plugins = GENERATORS.plugin_names()
    if plugins:
        listed = ", ".join(f"{name} ({where})" for name, where in plugins.items())
        click.echo(f"installed plugin models: {listed}")
    click.echo("views: " + ", ".join(VIEWS.names()))
    ctx.exit()


def generator_options(command: Callable) -> Callable:
    """The flags that pick and build a generator, shared by every command that runs one."""
    for decorate in reversed(
        [
            click.option(
                "--model",
                type=RegistryChoice(GENERATORS),
                default="embedded",
                help="Generator: a built-in or installed (--list) model name, or your own code as "
                "package.module:attr or path/to/file.py:attr (command line only; "
                "docs/generators.md).",
            ),
            click.option(
                "--weights",
                default=None,
                help="Weights file or folder (default: cache, then download).",
            ),
            click.option(
                "--model-option",
                multiple=True,
                callback=parse_key_values,
                metavar="KEY=VALUE",
                help="Extra generator option, repeatable (e.g. truncation_psi=0.9).",
            ),
        ]
    ):
        command = decorate(command)
    return command


def sample_options(command: Callable) -> Callable:
    """The flags that say which samples of a generator are made (views, classes, count, frame):
    genrep-generate's, and genrep-train --generator's, which trains on the same samples."""
    for decorate in reversed(
        [
            click.option(
                "--view", type=RegistryChoice(VIEWS), default="gaussian", help="Latent view Tz."
            ),
            click.option(
                "--walks",
                default=None,
                help="Walk file of genrep-steer (view steer) [default: the cached walks of the "
                "model; learned and cached on a GPU, or on a CPU with --learn-walks].",
            ),
            click.option(
                "--learn-walks",
                is_flag=True,
                help="View steer without --walks on a CPU: learn the walks here anyway (hours).",
            ),
            click.option(
                "--step-scale",
                multiple=True,
                callback=parse_key_values,
                metavar="EDIT=SCALE",
                help="View steer: multiply the latent step of an edit's walks, repeatable "
                "[default: rotate_3d=5, as the released generation; rotate_3d=1 steps as the walk "
                "was learned].",
            ),
            click.option("--n", type=int, default=None, help="Number of anchors."),
            click.option(
                "--neighbors", type=int, default=1, help="Neighbor views stored per anchor."
            ),
            click.option(
                "--sigma",
                type=float,
                default=None,
                help="Std of the gaussian view [default: the model's: 0.2 unconditional, "
                "1.0 conditional, 0.25 stylegan2-car, as the paper].",
            ),
            click.option(
                "--truncation",
                type=float,
                default=None,
                help="Truncation t of the latents: anchors z ~ N_t(0, 1, t), gaussian noise "
                "w ~ N_t(0, sigma, t), independent views' z like anchors [default: the model's].",
            ),
            click.option(
                "--classes",
                default=None,
                help="Classes to sample: all, a named subset (imagenet100), K, or ids '3,7,9'. "
                "For the embedded model, K makes it class-conditional with K classes.",
            ),
            click.option(
                "--per-class", type=int, default=None, help="Anchors per class (sets --n)."
            ),
            click.option(
                "--frame",
                "--resize",
                "frame",
                type=click.Choice(FRAMES),
                default="full",
                help="What each stored image is: full (the whole generated frame, App. A: Tx "
                "crops from all of it), center-crop (its central --size square: Tz-only inputs), "
                "resize (short side to --size, then the central square). --resize is the name of "
                "format version 1.",
            ),
            click.option(
                "--size",
                type=click.IntRange(min=1),
                default=None,
                help="full: scale the short side down to this [default: native]; "
                f"center-crop/resize: the square's side [default: {DEFAULT_CROP}].",
            ),
            click.option(
                "--shard-size",
                type=int,
                default=1000,
                help="Anchors per shard (online training: per unit of the epoch's shuffled order).",
            ),
        ]
    ):
        command = decorate(command)
    return command


@click.command(cls=Command, context_settings=CONTEXT)
@config_option
@generator_options
@sample_options
@click.option(
    "--format",
    "format_",
    type=click.Choice(IMAGE_FORMATS),
    default="jpg",
    help="Image encoding of the stored frames.",
)
@click.option("--quality", type=int, default=95, help="jpg/webp quality.")
@click.option(
    "--encoder",
    type=RegistryChoice(IMAGE_ENCODERS),
    default=DEFAULT_ENCODER,
    help="pil: Pillow in --workers CPU processes (any format). torchvision: JPEG encoded where the "
    "images are (nvJPEG on a CUDA GPU, no CPU pool). Part of the dataset's identity: its bytes "
    "differ between encoders.",
)
@click.option(
    "--shards",
    "shard_range",
    default=None,
    callback=_shard_range,
    metavar="START:STOP[:STEP]",
    help="Write only these shards (split work across machines; STEP > 1 writes every STEP-th, "
    "e.g. to sample a large dataset's cost).",
)
@click.option("--batch-size", type=int, default=64, help="Images per generator forward pass.")
@common_options(device=True, precision=True, workers=True, progress=True)
@click.option(
    "--seed",
    type=int,
    default=0,
    help="Seed of the latents: sample i draws its z, class and views from (seed, i).",
)
@click.option(
    "--license",
    default=None,
    help="License of the images for the dataset card: a hub license id (e.g. apache-2.0, "
    "cc-by-nc-4.0), or other with --license-name/--license-link. They follow the generator's "
    "weights, which genrep cannot decide [default: other, linking where the model's weights "
    "state theirs].",
)
@click.option("--license-name", default=None, help="Id of a license not on the hub's list.")
@click.option("--license-link", default=None, help="URL (or repository file) of that license.")
@click.option("--out", default=None, help="Output folder [default: shards/<model>-<view>].")
@click.option(
    "--list",
    is_flag=True,
    is_eager=True,
    expose_value=False,  # an action, as --help, not a setting a --config could hold
    callback=_list_names,
    help="List models and views, then exit.",
)
def main(
    progress: bool,
    shard_range: range | None,
    format_: str,
    **options: Any,
) -> None:
    """Write N anchor/neighbor view pairs of a generator as webdataset shards with a manifest.

    Rerunning the same command resumes an interrupted run and gives byte-identical shards.
    """
    options["format"] = format_
    plan = make_plan(options, log=_log, progress=progress, shard_range=shard_range)
    generate(
        plan,
        batch_size=options["batch_size"],
        workers=options["workers"],
        shard_range=shard_range,
        progress=progress,
        log=_log,
    )


def _transform_list(_ctx: click.Context, _param: click.Parameter, value: Any) -> tuple[str, ...]:
    """`--transforms a,b,c` (or a YAML list) as a tuple of edit names."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = tuple(str(item).strip() for item in items if str(item).strip())
    return tuple(EDITS.canonical(name) for name in names)  # a RegistryError is one line


@click.command(cls=Command, context_settings=CONTEXT)
@config_option
@generator_options
@click.option(
    "--classes",
    default=None,
    help="Classes to draw y from: all, a named subset, K, or ids '3,7,9' (conditional "
    "models; for the embedded model, K makes it class-conditional with K classes).",
)
@click.option(
    "--out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Walk file to write [default: the cache $GENREP_HOME/walks/MODEL-HASH.pt that "
    "genrep-generate --view steer uses when given no --walks].",
)
@click.option(
    "--transforms",
    default=",".join(EDIT_NAMES),
    callback=_transform_list,
    type=click.UNPROCESSED,  # a YAML list reaches the callback as a list
    help=f"Comma list of the edits to learn walks for ({', '.join(EDIT_NAMES)}).",
)
@click.option(
    "--shift-range",
    type=float,
    default=SteerConfig.shift_range,
    help="Largest shift, as a fraction of the image side.",
)
@click.option(
    "--zoom-range",
    type=float,
    default=SteerConfig.zoom_range,
    help="Largest zoom factor R: alpha in [1/R, R], log(alpha) in latent space.",
)
@click.option(
    "--rotate-2d-range",
    type=float,
    default=SteerConfig.rotate_2d_range,
    help="Largest 2D rotation in degrees.",
)
@click.option(
    "--rotate-3d-range",
    type=float,
    default=SteerConfig.rotate_3d_range,
    help="Largest 3D rotation (about the vertical axis) in degrees.",
)
@click.option(
    "--color-range",
    type=float,
    default=SteerConfig.color_range,
    help="Largest offset added to a channel of the [-1, 1] image.",
)
@click.option(
    "--num-samples",
    type=int,
    default=SteerConfig.num_samples,
    help="Training latents in all (steps = num-samples / batch-size).",
)
@click.option(
    "--batch-size", type=int, default=SteerConfig.batch_size, help="Latents per training step."
)
@click.option("--lr", type=float, default=SteerConfig.lr, help="Learning rate.")
@click.option(
    "--lr-schedule",
    type=click.Choice(list(LR_SCHEDULES)),
    default=SteerConfig.lr_schedule,
    help="constant (as GenRep), or cosine annealing to 0 over the run.",
)
@click.option("--optimizer", type=click.Choice(list(OPTIMIZERS)), default=SteerConfig.optimizer)
@click.option(
    "--init-std", type=float, default=SteerConfig.init_std, help="Std of the random initial walks."
)
@click.option(
    "--truncation",
    type=float,
    default=None,
    help="Training latents z ~ N_t(0, 1, t) [default: the model's].",
)
@click.option(
    "--eval-size",
    type=int,
    default=SteerConfig.eval_size,
    help="Latents of the fixed batch the initial and final losses are measured on.",
)
@click.option(
    "--seed", type=int, default=0, help="Seed of the initial walks and the training latents."
)
@common_options(device=True, precision=True, progress=True)
@click.option("--checkpoint-every", type=int, default=500, help="Steps between checkpoints.")
@click.option(
    "--resume/--no-resume",
    default=True,
    help="Continue from the checkpoint OUT.ckpt of an interrupted run.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing walk file.")
def steer_main(
    model: str,
    weights: str | None,
    model_option: dict[str, str],
    device: str,
    out: str | None,
    checkpoint_every: int,
    resume: bool,
    overwrite: bool,
    progress: bool,
    **settings: Any,
) -> None:
    """Learn the steering walks (shift, zoom, 2D/3D rotation, color) of a generator (App. B).

    The walk file feeds `genrep-generate --view steer --walks FILE`.
    """

    torch_device = resolve_device(device)
    config = SteerConfig(
        **settings,
        extra={
            "model": model,
            "weights": weights,
            "model_option": model_option,
            "device": device,
            "checkpoint_every": checkpoint_every,
        },
    )
    generator = build_generator(
        model, weights=weights, classes=settings["classes"], device=torch_device, **model_option
    )
    path = Path(out) if out else cached_walks_path(generator)
    refuse_to_replace(path, overwrite)
    learn_walks(
        generator,
        config,
        path,
        resume=resume,
        checkpoint_every=checkpoint_every,
        progress=progress,
        log=_log,
    )


if __name__ == "__main__":
    main()
