"""`genrep-probe`: measure a frozen encoder with the paper's protocols, and tabulate the reports.

    genrep-probe CKPT DATASET --protocol linear|knn|voc07 [--root DIR] [--out report.json]
    genrep-probe table REPORT.json [REPORT.json ...]

The first form is shorthand for `genrep-probe probe CKPT DATASET ...`: a click group whose default
command is `probe`, so the main form stays one short line and `table` is a plain subcommand.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from genrep.config import to_plain
from genrep.evaluate.datasets import DATASETS, build_dataset, dataset_summary
from genrep.evaluate.encoder import load_encoder, resolve_device
from genrep.evaluate.features import FeatureCache, FrozenFeatures, Preprocessing, default_cache_dir
from genrep.evaluate.protocols import CLASSIFIERS, DEFAULT_COSTS, PROTOCOLS
from genrep.evaluate.report import (
    TABLE_FORMATS,
    build_report,
    config_path_for,
    format_table,
    read_report,
    write_report,
)
from genrep.options import config_option
from genrep.registry import RegistryError


class ProbeGroup(click.Group):
    """A group that runs `probe` when the first argument is not one of its subcommands."""

    default_command = "probe"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=ProbeGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Probe frozen encoder features (linear, kNN, VOC07) and compare reports.

    `genrep-probe CKPT DATASET ...` is short for `genrep-probe probe CKPT DATASET ...`.
    """


class FloatList(click.ParamType):
    """`0.1,1,10` on the command line, or a YAML list of numbers."""

    name = "X,Y,..."

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[float, ...]:
        items = value.split(",") if isinstance(value, str) else value
        try:
            return tuple(float(item) for item in items)
        except (TypeError, ValueError):
            self.fail(f"expected comma-separated numbers, got {value!r}", param, ctx)


def _default_workers() -> int:
    """One image-decoding process per available CPU, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(8, cpus)


def _default_label(checkpoint: Path) -> str:
    """A run folder's name, also for the checkpoint.pt / backbone.pth files inside one."""
    checkpoint = checkpoint.resolve()
    if checkpoint.is_dir():
        return checkpoint.name
    if checkpoint.stem in ("checkpoint", "backbone"):
        return checkpoint.parent.name
    return checkpoint.stem


def _protocol_options(ctx: click.Context, protocol_name: str) -> dict[str, Any]:
    """The chosen protocol's settings from the flags; a flag typed for another protocol is an error."""
    chosen = PROTOCOLS.get(protocol_name).option_names()
    every = {
        name for entry in map(PROTOCOLS.get, PROTOCOLS.names()) for name in entry.option_names()
    }
    for name in sorted(every - set(chosen)):
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE:
            flag = next(param.opts[0] for param in ctx.command.params if param.name == name)
            raise click.UsageError(f"{flag} does not apply to --protocol {protocol_name}")
    return {name: ctx.params[name] for name in chosen}


