"""`genrep-probe`: measure a frozen encoder with the paper's protocols, and tabulate the reports.

    genrep-probe CKPT DATASET --protocol linear|knn|voc07 [--root DIR] [--out report.json]
    genrep-probe table REPORT.json [REPORT.json ...]

The first form is shorthand for `genrep-probe probe CKPT DATASET ...`: a click group whose default
command is `probe`, so the main form stays one short line and `table` is a plain subcommand.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from genrep.config import to_plain
from genrep.errors import Group, OutputError, UsageError
from genrep.evaluate.baseline import BASELINES, BaselineStore, lift, measure_baseline
from genrep.evaluate.datasets import DATASETS
from genrep.evaluate.features import FeatureCache, FrozenFeatures, Preprocessing
from genrep.evaluate.protocols import PROTOCOLS
from genrep.evaluate.protocols.linear import LinearProtocol
from genrep.evaluate.protocols.voc07 import CLASSIFIERS
from genrep.evaluate.provenance import encoder_data, provenance_note, trained_on
from genrep.evaluate.report import (
    TABLE_FORMATS,
    build_report,
    config_path_for,
    format_table,
    read_report,
    summary_line,
    write_report,
)
from genrep.options import (
    RegistryChoice,
    common_options,
    config_option,
    resolve_device,
    resolve_precision,
)
from genrep.paths import baselines_dir, features_dir
from genrep.runs import DEFAULT_ARCH, load_backbone


class ProbeGroup(Group):
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


def _default(protocol: str, setting: str) -> Any:
    """A protocol flag's default is the protocol's own, so that it is set in one place."""
    return PROTOCOLS.options(protocol)[setting].default


def _default_label(checkpoint: Path) -> str:
    """A run folder's name, also for the checkpoint.pt / backbone.pth files inside one."""
    checkpoint = checkpoint.resolve()
    if checkpoint.is_dir():
        return checkpoint.name
    if checkpoint.stem in ("checkpoint", "backbone"):
        return checkpoint.parent.name
    return checkpoint.stem


def _protocol_settings(ctx: click.Context, protocol: str) -> dict[str, Any]:
    """The chosen protocol's settings from the flags; a flag typed for another protocol is an error."""
    takes = PROTOCOLS.options(protocol)
    every = {name for entry in PROTOCOLS.canonical_names() for name in PROTOCOLS.options(entry)}
    # --seed also seeds the random-init baseline, so it applies to every protocol.
    for name in sorted(every - set(takes) - {"seed"}):
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            flag = next(param.opts[0] for param in ctx.command.params if param.name == name)
            raise UsageError(f"{flag} does not apply to --protocol {protocol}")
    return {name: ctx.params[name] for name in takes if name in ctx.params}


def _probe_help() -> str:
    """The probe command's help, which lists the registered datasets."""
    builtin = [name for name in DATASETS.canonical_names() if not DATASETS.get(name).needs_root]
    on_disk = [name for name in DATASETS.canonical_names() if DATASETS.get(name).needs_root]
    return (
        "Extract frozen features of CHECKPOINT on DATASET and score them with --protocol.\n\n"
        "CHECKPOINT is a genrep-train run folder, its checkpoint.pt or backbone.pth, or a "
        f"torchvision ResNet state dict. DATASET is one of: {', '.join(builtin)} (built in), {', '.join(on_disk)} "
        "(with --root DIR)."
    )


