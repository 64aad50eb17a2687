"""genrep-sweep: a tiny 2x2 grid run end to end (the stage commands in child processes), resumed,
printed for a cluster, gathered into results and plots; and the experiment file's checks."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from stage_helpers import one_line_error

from genrep.cli import main as genrep_main
from genrep.sweep.cli import main
from genrep.sweep.experiment import read_experiment
from genrep.sweep.plan import make_plan
from genrep.sweep.runner import LocalRunner, make_slots

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"

TINY = {
    "description": "a tiny 2x2 sweep",
    "base": {
        "generate": {
            "n": 16,
            "shard-size": 8,
            "size": 32,
            "model-option": {"resolution": 32},
            "workers": 0,
        },
        "train": {"arch": "resnet18", "steps": 2, "batch-size": 8, "workers": 0, "log-every": 1},
        "probe": {"dataset": "digits", "protocol": "knn", "size": 32, "workers": 0},
    },
    "axes": {"generate.sigma": [0.2, 1.0], "train.seed": [0, 1]},
}


def write_experiment(folder: Path, experiment: dict, name: str = "tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


def sweep(*args, expect: int = 0):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == expect, result.output
    return result


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny sweep run once, two jobs at a time: (experiment file, sweep folder)."""
    root = tmp_path_factory.mktemp("sweep")
    experiment = write_experiment(root, TINY)
    sweep(experiment, "--out", root / "out", "--jobs", "2")
    return experiment, root / "out"


def command_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("$ ")]


def test_cells_share_their_dataset_and_each_job_runs_once(swept):
    _, out = swept
    datasets = sorted((out / "data").iterdir())
    assert [d.name.rpartition("-")[0] for d in datasets] == ["sigma0.2", "sigma1.0"]
    assert len(list((out / "runs").iterdir())) == 4 and len(list(out.glob("reports/*.json"))) == 4
    logs = sorted((out / "logs").glob("*.log"))
    assert [log.name.split("-")[0] for log in logs].count("generate") == 2
    assert all(len(command_lines(log)) == 1 for log in logs)
    for run in (out / "runs").iterdir():
        config = yaml.safe_load((run / "config.yaml").read_text())
        (dataset,) = config["shards"]
        manifest = json.loads((Path(dataset) / "manifest.json").read_text())
        assert run.name.startswith(
            f"sigma{manifest['view']['params']['sigma']}_seed{config['seed']}"
        )


def test_results_csv_and_markdown_hold_every_cell(swept):
    experiment, out = swept
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["generate.sigma"], r["train.seed"]) for r in rows] == [
        ("0.2", "0"),
        ("0.2", "1"),
        ("1.0", "0"),
        ("1.0", "1"),
    ]
    for row in rows:
        assert row["status"] == "done" and row["metric"] == "top1" and row["dataset"] == "digits"
        value, baseline, lift = float(row["value"]), float(row["baseline"]), float(row["lift"])
        assert lift == pytest.approx(value - baseline)
        report = json.loads(Path(row["report"]).read_text())
        assert report["metrics"]["top1"] == value
        assert float(row["trained_on.sigma"]) == float(row["generate.sigma"])
        assert row["trained_on.seed"] == row["train.seed"] and row["trained_on.steps"] == "2"
    markdown = (out / "results.md").read_text().splitlines()
    assert markdown[0] == "# tiny" and "a tiny 2x2 sweep" in markdown
    assert "digits knn top1: mean ± std over train.seed (4 of 4 cells finished)." in markdown
    table = markdown[markdown.index("| generate.sigma | digits knn top1 |") :]
    for i, sigma in enumerate(("0.2", "1.0")):
        values = [float(r["value"]) for r in rows if r["generate.sigma"] == sigma]
        mean, std = statistics.fmean(values), statistics.stdev(values)
        assert table[2 + i] == f"| {sigma} | {mean:.2f} ± {std:.2f} |"
    assert table[4] == f"| random init | {float(rows[0]['baseline']):.2f} |"
    lifts = [float(r["lift"]) for r in rows if r["generate.sigma"] == "0.2"]
    assert f"| 0.2 | {statistics.fmean(lifts):+.2f} ± {statistics.stdev(lifts):.2f} |" in markdown