@config_option
@main.command("probe", context_settings={"show_default": True})
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.argument("dataset", type=click.Choice(DATASETS.names()), metavar="DATASET")
@click.option(
    "--root", type=click.Path(path_type=Path), help="Dataset folder (all datasets but digits)."
)
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS.names()),
    help="How to score the features.  [default: voc07 for the voc07 dataset, else linear]",
)
@click.option(
    "--arch",
    help="torchvision model of a bare state dict.  [default: from the run config, else resnet50]",
)
@click.option(
    "--size", type=click.IntRange(min=16), default=128, help="Encoder input size in pixels."
)
@click.option(
    "--crop-fraction",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.875,
    help="Evaluation images are resized to size/crop-fraction, then center-cropped.",
)
@click.option("--device", help="cpu, cuda or cuda:N.  [default: cuda if available]")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=_default_workers,
    help="Image decoding processes.  [default: CPUs available, at most 8]",
    show_default=False,
)
@click.option(
    "--extract-batch-size",
    type=click.IntRange(min=1),
    default=256,
    help="Images per encoder batch.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Feature cache.  [default: $GENREP_HOME/features, GENREP_HOME=~/.cache/genrep]",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    help="linear: learning rate.  [default: 2.0 for --encoder-data generated, 0.3 for real]",
)
@click.option(
    "--encoder-data",
    type=click.Choice(["generated", "real"]),
    default="generated",
    help="linear: what the encoder was trained on; picks the paper's default --lr.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    help="linear: epochs.  [default: 60, 100 for stanford-cars]",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=256, help="linear: SGD batch size."
)
@click.option("--momentum", type=float, default=0.9, help="linear: SGD momentum.")
@click.option(
    "--weight-decay", type=click.FloatRange(min=0), default=0.0, help="linear: weight decay."
)
@click.option(
    "--cached/--augment",
    default=False,
    help="linear: train on cached center-crop features (fast) instead of random-resized-crop + flip.",
)
@click.option("--k", type=click.IntRange(min=1), default=200, help="knn: neighbours.")
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=0.07,
    help="knn: vote temperature.",
)
@click.option(
    "--classifier",
    type=click.Choice(CLASSIFIERS),
    default="svm",
    help="voc07: per-class classifier.",
)
@click.option(
    "--costs",
    type=FloatList(),
    default=",".join(map(str, DEFAULT_COSTS)),
    help="voc07: regularization values C tried by cross-validation.",
)
@click.option(
    "--folds", type=click.IntRange(min=2), default=3, help="voc07: cross-validation folds."
)
@click.option(
    "--jobs", type=click.IntRange(min=1), default=1, help="voc07: classes fitted in parallel."
)
@click.option(
    "--seed", type=int, default=0, help="linear/voc07: seed of initialization, shuffling and folds."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Report JSON to write; its resolved config goes to <stem>.config.yaml next to it.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out report.")
@click.option("--name", help="Row label in tables.  [default: the run folder's name]")
@click.pass_context
def probe(ctx: click.Context, **options: Any) -> None:
    """Extract frozen features of CHECKPOINT on DATASET and score them with --protocol.

    CHECKPOINT is a genrep-train run folder, its checkpoint.pt, or a torchvision ResNet state dict.
    DATASET is one of: digits (built in), imagefolder, voc07, stanford-cars (with --root).
    """
    try:
        report = run_probe(ctx, options)
    except (ValueError, RegistryError) as err:  # genrep's input errors carry a one-line message
        raise click.UsageError(str(err)) from None
    except OSError as err:  # an unreadable image or an unwritable cache folder
        # A DataLoader worker's error carries the worker's traceback; its last line is the error.
        raise click.ClickException(str(err).strip().splitlines()[-1]) from None
    click.echo(format_table([report], all_metrics=True))
    if options["out"]:
        config_path = write_report(options["out"], report)
        click.echo(f"report: {options['out']} (config: {config_path})")


def _log(message: str) -> None:
    click.echo(message, err=True)


def run_probe(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """Resolve the flags into encoder, dataset and protocol, run it and return the report."""
    started = time.perf_counter()
    out = options["out"]
    if out and not options["overwrite"] and (out.exists() or config_path_for(out).exists()):
        raise click.UsageError(
            f"{out} (or its .config.yaml) already exists; pass --overwrite or choose another --out"
        )
    dataset_name = DATASETS.canonical(options["dataset"])
    protocol_name = PROTOCOLS.canonical(
        options["protocol"]
        or ("voc07" if DATASETS.get(dataset_name).task == "multilabel" else "linear")
    )
    protocol = PROTOCOLS.get(protocol_name)(**_protocol_options(ctx, protocol_name))
    device = resolve_device(options["device"])
    dataset = build_dataset(dataset_name, options["root"])
    protocol.check_dataset(dataset)
    encoder = load_encoder(options["checkpoint"], options["arch"])
    _log(
        f"encoder: {encoder.arch} from {encoder.path} ({encoder.kind}, sha256 {encoder.sha256[:12]}); "
        f"{dataset_summary(dataset)}"
    )
    cache_dir = options["cache_dir"] or default_cache_dir()
    preprocessing = Preprocessing(options["size"], options["crop_fraction"])
    inputs = FrozenFeatures(
        encoder,
        dataset,
        preprocessing,
        device,
        FeatureCache(cache_dir),
        batch_size=options["extract_batch_size"],
        workers=options["workers"],
        log=_log,
    )
    metrics, details = protocol.run(inputs)
    config = {
        **options,
        "checkpoint": encoder.path,
        "dataset": dataset_name,
        "root": dataset.root,
        "protocol": protocol_name,
        "device": str(device),
        "cache_dir": cache_dir.resolve(),
        "out": out.resolve() if out else None,
    }
    return build_report(
        label=options["name"] or _default_label(options["checkpoint"]),
        protocol=protocol_name,
        primary_metric=protocol.primary_metric,
        metrics=metrics,
        details=details,
        settings=protocol.settings(dataset),
        checkpoint=encoder.identity(),
        dataset=dataset.identity(),
        preprocessing={
            "size": preprocessing.size,
            "crop_fraction": preprocessing.crop_fraction,
            "eval_transform": preprocessing.eval_key(),
        },
        config=to_plain(config),
        seconds=time.perf_counter() - started,
    )


@main.command("table")
@click.argument(
    "reports", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--format", "fmt", type=click.Choice(TABLE_FORMATS), default="text", show_default=True
)
@click.option(
    "--all-metrics",
    is_flag=True,
    help="Show every metric (top-5, area mAP), not only each protocol's main one.",
)
def table(reports: Sequence[Path], fmt: str, all_metrics: bool) -> None:
    """Print REPORTS side by side: one row per encoder, one column per dataset/protocol/metric."""
    try:
        loaded = [read_report(path) for path in reports]
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    click.echo(format_table(loaded, fmt=fmt, all_metrics=all_metrics))
