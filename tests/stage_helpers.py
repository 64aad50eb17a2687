"""Stage 2 and checks after stage 1: `genrep-shards verify` and a tiny `genrep-train` run on a
dataset, as a user would chain them."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from genrep.shards_cli import main as shards_main
from genrep.train.cli import main as train_main


def verify(dataset: Path) -> str:
    result = CliRunner().invoke(shards_main, ["verify", str(dataset)])
    assert result.exit_code == 0, result.output
    return result.output


def train_tiny(dataset: Path, run: Path, objective: str = "supcon", steps: int = 2) -> list[dict]:
    """A few SGD steps of a ResNet-18 on `dataset`; returns the run's log records."""
    args = [str(dataset), "--objective", objective, "--arch", "resnet18", "--steps", str(steps)]
    args += ["--batch-size", "8", "--workers", "0", "--log-every", "1", "--no-progress"]
    result = CliRunner().invoke(train_main, [*args, "--out", str(run)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    return records