def test_plots_are_written_as_png_and_svg(swept):
    _, out = swept
    for name in ("generate.sigma", "training-curves"):
        png, svg = out / "plots" / f"{name}.png", out / "plots" / f"{name}.svg"
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 5000
        assert "<svg" in svg.read_text()[:1000]
    curves = (out / "plots" / "training-curves.svg").read_text()
    assert "positive top-1" in curves and "learning rate" in curves


def test_a_rerun_skips_finished_cells_and_redoes_what_is_missing(swept):
    experiment, out = swept
    reports = sorted(out.glob("reports/*.json"))
    before = {path: path.stat().st_mtime_ns for path in reports}
    reports[1].unlink()
    result = sweep(experiment, "--out", out)
    assert "4 cells, 3 finished; jobs to run: 0/2 generate, 1/4 train, 1/4 probe" in result.stderr
    assert reports[1].is_file()
    assert all(before[p] == p.stat().st_mtime_ns for p in reports if p != reports[1])
    logs = sorted((out / "logs").glob("*.log"))
    assert sum(len(command_lines(log)) for log in logs) == 12  # 10 jobs, then 2 again
    # The train job of the missing cell found its run complete and did nothing.
    (train_log,) = [log for log in logs if len(command_lines(log)) == 2 and "train" in log.name]
    assert "already trained" in train_log.read_text()


def test_a_reference_reuses_the_grid_and_is_a_table_row_and_a_plotted_line(swept, tmp_path):
    _, done = swept
    out = tmp_path / "out"
    shutil.copytree(done, out)
    with_reference = {**TINY, "reference": {"Tx only": {"generate.view": "none"}}}
    experiment = write_experiment(tmp_path, with_reference)
    plan = make_plan(read_experiment(experiment), out)
    assert [c.name for c in plan.cells[4:]] == ["Tx only seed=0", "Tx only seed=1"]
    assert plan.cells[4].dataset is plan.cells[5].dataset  # crossed with the seeds only
    assert "--view" in plan.cells[4].dataset.argv and "--sigma" not in plan.cells[4].dataset.argv
    result = sweep(experiment, "--out", out, "--jobs", "2")
    assert "6 cells, 4 finished; jobs to run: 1/3 generate, 2/6 train, 2/6 probe" in result.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["reference"], r["generate.sigma"], r["train.seed"]) for r in rows[3:]] == [
        ("", "1.0", "1"),
        ("Tx only", "", "0"),
        ("Tx only", "", "1"),
    ]
    assert all(row["status"] == "done" for row in rows)
    assert [r["trained_on.view"] for r in rows[4:]] == ["none", "none"]
    markdown = (out / "results.md").read_text().splitlines()
    assert "Reference Tx only: the base with generate.view=none." in markdown
    values = [float(r["value"]) for r in rows[4:]]
    mean, std = statistics.fmean(values), statistics.stdev(values)
    table = markdown[markdown.index("| generate.sigma | digits knn top1 |") :]
    assert table[4] == f"| Tx only | {mean:.2f} ± {std:.2f} |"
    assert table[5].startswith("| random init | ")
    assert "Tx only (± std, 2 cells)" in (out / "plots" / "generate.sigma.svg").read_text()


