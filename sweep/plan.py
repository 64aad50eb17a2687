"""From an experiment to work: the cells of its grid and the stage jobs they need.

A job is one stage command with its output (a dataset folder, a run folder, a report). Its folder
is named by a hash of everything that decides its result (its flags and its input's hash), so
cells that agree on their generate flags share one dataset, cells that also agree on their train
flags share one encoder, and a sweep extended with new values reuses every folder it already has.

    SWEEP/data/<labels>-<hash>/          genrep generate --out
    SWEEP/runs/<labels>-<hash>/          genrep train DATASET --out
    SWEEP/reports/<labels>-<hash>.json   genrep probe RUN DATASET --out
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from genrep.evaluate.report import read_report
from genrep.manifest import read_manifest
from genrep.sweep.experiment import STAGES, Axis, Experiment, stage_params

DATA, RUNS, REPORTS, LOGS = "data", "runs", "reports", "logs"
#: the longest readable part of a folder name
SLUG_LENGTH = 60


@dataclass
class Job:
    """One stage command: `argv` follows the launcher (`genrep` or `python -m genrep.cli`)."""

    stage: str
    id: str
    out: Path
    argv: list[str]
    after: list[str]
    cells: list[int] = field(default_factory=list)

    def finished(self) -> bool:
        """Whether its output is complete (a dataset's manifest says so; a report exists). A run is
        never taken as finished here: its cells' reports say whether it is still needed."""
        if self.stage == "generate":
            manifest = read_manifest(self.out) if self.out.is_dir() else None
            return bool(manifest and manifest.get("complete"))
        if self.stage == "probe":
            return report_exists(self.out)
        return False


@dataclass
class Cell:
    index: int
    labels: dict[str, str]
    values: dict[str, Any]
    settings: dict[str, dict[str, Any] | None]
    dataset: Job | None
    run: Job
    report: Job
    #: the reference's label for a reference cell (whose labels are only its crossed axes')
    reference: str | None = None

    @property
    def name(self) -> str:
        """`sigma=0.1 seed=0`: the cell's labels, each flag axis by its flag's name; a reference
        cell's starts with its label (`Tx only seed=0`)."""
        parts = [f"{short_name(a)}={label}" for a, label in self.labels.items()]
        return " ".join([self.reference, *parts] if self.reference else parts) or "base"


@dataclass
class Plan:
    folder: Path
    cells: list[Cell]
    jobs: dict[str, Job]

    def by_stage(self, stage: str) -> list[Job]:
        return [job for job in self.jobs.values() if job.stage == stage]


def short_name(axis: str) -> str:
    """A flag axis by its flag's name (`generate.sigma` -> `sigma`), a named axis as it is."""
    return axis.rpartition(".")[2]


def report_exists(path: Path) -> bool:
    """A cell is finished when its report exists (written atomically, the probe's last step)."""
    if not path.is_file():
        return False
    read_report(path)  # a file that is not a report is an error, not a silent rerun
    return True


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


#: a cell's choice: an axis and the index of its value, for each axis that sets the cell's flags
Picks = list[tuple[Axis, int]]


def _overrides(picks: Picks) -> list[tuple[str, str, Any]]:
    """(stage, flag, value) of every flag the cell's axis values set ("" for `generate: false`)."""
    found = []
    for axis, index in picks:
        for stage, flags in axis.settings[index].items():
            items = [("", False)] if flags is None else flags.items()
            found += [(stage, flag, value) for flag, value in items]
    return found


def _slug(overrides: list[tuple[str, str, Any]], stages: set[str]) -> str:
    """A readable name for a job: the flags the axes set for `stages`, e.g. `sigma0.2_seed1`."""
    parts = [
        f"{flag}{Path(value).name if isinstance(value, str) else flag_text(value)}"
        if flag
        else "no-data"
        for stage, flag, value in overrides
        if stage in stages
    ]
    text = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts)).strip("-")
    return text[:SLUG_LENGTH].rstrip("-") or "base"


def _option_args(param: click.Option, value: Any) -> list[str]:
    """A setting as the flags a user would type."""
    flag = param.opts[0]
    if param.is_flag and param.secondary_opts:
        return [flag if value else param.secondary_opts[0]]
    if param.is_flag:
        return [flag] if value else []
    if param.multiple:
        items = value.items() if isinstance(value, dict) else [(None, v) for v in value]
        return [
            arg
            for key, item in items
            for arg in (flag, flag_text(item) if key is None else f"{key}={flag_text(item)}")
        ]
    if isinstance(value, (list, tuple)):
        return [flag, ",".join(map(flag_text, value))]
    return [flag, flag_text(value)]


def flag_text(value: Any) -> str:
    """A value as YAML reads it back (flags of KEY=VALUE options are YAML-typed)."""
    return value if isinstance(value, str) else json.dumps(value)


