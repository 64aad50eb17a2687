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
from genrep.errors import DataError, printable
from genrep.io import atomic_write_bytes

REPORT_FORMAT = "genrep-probe-report"
#: 2 added `baseline`, `lift` and `trained_on`
REPORT_VERSION = 2
READABLE_VERSIONS = (1, 2)
TABLE_FORMATS = ("text", "markdown", "csv", "json")
#: largest report file read (one is a few KiB)
MAX_REPORT_BYTES = 16 << 20


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
    baseline: dict[str, Any] | None = None,
    lift: dict[str, float] | None = None,
    trained_on: dict[str, Any] | None = None,
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
        "baseline": baseline,
        "lift": lift,
        "units": "percent",
        "settings": settings,
        "details": details,
        "checkpoint": checkpoint,
        "trained_on": trained_on,
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


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scores(value: Any) -> bool:
    """A metric -> number mapping (`metrics`, `lift`)."""
    return isinstance(value, dict) and all(_number(v) for v in value.values())


#: what `format_table` reads of a report, and how to tell it is usable (absent optional keys are
#: None: reports of version 1 have no baseline, lift or trained_on)
_REPORT_FIELDS = {
    "label": lambda v: isinstance(v, str),
    "protocol": lambda v: isinstance(v, str),
    "metrics": _scores,
    "primary_metric": lambda v: isinstance(v, str),
    "dataset": lambda v: isinstance(v, dict) and isinstance(v.get("label"), str),
    "checkpoint": lambda v: isinstance(v, dict) and isinstance(v.get("sha256"), str),
    "baseline": lambda v: (
        v is None
        or (isinstance(v, dict) and _scores(v.get("metrics", {})) and {"arch", "seed"} <= v.keys())
    ),
    "lift": lambda v: v is None or _scores(v),
    "trained_on": lambda v: v is None or isinstance(v, dict),
}


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """A report written by `write_report` (a regular file of at most `MAX_REPORT_BYTES`, holding
    what `format_table` reads); any other file is a `DataError` saying what it is not."""
    from genrep.remote import read_capped

    try:
        report = json.loads(read_capped(Path(path), MAX_REPORT_BYTES, "report"))
    except DataError as err:  # not a regular file, or too large
        raise DataError(f"cannot read report {path}: {err}") from None
    except (OSError, ValueError, RecursionError) as err:
        raise DataError(f"cannot read report {path}: {type(err).__name__}: {err}") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise DataError(f"{path} is not a genrep-probe report (written by genrep-probe --out)")
    if report.get("format_version") not in READABLE_VERSIONS:
        raise DataError(
            f"{path} has report format_version {report.get('format_version')}; this genrep "
            f"reads {', '.join(map(str, READABLE_VERSIONS))}: use the genrep that wrote it"
        )
    report = {"baseline": None, "lift": None, "trained_on": None, **report}
    for name, valid in _REPORT_FIELDS.items():
        if not valid(report.get(name)):
            raise DataError(
                f"{path} is a damaged genrep-probe report ({name} is "
                f"{str(report.get(name))[:80]!r}); rerun the genrep-probe command that wrote it"
            )
    if report["primary_metric"] not in report["metrics"]:
        raise DataError(
            f"{path} is a damaged genrep-probe report (no metric {report['primary_metric']!r}); "
            "rerun the genrep-probe command that wrote it"
        )
    return report


def summary_line(report: dict[str, Any]) -> str:
    """One console line: each metric, and the random-init baseline and lift next to it."""
    parts = []
    baseline = (report["baseline"] or {}).get("metrics", {})
    for metric, value in _metrics(report, all_metrics=True).items():
        part = f"{metric} {value:.2f}"
        if metric in baseline:
            part += f" (random init {baseline[metric]:.2f}, lift {report['lift'][metric]:+.2f})"
        parts.append(part)
    return printable(
        f"{report['label']} on {report['dataset']['label']} ({report['protocol']}): "
        + "; ".join(parts)
    )


def _metrics(report: dict[str, Any], all_metrics: bool) -> dict[str, float]:
    """The primary metric first, then the others when `all_metrics`."""
    primary = report["primary_metric"]
    metrics = {primary: report["metrics"][primary]}
    if all_metrics:
        metrics.update(report["metrics"])
    return metrics