def test_print_commands_writes_a_slurm_array_per_stage(tmp_path):
    experiment = write_experiment(tmp_path, TINY)
    out = tmp_path / "out"
    result = sweep(experiment, "--out", out, "--print-commands")
    commands = out / "commands"
    lines = {stage: (commands / f"{stage}.txt").read_text().splitlines() for stage in
             ("generate", "train", "probe")}  # fmt: skip
    assert [len(lines[s]) for s in ("generate", "train", "probe")] == [2, 4, 4]
    assert all(line.startswith("genrep generate --n 16") for line in lines["generate"])
    assert all(f"--out {out.resolve()}/data/" in line for line in lines["generate"])
    assert lines["train"][0].startswith(f"genrep train {out.resolve()}/data/sigma0.2-")
    assert "--seed 1" in lines["train"][1] and "--name 'sigma=0.2 seed=1'" in lines["probe"][1]
    jobs = list(csv.DictReader((commands / "jobs.tsv").open(), delimiter="\t"))
    ids = {(job["stage"], job["task"]): job["job"] for job in jobs}
    train = [job for job in jobs if job["stage"] == "train"]
    assert [job["after"] for job in train] == [ids["generate", "0"]] * 2 + [
        ids["generate", "1"]
    ] * 2
    submit = (commands / "submit-slurm.sh").read_text()
    assert "--array=0-1" in submit and submit.count("--array=0-3") == 2
    assert 'after="--dependency=afterok:${id%%;*}"' in submit
    for script in ("submit-slurm.sh", "run-task.sh"):
        subprocess.run(["bash", "-n", commands / script], check=True)
    # stdout: every command in dependency order, each after a comment naming its job
    printed = [line for line in result.stdout.splitlines() if not line.startswith(("#", "set"))]
    assert printed == lines["generate"] + lines["train"] + lines["probe"]
    assert not (out / "data").exists()  # nothing ran
    # run-task.sh runs one line of a stage file
    (commands / "echo.txt").write_text("echo first\necho 'second task'\n")
    task = subprocess.run(
        ["bash", commands / "run-task.sh", "echo", "1"], capture_output=True, text=True, check=True
    )
    assert task.stdout == "second task\n"

    sweep(experiment, "--out", out, "--collect")
    assert "(0 of 4 cells finished)" in (out / "results.md").read_text()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [row["status"] for row in rows] == ["missing"] * 4


def test_a_failed_job_is_reported_and_its_dependents_wait(tmp_path):
    broken = {**TINY, "axes": {"generate.n": [0]}}
    experiment = write_experiment(tmp_path, broken)
    result = sweep(experiment, "--out", tmp_path / "out", expect=1)
    assert "FAILED generate n0-" in result.stderr and "log: " in result.stderr
    assert one_line_error(result, 1).startswith(
        "Error: 1 job(s) failed and 2 wait on them (logs named above)"
    )
    assert "(0 of 1 cells finished)" in (tmp_path / "out" / "results.md").read_text()


def test_a_sweep_folder_must_be_new_or_a_sweep(tmp_path):
    experiment = write_experiment(tmp_path, TINY)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    result = sweep(experiment, "--out", tmp_path / "busy", "--print-commands", expect=2)
    assert "holds files and is not a sweep folder" in one_line_error(result, 2)


def test_collect_needs_a_sweep_folder(tmp_path):
    experiment = write_experiment(tmp_path, TINY)
    result = sweep(experiment, "--out", tmp_path / "new", "--collect", expect=2)
    assert "holds no sweep to collect" in one_line_error(result, 2)
    assert not (tmp_path / "new").exists()


def test_results_say_when_no_axis_is_averaged(tmp_path):
    experiment = write_experiment(tmp_path, {**TINY, "axes": {"generate.sigma": [0.2, 1.0]}})
    sweep(experiment, "--out", tmp_path / "out", "--print-commands")
    sweep(experiment, "--out", tmp_path / "out", "--collect")
    results = (tmp_path / "out" / "results.md").read_text()
    assert ": one run per cell, no axis averaged (0 of 2 cells finished)." in results


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"colour": 1}, "unknown key 'colour'; valid keys: description, base, axes"),
        ({"axes": {"gen.sigma": [1]}}, "'gen.sigma' names no stage; start it with generate"),
        ({"axes": {"generate.sigmaa": [1]}}, "generate has no flag 'sigmaa'; valid flags: "),
        ({"axes": {"train.out": ["x"]}}, "train has no flag 'out'"),
        ({"axes": {"train.objective": ["nope"]}}, "train.objective: unknown objective 'nope'"),
        ({"axes": {"train.steps": ["many"]}}, "train.steps: 'many' is not a valid integer"),
        ({"axes": {"generate.sigma": 0.5}}, "axes.generate.sigma must be a non-empty list"),
        (
            {"axes": {"generate.sigma": [0.2], "m": {"a": {"generate.sigma": 1}}}},
            "axes 'generate.sigma' and 'm' both set generate.sigma",
        ),
        ({"average_over": ["seed"]}, "average_over: no axis 'seed'; axes: generate.sigma"),
        ({"table": {"rows": []}}, "axis 'generate.sigma' is in neither table.rows"),
        ({"plots": [{"x": "train.seed", "colour": "red"}]}, "plots[0] has unknown key 'colour'"),
        (
            {"reference": {"r": {"train.seed": 3}}},
            "axes 'train.seed' and 'reference' both set train.seed",
        ),
        ({"reference": {"r": {"generate.sigmaa": 3}}}, "reference.r: generate has no flag"),
    ],
)
def test_a_bad_experiment_is_one_line_before_anything_runs(tmp_path, edit, message):
    experiment = write_experiment(tmp_path, {**TINY, **edit})
    result = sweep(experiment, "--out", tmp_path / "out", expect=2)
    assert message in one_line_error(result, 2)
    assert not (tmp_path / "out").exists()