def stage_args(stage: str, settings: dict[str, Any]) -> list[str]:
    """The flags for `settings` (parameter name -> value) of a stage; arguments are left out."""
    params = stage_params(stage)
    args = []
    for name, value in settings.items():
        param = params[name]
        if value is not None and isinstance(param, click.Option):
            args += _option_args(param, value)
    if "progress" in params and "progress" not in settings:
        args.append("--no-progress")  # job output goes to a log file
    return args


def _cell_settings(experiment: Experiment, picks: Picks) -> dict:
    settings: dict[str, dict[str, Any] | None] = copy.deepcopy(experiment.base)
    for axis, index in picks:
        for stage, flags in axis.settings[index].items():
            current = settings[stage]
            if flags is None:
                settings[stage] = None
            elif current is not None:
                current.update(flags)
    return settings


class Planner:
    """Builds the cells and their shared jobs, in grid order."""

    def __init__(self, experiment: Experiment, folder: Path) -> None:
        self.experiment = experiment
        self.folder = folder.resolve()
        self.jobs: dict[tuple[str, str], Job] = {}

    def _job(self, stage: str, key: Any, slug: str, make: Any) -> Job:
        """The job of `key`, made (and named after the first cell that needs it) once."""
        digest = _digest(key)
        if (stage, digest) not in self.jobs:
            self.jobs[stage, digest] = make(f"{stage}-{slug}-{digest}", f"{slug}-{digest}")
        return self.jobs[stage, digest]

    def cell(self, index: int, picks: Picks, reference: str | None = None) -> Cell:
        """The cell of `picks`; a reference cell's first pick is the reference's value."""
        axes = picks[1:] if reference else picks
        labels = {a.name: a.labels[i] for a, i in axes}
        overrides = _overrides(picks)
        values = {a.name: a.values[i] for a, i in axes}
        settings = _cell_settings(self.experiment, picks)
        dataset = None
        if settings["generate"] is not None:
            generate = settings["generate"]
            dataset = self._job(
                "generate",
                generate,
                _slug(overrides, {"generate"}),
                lambda job_id, name: Job(
                    "generate",
                    job_id,
                    self.folder / DATA / name,
                    ["generate", *stage_args("generate", generate)],
                    [],
                ),
            )
        train = settings["train"]
        run = self._job(
            "train",
            {"data": dataset.id if dataset else None, "train": train},
            _slug(overrides, {"generate", "train"}),
            lambda job_id, name: Job(
                "train",
                job_id,
                self.folder / RUNS / name,
                ["train", *([str(dataset.out)] if dataset else []), *stage_args("train", train)],
                [dataset.id] if dataset else [],
            ),
        )
        probe = dict(settings["probe"])
        probe_dataset = probe.pop("dataset")
        report = self._job(
            "probe",
            {"run": run.id, "probe": settings["probe"]},
            _slug(overrides, set(STAGES)),
            lambda job_id, name: Job(
                "probe",
                job_id,
                self.folder / REPORTS / f"{name}.json",
                ["probe", str(run.out), str(probe_dataset), *stage_args("probe", probe)],
                [run.id],
            ),
        )
        cell = Cell(index, labels, values, settings, dataset, run, report, reference)
        for job in (dataset, run, report):
            if job is not None:
                job.cells.append(index)
        return cell

    def plan(self) -> Plan:
        """The grid's cells, then each reference crossed with the experiment's reference axes."""
        cells = [self.cell(i, picks) for i, picks in enumerate(_picks(self.experiment.axes))]
        reference = self.experiment.reference
        for i, label in enumerate(reference.labels if reference else ()):
            for picks in _picks(self.experiment.reference_axes):
                cells.append(self.cell(len(cells), [(reference, i), *picks], label))
        for job in self.jobs.values():
            job.argv += _outputs(job, cells)
        order = {stage: i for i, stage in enumerate(STAGES)}
        jobs = sorted(self.jobs.values(), key=lambda job: order[job.stage])
        return Plan(self.folder, cells, {job.id: job for job in jobs})


def _picks(axes: tuple[Axis, ...]) -> Iterator[Picks]:
    """Every choice of one value per axis, in grid order."""
    ranges = [range(len(axis.labels)) for axis in axes]
    for choice in itertools.product(*ranges):
        yield list(zip(axes, choice, strict=True))


def _outputs(job: Job, cells: list[Cell]) -> list[str]:
    """Where a job writes, and for a probe the row label of its report."""
    if job.stage != "probe":
        return ["--out", str(job.out)]
    return ["--name", cells[job.cells[0]].name, "--out", str(job.out), "--overwrite"]


def make_plan(experiment: Experiment, folder: str | Path) -> Plan:
    """Every cell of the experiment's grid and the jobs that make them, writing under `folder`."""
    return Planner(experiment, Path(folder)).plan()
