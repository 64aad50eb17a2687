"""Run a plan's jobs on this machine: each job is a stage command in its own process, started once
the jobs it needs have succeeded, several at a time (`--jobs`), each on a device of `--devices`.

Jobs whose output is already complete are skipped, and every stage resumes by itself, so rerunning
a sweep after a crash or a kill continues where it stopped. A failed job is reported with its log
and its dependents are left for the next run; the other jobs go on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from genrep.errors import one_line
from genrep.options import available_cpus
from genrep.sweep.plan import LOGS, Job, Plan

#: how this machine runs a stage command
LOCAL_LAUNCHER = (sys.executable, "-m", "genrep.cli")
#: jobs of later stages first: a cell is finished (and safe from a kill) as early as possible
PRIORITY = {"probe": 0, "train": 1, "generate": 2}


def pending_jobs(plan: Plan) -> list[Job]:
    """The jobs still to run: those with an unfinished output that an unfinished cell needs."""
    open_cells = {cell.index for cell in plan.cells if not cell.report.finished()}
    return [
        job
        for job in plan.jobs.values()
        if open_cells.intersection(job.cells) and not job.finished()
    ]


@dataclass
class Outcome:
    job: Job
    returncode: int
    seconds: float
    log: Path


@dataclass
class Slots:
    """Places a job can run in: one per --jobs, each with its device (None: the stage default)."""

    devices: list[str | None]
    free: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.free = list(range(len(self.devices)))


class LocalRunner:
    """Runs jobs as child processes; the children end with the sweep when it is interrupted."""

    def __init__(self, plan: Plan, slots: Slots, log: Callable[[str], None]) -> None:
        self.plan, self.slots, self.log = plan, slots, log
        self.processes: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def command(self, job: Job, device: str | None) -> list[str]:
        return [*LOCAL_LAUNCHER, *job.argv, *(["--device", device] if device else [])]

    def env(self) -> dict[str, str]:
        """The children's environment: jobs sharing the machine share its cores."""
        env = dict(os.environ)
        jobs = len(self.slots.devices)
        if jobs > 1 and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, available_cpus() // jobs))
        return env

    def run_job(self, job: Job, device: str | None) -> Outcome:
        """One job in a child process, its output in SWEEP/logs/<job>.log."""
        log_path = self.plan.folder / LOGS / f"{job.id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(self.command(job, device))}\n".encode())
            log.flush()
            process = subprocess.Popen(
                self.command(job, device), stdout=log, stderr=subprocess.STDOUT, env=self.env()
            )
            with self.lock:
                self.processes.add(process)
            try:
                returncode = process.wait()
            finally:
                with self.lock:
                    self.processes.discard(process)
        return Outcome(job, returncode, time.perf_counter() - started, log_path)

    def stop_children(self) -> None:
        with self.lock:
            for process in self.processes:
                process.terminate()
        for process in list(self.processes):
            process.wait()

    def run(self, jobs: list[Job]) -> tuple[list[Outcome], int]:
        """Run `jobs` in dependency order; returns the failed ones and how many jobs were left
        waiting on them."""
        todo = {job.id: job for job in jobs}
        done: set[str] = {j.id for j in self.plan.jobs.values() if j.id not in todo}
        failed: list[Outcome] = []
        running: dict[Future, tuple[Job, int]] = {}
        total = len(todo)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        pool = ThreadPoolExecutor(max_workers=len(self.slots.devices))
        try:
            while todo or running:
                ready = sorted(
                    (job for job in todo.values() if all(a in done for a in job.after)),
                    key=lambda job: PRIORITY[job.stage],
                )
                while ready and self.slots.free:
                    job, slot = ready.pop(0), self.slots.free.pop(0)
                    del todo[job.id]
                    device = self.slots.devices[slot]
                    where = f" on {device}" if device else ""
                    number = total - len(todo)
                    self.log(f"[{number}/{total}] {job.stage} {job.out.name}{where}")
                    running[pool.submit(self.run_job, job, device)] = (job, slot)
                if not running:
                    break  # what is left waits on a failed job
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    job, slot = running.pop(future)
                    self.slots.free.append(slot)
                    outcome = future.result()
                    if outcome.returncode == 0:
                        done.add(job.id)
                        self.log(f"done {job.stage} {job.out.name} ({outcome.seconds:.0f}s)")
                    else:
                        failed.append(outcome)
                        self.log(
                            f"FAILED {job.stage} {job.out.name} (exit {outcome.returncode}): "
                            f"{last_line(outcome.log)}; log: {outcome.log}"
                        )
        except KeyboardInterrupt:
            self.stop_children()
            raise
        finally:
            pool.shutdown(wait=True)
            signal.signal(signal.SIGTERM, previous)
        return failed, len(todo)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def last_line(log: Path) -> str:
    """The last non-empty line of a job's log: its one-line error, as a rule."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return one_line(lines[-1]) if lines else "no output"


def make_slots(jobs: int | None, devices: list[str]) -> Slots:
    """`--jobs N` places, each given a device of `--devices` in turn (default: one per device)."""
    count = jobs or max(1, len(devices))
    return Slots([devices[i % len(devices)] if devices else None for i in range(count)])
