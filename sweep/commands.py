"""The jobs of a sweep as shell commands for a cluster scheduler, instead of running them here.

`--print-commands` writes SWEEP/commands/:

    generate.txt, train.txt, probe.txt   one self-contained command per line (line i = task i)
    jobs.tsv                             stage, task, job, the jobs it needs, command
    run-task.sh STAGE [TASK]             runs line TASK of STAGE.txt (default $SLURM_ARRAY_TASK_ID)
    submit-slurm.sh                      three job arrays, each stage after the previous succeeded

and prints a script that runs every command in dependency order on one machine. Only unfinished
jobs are listed, so printing again after a partial run gives the work that is left; once the jobs
ran, `genrep-sweep EXPERIMENT --collect` gathers the results from the same folder.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from genrep.io import atomic_write_bytes
from genrep.sweep.experiment import STAGES
from genrep.sweep.plan import Job, Plan

COMMANDS = "commands"
#: how a cluster node runs a stage command (the installed entry point)
LAUNCHER = ("genrep",)

RUN_TASK = """#!/usr/bin/env bash
# Usage: run-task.sh STAGE [TASK]. Runs line TASK (from 0; default $SLURM_ARRAY_TASK_ID) of
# STAGE.txt beside this script: one genrep command of the sweep.
set -euo pipefail
stage=$1
task=${2:-${SLURM_ARRAY_TASK_ID:?pass TASK or run as a Slurm array task}}
command=$(sed -n "$((task + 1))p" "$(dirname "$0")/$stage.txt")
[ -n "$command" ] || { echo "no task $task in $stage.txt" >&2; exit 2; }
echo "+ $command" >&2
eval "exec $command"
"""

SUBMIT_HEAD = """#!/usr/bin/env bash
# Submits the sweep as Slurm job arrays, one per stage: every task of a stage starts once all
# tasks of the stage before it succeeded (generate -> train -> probe; jobs.tsv lists which job
# each task needs). Put partition, GPUs and time limits in SBATCH_OPTIONS, e.g.
#   SBATCH_OPTIONS="--partition gpu --gres gpu:1 --time 48:00:00" bash submit-slurm.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
after=""
"""


def command_line(job: Job) -> str:
    return shlex.join([*LAUNCHER, *job.argv])


def submit_script(tasks: dict[str, list[Job]]) -> str:
    """Job arrays for the stages that have tasks, chained with afterok dependencies."""
    lines = [SUBMIT_HEAD]
    for stage, jobs in tasks.items():
        if not jobs:
            continue
        lines.append(
            f"id=$(sbatch --parsable ${{SBATCH_OPTIONS:-}} $after --job-name sweep-{stage} "
            f'--array=0-{len(jobs) - 1} "$here/run-task.sh" {stage})\n'
            f'echo "{stage}: job $id ({len(jobs)} tasks)"\n'
            'after="--dependency=afterok:${id%%;*}"\n'
        )
    return "".join(lines)


def jobs_table(tasks: dict[str, list[Job]]) -> str:
    rows = ["stage\ttask\tjob\tafter\tcommand"]
    for stage, jobs in tasks.items():
        for task, job in enumerate(jobs):
            rows.append(f"{stage}\t{task}\t{job.id}\t{','.join(job.after)}\t{command_line(job)}")
    return "\n".join(rows) + "\n"


def sequential_script(tasks: dict[str, list[Job]], plan: Plan) -> str:
    """Every command in dependency order, each after a comment naming the job it needs."""
    lines = ["#!/usr/bin/env bash", f"# genrep-sweep jobs of {plan.folder}", "set -euo pipefail"]
    for stage, jobs in tasks.items():
        if jobs:
            lines.append(f"# stage {STAGES.index(stage) + 1}: {stage} ({len(jobs)} jobs)")
        for task, job in enumerate(jobs):
            needs = f", after {', '.join(job.after)}" if job.after else ""
            lines += [f"# {stage} task {task}: {job.id}{needs}", command_line(job)]
    return "\n".join(lines) + "\n"


def write_commands(plan: Plan, jobs: list[Job]) -> tuple[Path, str]:
    """Write the command files for `jobs` into SWEEP/commands; returns the folder and the
    sequential script."""
    folder = plan.folder / COMMANDS
    folder.mkdir(parents=True, exist_ok=True)
    tasks = {stage: [job for job in jobs if job.stage == stage] for stage in STAGES}
    for stage, stage_jobs in tasks.items():
        text = "".join(command_line(job) + "\n" for job in stage_jobs)
        atomic_write_bytes(folder / f"{stage}.txt", text.encode())
    atomic_write_bytes(folder / "jobs.tsv", jobs_table(tasks).encode())
    for name, text in (("run-task.sh", RUN_TASK), ("submit-slurm.sh", submit_script(tasks))):
        atomic_write_bytes(folder / name, text.encode())
        (folder / name).chmod(0o755)
    return folder, sequential_script(tasks, plan)
