"""`genrep-generate`: sample anchor/neighbor views from a generator into webdataset shards."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from genrep.config import config_option, parse_key_values
from genrep.generate.pipeline import PRECISIONS, RESIZE_MODES, GenerateError, generate, make_plan
from genrep.registry import RegistryError
from genrep.shards import IMAGE_FORMATS


def _shard_range(_ctx: click.Context, _param: click.Parameter, value: str | None):
    if value is None:
        return None
    start, sep, stop = str(value).partition(":")
    try:
        bounds = (int(start or 0), int(stop) if stop else 2**62)
    except ValueError:
        bounds = None
    if not sep or bounds is None or not 0 <= bounds[0] < bounds[1]:
        raise click.BadParameter(f"{value!r} is not START:STOP (shard numbers, STOP exclusive)")
    return bounds


def generator_options(command: Callable) -> Callable:
    """The flags that pick and build a generator, shared by every command that runs one."""
    for decorate in reversed(
        [
            click.option(
                "--model",
                default="embedded",
                help="Generator registry name (see genrep-generate --list).",
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


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@config_option
@generator_options
@click.option(
    "--view", default="gaussian", help="Latent view Tz: none, gaussian, independent, steer."
)
@click.option("--walks", default=None, help="Walk file of genrep-steer (view steer).")
@click.option("--n", type=int, default=None, help="Number of anchors.")
@click.option("--neighbors", type=int, default=1, help="Neighbor views stored per anchor.")
@click.option(
    "--sigma",
    type=float,
    default=None,
    help="Std of the gaussian view [default: 0.2 unconditional, 1.0 conditional].",
)
@click.option(
    "--truncation",
    type=float,
    default=None,
    help="Anchor latent z ~ N_t(0, 1, t) [default: the model's].",
)
@click.option(
    "--classes",
    default=None,
    help="Classes to sample: all, a named subset (imagenet100), K, or ids '3,7,9'. "
    "For the embedded model, K makes it class-conditional with K classes.",
)
@click.option("--per-class", type=int, default=None, help="Anchors per class (sets --n).")
@click.option("--size", type=int, default=128, help="Stored image side in pixels.")
@click.option(
    "--resize",
    type=click.Choice(RESIZE_MODES),
    default="center-crop",
    help="center-crop: central square of the native output (App. A); resize: short side first.",
)
@click.option("--format", "format_", type=click.Choice(IMAGE_FORMATS), default="jpg")
@click.option("--quality", type=int, default=95, help="jpg/webp quality.")
@click.option("--shard-size", type=int, default=1000, help="Anchors per shard.")
@click.option(
    "--shards",
    "shard_range",
    default=None,
    callback=_shard_range,
    metavar="START:STOP",
    help="Write only these shards (split work across machines).",
)
@click.option("--batch-size", type=int, default=64, help="Images per generator forward pass.")
@click.option("--device", default="cpu", help="torch device, e.g. cuda or cuda:1.")
@click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    default="fp32",
    help="Autocast dtype of the generator.",
)
@click.option("--seed", type=int, default=0)
@click.option(
    "--workers",
    type=int,
    default=min(4, max(0, (os.cpu_count() or 1) - 2)),
    help="Image encoder processes (0: encode in the main process); the default leaves "
    "two cores to the generator process.",
)
@click.option("--out", default=None, help="Output folder [default: shards/<model>-<view>].")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option("--list", "list_names", is_flag=True, help="List models and views, then exit.")
def main(
    list_names: bool,
    progress: bool,
    shard_range: tuple[int, int] | None,
    format_: str,
    **options: Any,
) -> None:
    """Write N anchor/neighbor view pairs of a generator as webdataset shards with a manifest.

    Rerunning the same command resumes an interrupted run and gives byte-identical shards.
    """
    from genrep.generate.models import GENERATORS
    from genrep.generate.views import VIEWS

    if list_names:
        click.echo("models: " + ", ".join(GENERATORS.names()))
        click.echo("views: " + ", ".join(VIEWS.names()))
        return
    options["format"] = format_
    if options.get("device", "").startswith("cuda") and "LOCAL_RANK" in os.environ:
        options["device"] = f"cuda:{os.environ['LOCAL_RANK']}"  # one GPU per torchrun rank
    run_options = {key: options[key] for key in ("batch_size", "workers")}
    try:
        plan = make_plan(options)  # builders and views raise ValueError for bad options
    except (RegistryError, ValueError) as err:
        raise click.UsageError(str(err)) from None
    try:
        generate(
            plan,
            shard_range=shard_range,
            progress=progress,
            log=lambda message: click.echo(message, err=True),
            **run_options,
        )
    except GenerateError as err:
        raise click.UsageError(str(err)) from None


if __name__ == "__main__":
    main()
