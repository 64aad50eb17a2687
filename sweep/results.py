"""Gather the reports of a sweep into `results.csv` (one row per cell) and `results.md` (a
Table-1-style grid: rows and columns are axes, each cell the mean ± std over the averaged axes,
then the random-init baseline and the lift over it)."""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genrep.evaluate.report import read_report
from genrep.io import atomic_write_bytes
from genrep.sweep.experiment import Experiment
from genrep.sweep.plan import Cell, Plan, flag_text, short_name

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"


@dataclass
class Result:
    """A cell and its report (None while the cell is unfinished)."""

    cell: Cell
    report: dict[str, Any] | None

    def metric(self) -> float | None:
        if self.report is None:
            return None
        return self.report["metrics"][self.report["primary_metric"]]

    def baseline(self) -> float | None:
        if self.report is None or not self.report.get("baseline"):
            return None
        return self.report["baseline"]["metrics"].get(self.report["primary_metric"])

    def lift(self) -> float | None:
        if self.report is None or not self.report.get("lift"):
            return None
        return self.report["lift"].get(self.report["primary_metric"])

    def column_label(self) -> str:
        """What the number is: "<probe dataset> <protocol> <metric>"."""
        report = self.report
        if report is None:
            return "not measured"
        return f"{report['dataset']['label']} {report['protocol']} {report['primary_metric']}"


def collect(plan: Plan) -> list[Result]:
    """Every cell with its report, where one exists."""
    return [
        Result(cell, read_report(cell.report.out) if cell.report.out.is_file() else None)
        for cell in plan.cells
    ]


