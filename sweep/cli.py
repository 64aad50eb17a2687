"""`genrep-sweep EXPERIMENT.yaml`: generate, train and probe every cell of an experiment's grid,
then write results.csv, results.md and plots into the sweep folder."""

from __future__ import annotations

from pathlib import Path

import click
from filelock import FileLock, Timeout

from genrep.config import save_config
from genrep.errors import Command, OutputError, UsageError, UserError
from genrep.options import config_option, resolve_device
from genrep.sweep.commands import write_commands
from genrep.sweep.experiment import STAGES, Experiment, read_experiment
from genrep.sweep.plan import Plan, make_plan
from genrep.sweep.plots import have_matplotlib, write_plots
from genrep.sweep.results import collect, write_results
from genrep.sweep.runner import LocalRunner, make_slots, pending_jobs

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}
EXPERIMENT_COPY = "experiment.yaml"
LOCK = ".sweep.lock"


def _log(message: str) -> None:
    click.echo(message, err=True)


def _devices(value: str | None) -> list[str]:
    """`cuda:0,cuda:1` as a list, each checked to exist here."""
    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    for name in names:
        resolve_device(name)
    return names


def sweep_folder(out: Path | None, experiment: Experiment) -> Path:
    """--out, or sweeps/<experiment name>; a folder that holds other files is refused."""
    folder = out or Path("sweeps") / experiment.name
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file; pass a folder as --out")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / EXPERIMENT_COPY).exists():
        raise OutputError(
            f"{folder} holds files and is not a sweep folder; pass a new or empty --out"
        )
    return folder


def summary(plan: Plan, pending: list) -> str:
    finished = sum(cell.report.finished() for cell in plan.cells)
    counts = ", ".join(
        f"{sum(job.stage == stage for job in pending)}/{len(plan.by_stage(stage))} {stage}"
        for stage in STAGES
    )
    return f"{len(plan.cells)} cells, {finished} finished; jobs to run: {counts}"


def gather(plan: Plan, experiment: Experiment) -> None:
    """results.csv, results.md and the plots, from the reports there are."""
    results = collect(plan)
    written = write_results(plan, experiment, results)
    if have_matplotlib():
        written += write_plots(plan, experiment, results)
    else:
        _log("note: plots need matplotlib: pip install 'genrep[plots]'")
    done = sum(result.report is not None for result in results)
    _log(f"results of {done}/{len(results)} cells: " + ", ".join(map(str, written)))


@click.command(cls=Command, context_settings=CONTEXT)
@config_option
@click.argument("experiment", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Sweep folder.  [default: sweeps/<experiment file name>]",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs run at once.  [default: one per --devices entry, else 1]",
)
@click.option(
    "--devices",
    default=None,
    help="Comma list (cuda:0,cuda:1): the jobs take them in turn as their --device.",
)
@click.option(
    "--print-commands",
    is_flag=True,
    help="Run nothing: write one command per unfinished job to SWEEP/commands/ (with a Slurm "
    "submit script) and print them in dependency order.",
)
@click.option(
    "--collect",
    is_flag=True,
    help="Run nothing: gather the reports in the sweep folder into results and plots.",
)
def main(
    experiment: Path,
    out: Path | None,
    jobs: int | None,
    devices: str | None,
    print_commands: bool,
    collect: bool,
) -> None:
    """Run the generate -> train -> probe grid of EXPERIMENT (a YAML file; see experiments/).

    Cells that share a dataset generate it once, cells that share an encoder train it once. Rerun
    the same command to skip finished cells and resume interrupted ones.
    """
    if print_commands and collect:
        raise UsageError("pass --print-commands or --collect, not both")
    loaded = read_experiment(experiment)
    folder = sweep_folder(out, loaded)
    plan = make_plan(loaded, folder)
    if collect:
        if not (folder / EXPERIMENT_COPY).exists():
            raise UsageError(
                f"{folder} holds no sweep to collect: run `genrep-sweep {experiment}` (or "
                "--print-commands and the jobs) with this --out first"
            )
        gather(plan, loaded)
        return
    slots = make_slots(jobs, _devices(devices))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(folder / LOCK), timeout=0):
            save_config(folder / EXPERIMENT_COPY, loaded.to_plain())
            pending = pending_jobs(plan)
            _log(summary(plan, pending))
            if print_commands:
                commands, script = write_commands(plan, pending)
                click.echo(script, nl=False)
                _log(f"commands: {commands} (submit-slurm.sh, run-task.sh, jobs.tsv)")
                return
            failed, waiting = LocalRunner(plan, slots, _log).run(pending)
            gather(plan, loaded)
    except Timeout:
        raise OutputError(
            f"another genrep-sweep is running in {folder}; wait for it or pass another --out"
        ) from None
    if failed:
        raise UserError(
            f"{len(failed)} job(s) failed and {waiting} wait on them (logs named above); "
            "fix the cause and rerun the same command to continue"
        )


if __name__ == "__main__":
    main()
