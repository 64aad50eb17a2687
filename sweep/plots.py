"""Figures of a sweep, as PNG and SVG under SWEEP/plots/ (matplotlib: `pip install genrep[plots]`).

- the metric against a swept axis, one line per series, error bars over the averaged axes, the
  random-init baseline as a dashed line and each reference as a dotted line in a band of its
  spread (the shape of the paper's Fig. 5 and Fig. 6);
- training curves (loss, positive top-1, learning rate) of every run, from its log.jsonl.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path
from typing import Any

from genrep.runs import LOG
from genrep.sweep.experiment import Experiment, Plot
from genrep.sweep.plan import Plan
from genrep.sweep.results import Result, column_name, group

PLOTS = "plots"
FORMATS = ("png", "svg")
#: log.jsonl series drawn as training curves, with their axis labels
CURVES = {"loss": "loss", "positive_top1": "positive top-1 (fraction)", "lr": "learning rate"}


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, folder: Path, name: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.{fmt}" for fmt in FORMATS]
    for path in paths:
        figure.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(figure)
    return paths


def _log_x(spec: Plot, values: list[float]) -> bool:
    """As asked, else when the swept values are positive and span a decade or more."""
    if spec.log_x is not None:
        return spec.log_x
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 10


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".=+-" else "-" for c in text).strip("-")


def metric_plot(
    experiment: Experiment, spec: Plot, results: list[Result], title: str
) -> Any | None:
    """One figure of the metric against `spec.x` for `results` (None when none is finished)."""
    finished = [r for r in results if r.report is not None]
    done = [r for r in finished if r.cell.reference is None]
    if not done:
        return None
    plt = _pyplot()
    axis = experiment.axis(spec.x)
    positions = list(axis.values) if axis.numeric else list(range(len(axis.labels)))
    figure, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    baselines = {}
    for series_key, series in group(done, spec.series).items():
        xs, means, stds = [], [], []
        for label, position in zip(axis.labels, positions, strict=True):
            values = [r.metric() for r in series if r.cell.labels[spec.x] == label]
            if values:
                xs.append(position)
                means.append(statistics.fmean(values))
                stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        name = column_name(spec.series, series_key) if spec.series else "trained"
        line = ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=name)
        values = [v for r in series if (v := r.baseline()) is not None]
        if values:
            baselines[name] = (statistics.fmean(values), line[0].get_color())
    if len({round(mean, 6) for mean, _ in baselines.values()}) == 1:
        mean = next(iter(baselines.values()))[0]
        ax.axhline(mean, linestyle="--", color="gray", label="random init")
    else:
        for name, (mean, color) in baselines.items():
            ax.axhline(mean, linestyle="--", color=color, label=f"{name}, random init")
    _reference_lines(ax, experiment, finished, first=len(group(done, spec.series)))
    if _log_x(spec, [float(p) for p in positions] if axis.numeric else []):
        ax.set_xscale("log")
        if axis.numeric:  # the swept values as the ticks, written as in the experiment
            ax.set_xticks(positions, axis.labels)
            ax.minorticks_off()
    if not axis.numeric:
        ax.set_xticks(positions, axis.labels, rotation=20, ha="right")
    ax.set_xlabel(spec.x)
    ax.set_ylabel(" or ".join(sorted({r.column_label() for r in finished})))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def _reference_lines(ax: Any, experiment: Experiment, results: list[Result], first: int) -> None:
    """Each reference's mean as a dotted line (colours from the `first`-th of the cycle on), in a
    band of ± its std over its cells."""
    labels = experiment.reference.labels if experiment.reference else ()
    for color, label in enumerate(labels, start=first):
        values = [r.metric() for r in results if r.cell.reference == label]
        if not values:
            continue
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        text = f"{label} (± std, {len(values)} cells)" if std else label
        ax.axhline(mean, linestyle=":", color=f"C{color % 10}", label=text)
        ax.axhspan(mean - std, mean + std, color=f"C{color % 10}", alpha=0.15, linewidth=0)


def metric_plots(plan: Plan, experiment: Experiment, results: list[Result]) -> list[Path]:
    """Every plot of the experiment; axes that are neither x, series nor averaged give one figure
    per value."""
    paths = []
    for spec in experiment.plots:
        others = tuple(
            a.name
            for a in experiment.axes
            if a.name not in (spec.x, *spec.series, *experiment.average_over)
        )
        grid = [r for r in results if r.cell.reference is None]
        for panel_key, panel in group(grid, others).items():
            # A reference's cells lack the labels of axes it is not crossed with: it is in each
            # panel of those.
            panel = panel + [
                r
                for r in results
                if r.cell.reference is not None
                and all(
                    r.cell.labels.get(a, k) == k for a, k in zip(others, panel_key, strict=True)
                )
            ]
            suffix = column_name(others, panel_key) if others else ""
            title = f"{experiment.name}" + (f" ({suffix})" if suffix else "")
            figure = metric_plot(experiment, spec, panel, title)
            if figure is not None:
                name = _file_name(f"{spec.x}" + (f"-{suffix}" if suffix else ""))
                paths += _save(figure, plan.folder / PLOTS, name)
    return paths


def read_log(run: Path) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl (a line cut short by a kill is skipped)."""
    path = run / LOG
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def training_curves(plan: Plan, results: list[Result]) -> list[Path]:
    """Loss, positive top-1 and learning rate against the step, one line per run."""
    runs = {r.cell.run.id: r.cell.run for r in results}
    logs = {job.out.name.rpartition("-")[0]: read_log(job.out) for job in runs.values()}
    logs = {name: records for name, records in logs.items() if records}
    if not logs:
        return []
    curves = [c for c in CURVES if any(c in r for records in logs.values() for r in records)]
    plt = _pyplot()
    figure, axes = plt.subplots(
        1, len(curves), figsize=(4 * len(curves) + 2, 3.4), squeeze=False, layout="constrained"
    )
    for ax, curve in zip(axes[0], curves, strict=True):
        for name, records in logs.items():
            points = [(r["step"], r[curve]) for r in records if curve in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name, linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel(CURVES[curve])
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=7)
    figure.suptitle("training curves", fontsize=10)
    return _save(figure, plan.folder / PLOTS, "training-curves")


def write_plots(plan: Plan, experiment: Experiment, results: list[Result]) -> list[Path]:
    return [*metric_plots(plan, experiment, results), *training_curves(plan, results)]
