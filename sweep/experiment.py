"""The experiment file: a base configuration of the three stages and the axes to vary.

    base:                          # flags of each stage, as in its --config file
      generate: {model: embedded, n: 2000}
      train: {arch: resnet18, steps: 100}
      probe: {dataset: digits, protocol: knn}
    axes:
      generate.sigma: [0.1, 0.2, 0.5]        # one flag: a value per cell
      method:                                # several flags at once: a label per value
        gaussian: {generate.view: gaussian}
        Tx only: {generate.view: none, train.tx: simclr}
    seeds: [0, 1, 2]               # shorthand: an axis `seed` setting train.seed and probe.seed
    average_over: [seed]           # axes averaged in tables and plots [default: the seed axes]
    table: {rows: [method], columns: [generate.sigma]}
    plots: [{x: generate.sigma, series: [method], log_x: true}]
    reference:                     # cells outside the grid, a label per setting of flags
      Tx only: {generate.view: none}

A reference is run for each value of the averaged axes and the table's column axes (its seed
spread), over the base alone: a row of the table and a horizontal line with its spread in each
plot, the line the grid is read against (Tx only against Tz + Tx at every sigma).

Every key names a flag of the stage's own command, checked against that command's click
parameters when the file is read, so a typo fails before anything runs. A named axis value may set
`generate: false`: that cell trains without a generated dataset (e.g. with `train.real`).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from genrep.errors import UsageError

#: stage -> (module, attribute) of its click command
STAGE_COMMANDS = {
    "generate": ("genrep.generate.cli", "main"),
    "train": ("genrep.train.cli", "main"),
    "probe": ("genrep.evaluate.cli", "probe"),
}
STAGES = tuple(STAGE_COMMANDS)
#: parameters the sweep sets itself: where each stage reads and writes
MANAGED = {
    "generate": {"out", "list_names", "shard_range"},
    "train": {"shards", "out"},
    "probe": {"checkpoint", "out", "overwrite", "name"},
}
TOP_LEVEL_KEYS = (
    "description",
    "base",
    "axes",
    "seeds",
    "average_over",
    "table",
    "plots",
    "reference",
)
SEED_AXIS = "seed"


def stage_command(stage: str) -> click.Command:
    module, attribute = STAGE_COMMANDS[stage]
    return getattr(importlib.import_module(module), attribute)


def stage_params(stage: str) -> dict[str, click.Parameter]:
    """The parameters an experiment may set for `stage`, by every spelling (`batch-size`,
    `batch_size`), the sweep's own excepted."""
    params = {}
    for param in stage_command(stage).params:
        if param.name is None or param.name in MANAGED[stage]:
            continue
        for name in (param.name, *(opt.lstrip("-") for opt in getattr(param, "opts", ()))):
            params[name.replace("-", "_")] = param
    return params


def _flag_names(stage: str) -> str:
    names = {p.opts[0].lstrip("-") if p.opts else p.name for p in stage_params(stage).values()}
    return ", ".join(sorted(names))


@dataclass(frozen=True)
class Axis:
    """One dimension of the grid: a label per value, and per value the flags it sets by stage
    (`None` for generate: the cell has no generated dataset)."""

    name: str
    labels: tuple[str, ...]
    values: tuple[Any, ...]
    settings: tuple[dict[str, dict[str, Any] | None], ...]

    @property
    def numeric(self) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)


@dataclass(frozen=True)
class Plot:
    x: str
    series: tuple[str, ...] = ()
    log_x: bool | None = None


@dataclass(frozen=True)
class Experiment:
    path: Path
    description: str
    base: dict[str, dict[str, Any]]
    axes: tuple[Axis, ...]
    average_over: tuple[str, ...]
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    plots: tuple[Plot, ...]
    #: the reference cells' settings, one per label (a named axis outside the grid)
    reference: Axis | None = None

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def reference_axes(self) -> tuple[Axis, ...]:
        """The axes a reference is crossed with: the averaged ones and the table's columns."""
        return tuple(a for a in self.axes if a.name in self.average_over or a.name in self.columns)

    def axis(self, name: str) -> Axis:
        return next(axis for axis in self.axes if axis.name == name)

    def to_plain(self) -> dict[str, Any]:
        """The experiment as resolved (defaults filled in), saved in the sweep folder."""
        reference = self.reference
        return {
            "description": self.description,
            "base": self.base,
            "axes": {
                axis.name: dict(zip(axis.labels, axis.settings, strict=True)) for axis in self.axes
            },
            "average_over": list(self.average_over),
            "table": {"rows": list(self.rows), "columns": list(self.columns)},
            "plots": [asdict(plot) for plot in self.plots],
            **(
                {"reference": dict(zip(reference.labels, reference.settings, strict=True))}
                if reference
                else {}
            ),
        }


