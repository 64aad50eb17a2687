"""What the tests of generators from outside genrep share: a dataset's shard hashes, one-line CLI
errors, and the stages after generation (`genrep-shards verify`, a tiny `genrep-train` run) as a
user would chain them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from click.testing import CliRunner

from genrep.generate.cli import main as generate_main
from genrep.shards_cli import main as shards_main
from genrep.train.cli import main as train_main


def invoke_generate(*args: str):
    """`genrep-generate ARGS` in-process, whatever its outcome."""
    return CliRunner().invoke(generate_main, ["--no-progress", *args])


def one_line_error(result, exit_code: int) -> str:
    """The single `Error:` line of a failed command (no traceback), checking its exit code."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def shard_bytes(folder: Path) -> dict[str, str]:
    """sha256 of every shard of a dataset folder, by name."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.glob("shard-*.tar"))
    }


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