def _row_labels(entries: list[tuple[str, str]]) -> list[str]:
    """Row names for (label, identity) pairs: a label shared by several identities gets a short
    hash of each appended, so their rows stay apart."""
    identities: dict[str, set[str]] = {}
    for label, identity in entries:
        identities.setdefault(label, set()).add(identity)
    return [
        f"{label}@{identity[:8]}" if len(identities[label]) > 1 else label
        for label, identity in entries
    ]


def _baseline_label(baseline: dict[str, Any]) -> str:
    return f"random init {baseline['arch']} (seed {baseline['seed']})"


def metric_records(
    reports: Iterable[dict[str, Any]], all_metrics: bool = False
) -> list[dict[str, Any]]:
    """One record per (report, metric): encoder row, column, value, baseline, lift and what the
    encoder was trained on (what `--format csv|json` writes)."""
    reports = list(reports)
    rows = _row_labels([(r["label"], r["checkpoint"]["sha256"]) for r in reports])
    records = []
    for row, report in zip(rows, reports, strict=True):
        report = {"baseline": None, "lift": None, "trained_on": None, **report}
        baseline = (report["baseline"] or {}).get("metrics", {})
        for metric, value in _metrics(report, all_metrics).items():
            records.append(
                {
                    "encoder": row,
                    "dataset": report["dataset"]["label"],
                    "protocol": report["protocol"],
                    "metric": metric,
                    "value": value,
                    "baseline": baseline.get(metric),
                    "baseline_encoder": _baseline_label(report["baseline"]) if baseline else None,
                    "lift": (report["lift"] or {}).get(metric),
                    "arch": report["checkpoint"].get("arch"),
                    "checkpoint_sha256": report["checkpoint"]["sha256"],
                    "trained_on": report["trained_on"],
                }
            )
    return records


def _csv_cell(value: Any) -> Any:
    """A CSV value: lists and mappings as JSON (which escapes control characters), text
    `printable`."""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return printable(value) if isinstance(value, str) else value


def _csv(records: list[dict[str, Any]]) -> str:
    """Records as CSV; `trained_on` is spread into `trained_on.<key>` columns; text read from the
    reports is `printable` (a report is untrusted: its labels must not reach a terminal raw)."""
    import csv
    import io

    flat = []
    for record in records:
        trained = record["trained_on"] or {}
        row = {k: v for k, v in record.items() if k != "trained_on"}
        row.update({f"trained_on.{k}": v for k, v in trained.items() if k != "datasets"})
        flat.append({printable(k): _csv_cell(v) for k, v in row.items()})
    columns = list(dict.fromkeys(key for row in flat for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return out.getvalue().rstrip("\n")


def _grid(records: list[dict[str, Any]]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Columns "<dataset> <protocol> <metric>" (each followed by its lift when any report has a
    baseline) and rows of formatted cells: one per encoder, one per random-init baseline. Text
    read from the reports is `printable`, before the widths of the text table are measured."""
    with_lift = any(record["lift"] is not None for record in records)
    columns: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    baselines: dict[str, dict[str, str]] = {}
    for record in records:
        column = printable(f"{record['dataset']} {record['protocol']} {record['metric']}")
        if column not in columns:
            columns += [column, f"{column} lift"] if with_lift else [column]
        cells = rows.setdefault(printable(record["encoder"]), {})
        cells[column] = f"{record['value']:.2f}"
        if record["lift"] is not None:
            cells[f"{column} lift"] = f"{record['lift']:+.2f}"
        if record["baseline"] is not None:
            baselines.setdefault(printable(record["baseline_encoder"]), {})[column] = (
                f"{record['baseline']:.2f}"
            )
    return columns, {**rows, **baselines}


def format_table(
    reports: Iterable[dict[str, Any]], fmt: str = "text", all_metrics: bool = False
) -> str:
    """Reports side by side. text/markdown: one row per encoder (and per random-init baseline), one
    column per "<dataset> <protocol> <metric>" in percent with its lift next to it, "-" where
    absent; csv/json: one record per (encoder, metric), with baseline, lift and provenance."""
    records = metric_records(reports, all_metrics)
    if fmt == "json":
        return json.dumps(to_plain(records), indent=2)
    if fmt == "csv":
        return _csv(records)
    columns, rows = _grid(records)
    header = ["encoder", *(("lift" if c.endswith(" lift") else c) for c in columns)]
    body = [[name, *(cells.get(c, "-") for c in columns)] for name, cells in rows.items()]
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
