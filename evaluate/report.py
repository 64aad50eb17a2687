"""The probe report (one JSON per run) and tables that put several reports side by side.

A table has one row per encoder and one column per (dataset, protocol, metric), like the paper's
Tables 1-5, so `genrep-probe table runs/*/probe-*.json` fills a paper-style table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from genrep.config import save_config, to_plain
from genrep.errors import DataError
from genrep.io import atomic_write_bytes

REPORT_FORMAT = "genrep-probe-report"
REPORT_VERSION = 1
TABLE_FORMATS = ("text", "markdown")


def config_path_for(report_path: str | os.PathLike) -> Path:
    """Where the resolved config of a report is saved: `report.json` -> `report.config.yaml`."""
    path = Path(report_path)
    return path.with_name(f"{path.stem}.config.yaml")


def build_report(
    *,
    label: str,
    protocol: str,
    primary_metric: str,
    metrics: dict[str, float],
    details: dict[str, Any],
    settings: dict[str, Any],
    checkpoint: dict[str, Any],
    dataset: dict[str, Any],
    preprocessing: dict[str, Any],
    config: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """The report's schema in one place: what `read_report` and `format_table` rely on."""
    from genrep import __version__

    return {
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        "label": label,
        "protocol": protocol,
        "primary_metric": primary_metric,
        "metrics": metrics,
        "units": "percent",
        "settings": settings,
        "details": details,
        "checkpoint": checkpoint,
        "dataset": dataset,
        "preprocessing": preprocessing,
        "config": config,
        "seconds": round(seconds, 3),
        "genrep_version": __version__,
    }


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> Path:
    """Write the report JSON and, next to it, its resolved config as YAML; returns the YAML's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config_path = config_path_for(path)
    save_config(config_path, report["config"])
    atomic_write_bytes(path, (json.dumps(to_plain(report), indent=2) + "\n").encode())
    return config_path


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """A report written by `write_report`; any other file is a `DataError` saying what it is not."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read report {path}: {err}") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise DataError(f"{path} is not a genrep-probe report (written by genrep-probe --out)")
    if report.get("format_version") != REPORT_VERSION:
        raise DataError(
            f"{path} has report format_version {report.get('format_version')}; "
            f"this genrep reads {REPORT_VERSION}"
        )
    return report


def format_table(
    reports: Iterable[dict[str, Any]], fmt: str = "text", all_metrics: bool = False
) -> str:
    """Rows: encoders (report labels); columns: "<dataset> <protocol> <metric>" in percent; "-" if absent."""
    reports = list(reports)
    checkpoints_by_label: dict[str, set[str]] = {}
    for report in reports:
        checkpoints_by_label.setdefault(report["label"], set()).add(report["checkpoint"]["sha256"])
    columns: list[str] = []
    rows: dict[str, dict[str, float]] = {}
    for report in reports:
        label, sha256 = report["label"], report["checkpoint"]["sha256"]
        # Two checkpoints that share a label get their hash appended, so their rows stay apart.
        row = rows.setdefault(
            f"{label}@{sha256[:8]}" if len(checkpoints_by_label[label]) > 1 else label, {}
        )
        primary = report["primary_metric"]
        metrics = report["metrics"] if all_metrics else {primary: report["metrics"][primary]}
        for metric, value in metrics.items():
            column = f"{report['dataset']['label']} {report['protocol']} {metric}"
            if column not in columns:
                columns.append(column)
            row[column] = value
    header = ["encoder", *columns]
    body = [
        [name, *(f"{cells[c]:.2f}" if c in cells else "-" for c in columns)]
        for name, cells in rows.items()
    ]
    if fmt == "markdown":
        lines = [header, ["---"] + ["---:"] * len(columns), *body]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(line: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )

    return "\n".join([render(header), "  ".join("-" * w for w in widths), *map(render, body)])