class ExperimentReader:
    """Reads one experiment file; every problem is a UsageError naming the file and the key."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def fail(self, problem: str) -> UsageError:
        return UsageError(f"{self.path}: {problem}")

    def read(self) -> Experiment:
        try:
            data = yaml.safe_load(self.path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise self.fail(f"cannot read it ({err})") from None
        if not isinstance(data, dict):
            raise self.fail("must be a YAML mapping with `base` and `axes`")
        unknown = sorted(set(map(str, data)) - set(TOP_LEVEL_KEYS))
        if unknown:
            raise self.fail(f"unknown key {unknown[0]!r}; valid keys: {', '.join(TOP_LEVEL_KEYS)}")
        base = self._base(data.get("base") or {})
        axes = self._axes(data.get("axes") or {}, data.get("seeds"))
        names = [axis.name for axis in axes]
        default_average = [n for n in names if n == SEED_AXIS or n.endswith(".seed")]
        average = self._axis_list(data.get("average_over", default_average), "average_over", names)
        table = self._mapping(data.get("table") or {}, "table", ("rows", "columns"))
        columns = self._axis_list(table.get("columns", []), "table.columns", names)
        free = [n for n in names if n not in average and n not in columns]
        rows = self._axis_list(table.get("rows", free), "table.rows", names)
        left = [n for n in free if n not in rows]
        if left:
            raise self.fail(
                f"axis {left[0]!r} is in neither table.rows, table.columns nor average_over"
            )
        plots = self._plots(data.get("plots"), axes, average)
        probe_datasets = [(s.get("probe") or {}).get("dataset") for a in axes for s in a.settings]
        if "dataset" not in base["probe"] and not any(probe_datasets):
            raise self.fail("set probe.dataset in base (e.g. digits) or on an axis")
        reference = None
        if data.get("reference"):
            reference = self._named_axis("reference", data["reference"])
            crossed = [a for a in axes if a.name in average or a.name in columns]
            self._check_disjoint([*crossed, reference])
        return Experiment(
            self.path,
            str(data.get("description") or ""),
            base,
            tuple(axes),
            tuple(average),
            tuple(rows),
            tuple(columns),
            tuple(plots),
            reference,
        )

    def _mapping(self, value: Any, where: str, keys: tuple[str, ...] | None = None) -> dict:
        if not isinstance(value, dict):
            raise self.fail(f"{where} must be a mapping")
        if keys is not None:
            unknown = sorted(set(map(str, value)) - set(keys))
            if unknown:
                raise self.fail(
                    f"{where} has unknown key {unknown[0]!r}; valid keys: {', '.join(keys)}"
                )
        return value

    def _base(self, value: Any) -> dict[str, dict[str, Any]]:
        base = self._mapping(value, "base", STAGES)
        return {
            stage: self._stage_settings(stage, self._mapping(base.get(stage) or {}, stage), stage)
            for stage in STAGES
        }

    def _stage_settings(self, stage: str, settings: dict, where: str) -> dict[str, Any]:
        """`settings` keyed by parameter name, each value checked by the flag's own type."""
        params = stage_params(stage)
        checked = {}
        for key, value in settings.items():
            param = params.get(str(key).replace("-", "_"))
            if param is None:
                raise self.fail(
                    f"{where}: {stage} has no flag {key!r}; valid flags: {_flag_names(stage)}"
                )
            self._check_value(stage, param, key, value)
            checked[param.name] = value
        return checked

    def _check_value(self, stage: str, param: click.Parameter, key: Any, value: Any) -> None:
        if value is None or isinstance(param.type, click.Path):
            return  # no value (the flag's default), or a path the stage checks where it runs
        if getattr(param, "multiple", False):
            if not isinstance(value, (dict, list)):
                raise self.fail(f"{stage}.{key} takes a mapping of KEY: VALUE")
            return
        ctx = click.Context(stage_command(stage))
        try:
            param.type.convert(value, param, ctx)
        except click.BadParameter as err:
            raise self.fail(f"{stage}.{key}: {err.message}") from None

    def _dotted(self, key: str, value: Any, where: str) -> tuple[str, str, Any]:
        stage, dot, flag = key.partition(".")
        if stage not in STAGES:
            raise self.fail(f"{where}: {key!r} names no stage; start it with {', '.join(STAGES)}")
        if not dot:
            if stage == "generate" and value in (False, None):
                return stage, "", None
            raise self.fail(f"{where}: {key!r} needs a flag, as in {stage}.FLAG")
        name = next(iter(self._stage_settings(stage, {flag: value}, where)))
        return stage, name, value

    def _settings(self, pairs: dict, where: str) -> dict[str, dict[str, Any] | None]:
        settings: dict[str, dict[str, Any] | None] = {stage: {} for stage in STAGES}
        for key, value in pairs.items():
            stage, name, value = self._dotted(str(key), value, where)
            flags = settings[stage]
            if not name:
                settings["generate"] = None
            elif flags is None:
                raise self.fail(f"{where}: generate: false takes no generate flags")
            else:
                flags[name] = value
        return settings

    def _axes(self, value: Any, seeds: Any) -> list[Axis]:
        axes = []
        for name, spec in self._mapping(value, "axes").items():
            name = str(name)
            where = f"axes.{name}"
            if "." in name:
                if not isinstance(spec, list) or not spec:
                    raise self.fail(f"{where} must be a non-empty list of values")
                settings = tuple(self._settings({name: v}, where) for v in spec)
                labels = tuple(v if isinstance(v, str) else json.dumps(v) for v in spec)
                axes.append(Axis(name, labels, tuple(spec), settings))
            else:
                axes.append(self._named_axis(name, spec))
        if seeds is not None:
            if (
                not isinstance(seeds, list)
                or not all(isinstance(s, int) for s in seeds)
                or not seeds
            ):
                raise self.fail("seeds must be a list of integers")
            if any(axis.name == SEED_AXIS for axis in axes):
                raise self.fail(f"seeds and an axis named {SEED_AXIS!r} cannot both be given")
            settings = tuple(
                {"generate": {}, "train": {"seed": s}, "probe": {"seed": s}} for s in seeds
            )
            axes.append(Axis(SEED_AXIS, tuple(map(str, seeds)), tuple(seeds), settings))
        if len({axis.name for axis in axes}) != len(axes):
            raise self.fail("two axes have one name")
        self._check_disjoint(axes)
        return axes

    def _named_axis(self, name: str, spec: Any) -> Axis:
        """`{label: {stage.flag: value, ...}, ...}` (an axis of named values, or the reference)."""
        where = name if name == "reference" else f"axes.{name}"
        spec = self._mapping(spec, where)
        if not spec:
            raise self.fail(f"{where} must map labels to flags")
        settings = tuple(
            self._settings(self._mapping(v, f"{where}.{k}"), f"{where}.{k}")
            for k, v in spec.items()
        )
        labels = tuple(map(str, spec))
        return Axis(name, labels, labels, settings)

    def _check_disjoint(self, axes: list[Axis]) -> None:
        """Two axes that set one flag would make a cell's value depend on their order."""
        owner: dict[str, str] = {}
        for axis in axes:
            flags = {
                f"{stage}.{name}" if name else stage
                for settings in axis.settings
                for stage, flags in settings.items()
                for name in (flags if flags is not None else [""])
            }
            for flag in sorted(flags):
                if flag in owner:
                    raise self.fail(f"axes {owner[flag]!r} and {axis.name!r} both set {flag}")
                owner[flag] = axis.name

    def _axis_list(self, value: Any, where: str, names: list[str]) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise self.fail(f"{where} must be a list of axis names")
        for item in items:
            if item not in names:
                raise self.fail(f"{where}: no axis {item!r}; axes: {', '.join(names)}")
        return [str(item) for item in items]

    def _plots(self, value: Any, axes: list[Axis], average: list[str]) -> list[Plot]:
        names = [axis.name for axis in axes]
        if value is None:  # one plot per numeric axis, against the other axes as series
            return [
                Plot(a.name, tuple(n for n in names if n not in average and n != a.name))
                for a in axes
                if a.numeric and a.name not in average
            ]
        if not isinstance(value, list):
            raise self.fail("plots must be a list of {x: AXIS, series: [AXIS, ...], log_x: BOOL}")
        plots = []
        for i, spec in enumerate(value):
            spec = self._mapping(spec, f"plots[{i}]", ("x", "series", "log_x"))
            if "x" not in spec:
                raise self.fail(f"plots[{i}] needs x: AXIS")
            (x,) = self._axis_list([spec["x"]], f"plots[{i}].x", names)
            series = self._axis_list(spec.get("series", []), f"plots[{i}].series", names)
            log_x = spec.get("log_x")
            if log_x is not None and not isinstance(log_x, bool):
                raise self.fail(f"plots[{i}].log_x must be true or false")
            plots.append(Plot(x, tuple(series), log_x))
        return plots


def read_experiment(path: str | os.PathLike) -> Experiment:
    """The experiment file at `path`, checked against the stage commands' flags."""
    return ExperimentReader(path).read()
