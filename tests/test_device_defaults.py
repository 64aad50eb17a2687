"""GPU-first defaults: every stage picks the device and precision itself (`auto`), and a job that
would take over an hour on the CPU says so once, early, from its measured rate."""

from __future__ import annotations

import click
import pytest
import torch
from click.testing import CliRunner
from conftest import run_generate
from train_helpers import FAST

from genrep import options
from genrep.evaluate.cli import main as probe_group
from genrep.generate.cli import main as generate_main
from genrep.generate.cli import steer_main
from genrep.options import SlowJobWarning
from genrep.train.cli import main as train_main

pytest_plugins = ["train_fixtures"]

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _defaults(command: click.Command) -> dict[str, object]:
    return {param.name: param.default for param in command.params}


@pytest.mark.parametrize(
    "command", [generate_main, steer_main, train_main, probe_group.commands["probe"]]
)
def test_every_stage_defaults_to_auto(command):
    defaults = _defaults(command)
    assert defaults["device"] == "auto" and defaults["precision"] == "auto"


def test_projection_from_the_measured_rate(capsys):
    clock = FakeClock()
    check = SlowJobWarning(CPU, total=1000, what="job", skip=2, measure=3, clock=clock)
    clock.now = 100.0  # start-up is not measured...
    check.update(1)
    check.update(2)  # ...the clock starts here
    clock.now = 101.0
    check.update(4)
    assert capsys.readouterr().err == ""  # 2 of the 3 measured units done: no estimate yet
    clock.now = 106.0
    check.update(5)  # 2 s per unit x 995 units left = 33 min
    assert capsys.readouterr().err == ""
    clock = FakeClock()
    check = SlowJobWarning(CPU, total=1000, what="job", skip=2, measure=3, clock=clock)
    check.update(2)
    clock.now = 12.0
    check.update(5)  # 4 s per unit x 995 units = 1.1 h
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "job runs on the CPU and should take about 1.1 h" in err
    clock.now = 1e6
    check.update(6)  # warns once
    assert capsys.readouterr().err == ""


def test_no_warning_on_a_gpu(capsys):
    clock = FakeClock()
    check = SlowJobWarning(CUDA, total=10**9, what="job", clock=clock)
    clock.now = 60.0
    check.update(1)
    assert capsys.readouterr().err == ""


@pytest.fixture
def any_cpu_job_is_slow(monkeypatch):
    """The one-hour threshold made 0 s, so that the tiny jobs of the tests cross it."""
    monkeypatch.setattr(options, "CPU_WARNING_SECONDS", 0)


WARNING = "runs on the CPU and should take about"


def test_generate_warns_from_its_first_batch(any_cpu_job_is_slow, tmp_path):
    result = run_generate(
        "--n", "8", "--batch-size", "4", "--size", "32", "--workers", "0", "--device", "cpu",
        "--out", str(tmp_path / "ds"),
    )  # fmt: skip
    assert result.output.count(WARNING) == 1
    assert "warning: generating 16 images" in result.output


def test_generate_is_quiet_below_the_threshold(tmp_path):
    result = run_generate("--n", "4", "--size", "32", "--workers", "0", "--out", str(tmp_path))
    assert WARNING not in result.output


def test_steer_warns_from_its_step_time(any_cpu_job_is_slow, tmp_path):
    result = CliRunner().invoke(
        steer_main,
        [
            "--no-progress",
            "--model-option",
            "resolution=32",
            "--num-samples",
            "12",
            "--batch-size",
            "4",
            "--eval-size",
            "4",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "walks.pt"),
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert result.output.count(WARNING) == 1 and "learning walks for 3 steps" in result.output


def test_train_warns_after_a_few_steps(any_cpu_job_is_slow, datasets, tmp_path):
    result = CliRunner().invoke(
        train_main,
        [
            str(datasets("gauss")),
            *FAST,
            "--steps",
            "6",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "run"),
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert result.output.count(WARNING) == 1 and "training 6 steps" in result.output
