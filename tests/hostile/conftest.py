"""Fixtures of the hostile-input tests: a tiny dataset made once, copies a test may damage (read
from their folder or a URL), and a deadline that turns a hang into a failure."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import run_generate
from http_helpers import serve

#: flags of the tiny dataset: 16 px embedded images, 4 shards of 2 anchors, 1 gaussian neighbor
TINY = ["--model-option", "resolution=16", "--workers", "0", "--n", "8", "--shard-size", "2"]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "tiny"
    run_generate(*TINY, "--out", str(out))
    return out


@pytest.fixture
def dataset(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A copy of the tiny dataset that the test may damage."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "tiny"))


@pytest.fixture(params=["folder", "url"])
def where(request: pytest.FixtureRequest, dataset: Path) -> Iterator[str | Path]:
    """`dataset` as a reader meets it: its folder, or served at a loopback http:// URL (the same
    bounded readers must refuse the same damage either way)."""
    if request.param == "folder":
        yield dataset
        return
    with serve(dataset.parent) as server:
        yield f"{server.url}/{dataset.name}"


class Hang(BaseException):
    """What `deadline` raises: not an OSError (as TimeoutError is) nor an Exception, so no
    `except` of the code under test can turn a hang into a passing test."""


@pytest.fixture
def deadline() -> Iterator[Callable[[int], None]]:
    """`deadline(seconds)`: the test fails with `Hang` instead of hanging the suite."""

    def expire(_signum: int, _frame: object) -> None:
        raise Hang("the command is still running: it hangs on this input")

    def arm(seconds: int) -> None:
        signal.signal(signal.SIGALRM, expire)
        signal.alarm(seconds)

    previous = signal.getsignal(signal.SIGALRM)
    yield arm
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A genrep-train run folder of one step on the tiny dataset (its checkpoint and config)."""
    from click.testing import CliRunner

    from genrep.train.cli import main as train_main

    out = tmp_path_factory.mktemp("hostile-run") / "run"
    args = [str(tiny_dataset), "--arch", "resnet18", "--batch-size", "2", "--workers", "0"]
    args += ["--no-progress", "--steps", "1", "--out", str(out)]
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 0, result.output
    return out