def test_the_valid_flags_are_listed_from_the_stage_command(tmp_path):
    experiment = write_experiment(tmp_path, {**TINY, "axes": {"probe.kk": [1]}})
    line = one_line_error(sweep(experiment, "--print-commands", expect=2), 2)
    flags = line.partition("valid flags: ")[2].split(", ")
    assert {"k", "protocol", "dataset", "baseline", "seed"} <= set(flags)
    assert not {"out", "checkpoint", "overwrite", "name"} & set(flags)


def test_a_cell_without_a_dataset_and_the_seeds_shorthand(tmp_path):
    experiment = write_experiment(
        tmp_path,
        {
            "base": TINY["base"],
            "axes": {
                "data": {
                    "real": {"generate": False, "train.real": str(tmp_path / "photos")},
                    "generated": {"generate.view": "gaussian"},
                }
            },
            "seeds": [3, 4],
        },
    )
    loaded = read_experiment(experiment)
    assert loaded.average_over == ("seed",) and loaded.rows == ("data",)
    plan = make_plan(loaded, tmp_path / "out")
    assert [len(plan.by_stage(s)) for s in ("generate", "train", "probe")] == [1, 4, 4]
    real = plan.cells[0]
    assert real.dataset is None and real.run.after == [] and real.name == "data=real seed=3"
    assert real.run.argv[:2] == ["train", "--arch"] and "--real" in real.run.argv
    assert real.run.argv[real.run.argv.index("--seed") + 1] == "3"
    assert real.report.argv[real.report.argv.index("--seed") + 1] == "3"
    assert plan.cells[3].run.after == [plan.cells[3].dataset.id]


def test_devices_are_given_to_the_jobs_in_turn():
    slots = make_slots(3, ["cuda:0", "cuda:1"])
    assert slots.devices == ["cuda:0", "cuda:1", "cuda:0"]
    assert make_slots(None, ["cuda:0", "cuda:1"]).devices == ["cuda:0", "cuda:1"]
    assert make_slots(None, []).devices == [None]
    plan = make_plan(read_experiment(EXPERIMENTS / "fig5-sigma-cpu.yaml"), "sweeps/x")
    job = next(iter(plan.jobs.values()))
    command = LocalRunner(plan, slots, print).command(job, "cuda:1")
    assert command[-2:] == ["--device", "cuda:1"] and command[3] == "generate"


@pytest.mark.parametrize(
    ("name", "jobs"),
    [
        ("fig5-sigma", (6, 6, 6)),
        ("fig6-samples", (7, 7, 7)),
        ("table1", (3, 7, 14)),
        ("fig5-sigma-cpu", (5, 10, 10)),
        ("fig6-samples-cpu", (3, 6, 6)),
        ("table1-cpu", (3, 6, 12)),
        ("../docs/sweeps/fig5-sigma-cpu-small", (3, 6, 6)),
        ("../docs/sweeps/embedded-sigma-cpu", (6, 12, 12)),
        ("../docs/sweeps/embedded-sigma-cpu-seed2", (2, 2, 2)),
    ],
)
def test_the_shipped_experiments_read_and_share_their_jobs(tmp_path, name, jobs):
    plan = make_plan(read_experiment(EXPERIMENTS / f"{name}.yaml"), tmp_path)
    assert tuple(len(plan.by_stage(s)) for s in ("generate", "train", "probe")) == jobs


def test_sweep_is_a_genrep_subcommand():
    result = CliRunner().invoke(genrep_main, ["--help"])
    assert "sweep" in result.output
    result = CliRunner().invoke(genrep_main, ["sweep", "--help"])
    assert "--print-commands" in result.output and "--devices" in result.output