def _plain(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def results_csv(results: list[Result], experiment: Experiment) -> str:
    """One row per cell: its axis labels, the primary metric, baseline and lift, where its files
    are, and what its encoder was trained on (`trained_on.*`)."""
    rows = []
    for result in results:
        report = result.report or {}
        row: dict[str, Any] = {"cell": result.cell.index}
        if experiment.reference:
            row["reference"] = result.cell.reference or ""
        row.update({axis.name: result.cell.labels.get(axis.name, "") for axis in experiment.axes})
        row.update(
            status="done" if report else "missing",
            dataset=report.get("dataset", {}).get("label"),
            protocol=report.get("protocol"),
            metric=report.get("primary_metric"),
            value=result.metric(),
            baseline=result.baseline(),
            lift=result.lift(),
            report=str(result.cell.report.out),
            run=str(result.cell.run.out),
            data=str(result.cell.dataset.out) if result.cell.dataset else None,
        )
        trained = report.get("trained_on") or {}
        row.update({f"trained_on.{k}": _plain(v) for k, v in trained.items() if k != "datasets"})
        rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def mean_std(values: list[float], expected: int) -> str:
    """`mean ± std` (sample std over the averaged cells), with `(k/n)` when some are missing."""
    if not values:
        return "-"
    text = f"{statistics.fmean(values):.2f}"
    if expected > 1 and len(values) > 1:
        text += f" ± {statistics.stdev(values):.2f}"
    if len(values) < expected:
        text += f" ({len(values)}/{expected})"
    return text


def _signed(text: str) -> str:
    return text if text == "-" or text.startswith("-") else f"+{text}"


def key_of(result: Result, axes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(result.cell.labels[axis] for axis in axes)


def group(results: Iterable[Result], axes: tuple[str, ...]) -> dict[tuple[str, ...], list[Result]]:
    """Results by their labels on `axes`, in grid order."""
    groups: dict[tuple[str, ...], list[Result]] = {}
    for result in results:
        groups.setdefault(key_of(result, axes), []).append(result)
    return groups


def _grid(
    experiment: Experiment,
    results: list[Result],
    value: Callable[[Result], float | None],
    signed: bool = False,
) -> list[list[str]]:
    """Rows of a grid: the row's labels ("all" without row axes), then one cell per column; then a
    row per reference, labelled by it."""
    columns = list(group(results, experiment.columns))
    grid = [r for r in results if r.cell.reference is None]
    rows = [(key or ("all",), chosen) for key, chosen in group(grid, experiment.rows).items()]
    padding = [""] * (max(1, len(experiment.rows)) - 1)
    for label in experiment.reference.labels if experiment.reference else ():
        rows.append(((label, *padding), [r for r in results if r.cell.reference == label]))
    body = []
    for row_label, row_results in rows:
        cells = []
        for column_key in columns:
            chosen = [r for r in row_results if key_of(r, experiment.columns) == column_key]
            text = mean_std([v for r in chosen if (v := value(r)) is not None], len(chosen))
            cells.append(_signed(text) if signed else text)
        body.append([*row_label, *cells])
    return body


def column_name(axes: tuple[str, ...], labels: tuple[str, ...]) -> str:
    """`sigma=0.1 / seed=0` for flag axes, the label itself for named axes."""
    return " / ".join(
        f"{short_name(axis)}={label}" if "." in axis else label
        for axis, label in zip(axes, labels, strict=True)
    )


def _baseline_row(experiment: Experiment, results: list[Result]) -> list[str]:
    """The random-init baseline of each column (the same for every row of it, as a rule)."""
    row = ["random init", *[""] * (max(1, len(experiment.rows)) - 1)]
    for column in group(results, experiment.columns).values():
        # One number per distinct baseline record: cells that share a probe share its baseline.
        records: dict[str, float] = {}
        for r in column:
            value = r.baseline()
            if r.report is not None and value is not None:
                records[r.report["baseline"]["record"]] = value
        row.append(mean_std(list(records.values()), len(records)))
    return row


def _markdown(header: list[str], body: list[list[str]], label_columns: int) -> str:
    lines = [header, ["---"] * label_columns + ["---:"] * (len(header) - label_columns), *body]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def settings_text(settings: dict[str, dict[str, Any] | None]) -> str:
    """`generate.view=none, train.augment=false` (`generate: false` for no dataset)."""
    parts = []
    for stage, flags in settings.items():
        if flags is None:
            parts.append(f"{stage}: false")
        else:
            parts += [f"{stage}.{flag}={flag_text(value)}" for flag, value in flags.items()]
    return ", ".join(parts)


def results_markdown(results: list[Result], experiment: Experiment) -> str:
    """The grid of the metric with a random-init row, then the grid of the lift."""
    done = [r for r in results if r.report is not None]
    metric = " or ".join(sorted({r.column_label() for r in done})) or "metric"
    columns = group(results, experiment.columns)
    header = [
        *(experiment.rows or ("",)),
        *(column_name(experiment.columns, key) for key in columns if experiment.columns),
        *([] if experiment.columns else [metric]),
    ]
    labels = max(1, len(experiment.rows))
    metric_grid = [*_grid(experiment, results, Result.metric), _baseline_row(experiment, results)]
    lift_grid = _grid(experiment, results, Result.lift, signed=True)
    averaged = (
        f"mean ± std over {', '.join(experiment.average_over)}"
        if experiment.average_over
        else "one run per cell, no axis averaged"
    )
    reference = experiment.reference
    references = (
        [
            f"{label}: the base with {settings_text(settings)}"
            for label, settings in zip(reference.labels, reference.settings, strict=True)
        ]
        if reference
        else []
    )
    parts = [
        f"# {experiment.name}",
        "",
        *([experiment.description.strip(), ""] if experiment.description else []),
        f"{metric}: {averaged} ({len(done)} of {len(results)} cells finished).",
        "",
        *(f"Reference {text}." for text in references),
        *([""] if references else []),
        _markdown(header, metric_grid, labels),
        "",
        "Lift over the random-init baseline (the same architecture untrained, same probe):",
        "",
        _markdown(header, lift_grid, labels),
    ]
    return "\n".join(parts) + "\n"


def write_results(plan: Plan, experiment: Experiment, results: list[Result]) -> list[Path]:
    """results.csv and results.md in the sweep folder; returns their paths."""
    paths = [plan.folder / RESULTS_CSV, plan.folder / RESULTS_MD]
    atomic_write_bytes(paths[0], results_csv(results, experiment).encode())
    atomic_write_bytes(paths[1], results_markdown(results, experiment).encode())
    return paths