@main.command("probe", help=_probe_help(), context_settings={"show_default": True})
@config_option
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.argument("dataset", type=RegistryChoice(DATASETS), metavar="DATASET")
@click.option(
    "--root", type=click.Path(path_type=Path), help="Dataset folder (datasets not built in)."
)
@click.option(
    "--protocol",
    type=RegistryChoice(PROTOCOLS),
    help="How to score the features.  [default: voc07 for a multi-label dataset, else linear]",
)
@click.option(
    "--arch",
    help="torchvision model of a bare state dict.  [default: from the config.yaml of the run "
    f"folder holding it, else {DEFAULT_ARCH}]",
)
@click.option(
    "--size",
    type=click.IntRange(min=16),
    help="Encoder input size in pixels.  [default: voc07: 224 (the released transfer code); "
    "else the encoder's training input size from its run config, 112 for a bare state dict]",
)
@click.option(
    "--crop-fraction",
    type=click.FloatRange(0, 1, min_open=True),
    help="Evaluation images are resized to size/crop-fraction, then center-cropped.  "
    "[default: 0.875; voc07: 1]",
)
@click.option(
    "--crop-scale",
    type=FloatList(),
    help="linear (--augment): area range MIN,MAX of the random-resized crop.  [default: that of the "
    "encoder's Tx recipe (genrep: 0.2,1; simclr: 0.08,1), 0.2,1 for a bare state dict]",
)
@common_options(device=True, precision=True, workers=True)
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
    type=click.Choice(list(LinearProtocol.LR_BY_ENCODER_DATA)),
    help="linear: what the encoder was trained on; picks the paper's default --lr.  [default: "
    "real for a run trained on --real images only, else generated]",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    help="linear: epochs.  [default: 60, 100 for stanford-cars]",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=_default("linear", "batch_size"),
    help="linear: SGD batch size.",
)
@click.option(
    "--momentum", type=float, default=_default("linear", "momentum"), help="linear: SGD momentum."
)
@click.option(
    "--weight-decay",
    type=click.FloatRange(min=0),
    default=_default("linear", "weight_decay"),
    help="linear: weight decay.",
)
@click.option(
    "--cached/--augment",
    default=_default("linear", "cached"),
    help="linear: train on cached center-crop features (fast) instead of random-resized-crop + flip.",
)
@click.option(
    "--k", type=click.IntRange(min=1), default=_default("knn", "k"), help="knn: neighbours."
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=_default("knn", "temperature"),
    help="knn: vote temperature.",
)
@click.option(
    "--classifier",
    type=click.Choice(CLASSIFIERS),
    default=_default("voc07", "classifier"),
    help="voc07: per-class classifier.",
)
@click.option(
    "--costs",
    type=FloatList(),
    default=",".join(map(str, _default("voc07", "costs"))),
    help="voc07: regularization values C tried by cross-validation.",
)
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=_default("voc07", "folds"),
    help="voc07: cross-validation folds.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=_default("voc07", "jobs"),
    help="voc07: classes fitted in parallel.",
)
@click.option(
    "--seed",
    type=int,
    default=_default("linear", "seed"),
    help="Seed of the random-init baseline's weights; linear/voc07: also of initialization, "
    "shuffling and folds.",
)
@click.option(
    "--baseline",
    type=click.Choice(BASELINES),
    default="random",
    help="random: also probe the same architecture randomly initialised (cached in "
    "$GENREP_HOME/baselines) and report the lift over it; none: skip it.",
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
    """Probe CHECKPOINT on DATASET and print (and with --out, save) the report."""
    report = run_probe(ctx, options)
    click.echo(summary_line(report))
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
        raise OutputError(
            f"{out} (or its .config.yaml) already exists; pass --overwrite or choose another --out"
        )
    dataset_name = options["dataset"]
    protocol_name = options["protocol"] or (
        "voc07" if DATASETS.get(dataset_name).task == "multilabel" else "linear"
    )
    settings = _protocol_settings(ctx, protocol_name)
    device = resolve_device(options["device"])
    precision = resolve_precision(options["precision"], device)
    dataset = DATASETS.build(dataset_name, root=options["root"])
    encoder = load_backbone(options["checkpoint"], options["arch"])
    if "encoder_data" in settings and settings["encoder_data"] is None:
        settings["encoder_data"] = encoder_data(encoder)
    protocol = PROTOCOLS.build(protocol_name, **settings)
    protocol.check_dataset(dataset)
    _log(
        f"encoder: {encoder.arch} from {encoder.path} ({encoder.kind}, sha256 {encoder.sha256[:12]}); "
        f"{dataset.summary()}"
    )
    cache_dir = options["cache_dir"] or features_dir()
    preprocessing = Preprocessing.resolve(
        encoder.training_config,
        protocol.input_size,
        protocol.crop_fraction,
        options["size"],
        options["crop_fraction"],
        protocol.crop_scale,
    )
    _log(preprocessing.summary(crops=protocol.trains_on_crops))
    inputs = FrozenFeatures(
        encoder,
        dataset,
        preprocessing,
        device,
        FeatureCache(cache_dir),
        precision=precision,
        batch_size=options["extract_batch_size"],
        workers=options["workers"],
        log=_log,
    )
    metrics, details = protocol.run(inputs)
    baseline = None
    if options["baseline"] == "random":
        baseline = measure_baseline(
            inputs, protocol, options["seed"], BaselineStore(baselines_dir())
        )
    provenance = trained_on(encoder)
    if note := provenance_note(provenance):
        _log(note)
    config = {
        **options,
        "checkpoint": encoder.path,
        "dataset": dataset_name,
        "root": dataset.root,
        "protocol": protocol_name,
        "device": str(device),
        "precision": precision,
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
        preprocessing=preprocessing.describe(),
        config=to_plain(config),
        seconds=time.perf_counter() - started,
        baseline=baseline,
        lift=lift(metrics, baseline),
        trained_on=provenance,
    )


@main.command("table", context_settings={"show_default": True})
@config_option
@click.argument(
    "reports", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(TABLE_FORMATS),
    default="text",
    help="text/markdown: a grid with each metric's lift over the random-init baseline next to "
    "it; csv/json: one record per encoder and metric, with baseline, lift and what the encoder "
    "was trained on.",
)
@click.option(
    "--all-metrics",
    is_flag=True,
    help="Show every metric (top-5, area mAP), not only each protocol's main one.",
)
def table(reports: Sequence[Path], fmt: str, all_metrics: bool) -> None:
    """Print REPORTS side by side: one row per encoder and per random-init baseline, one column
    per dataset/protocol/metric."""
    loaded = [read_report(path) for path in reports]
    click.echo(format_table(loaded, fmt=fmt, all_metrics=all_metrics))
