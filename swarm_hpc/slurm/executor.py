"""Swarms as SLURM jobs behind the executor interface (swarm_hpc/executor.py): `SlurmExecutor.submit(job)`
returns a `SlurmJob` handle. Handles never ask SLURM themselves: every handle of the process reads one shared
`JobWatcher` (`WATCHER`), which lists the queue at most once per `interval` and answers every job from that one
listing (submitit's SlurmInfoWatcher), so ten handles waiting cost SLURM what one does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from swarm_hpc.errors import UserError
from swarm_hpc.executor import FINISHED, Executor, Job
from swarm_hpc.slurm import index
from swarm_hpc.slurm.commands import run_tool, sbatch
from swarm_hpc.slurm.monitor import JobInfo, Monitor, choose


class BatchJob(Protocol):
    """What `SlurmExecutor.submit` needs of a job: a swarm (swarm_hpc/slurm/job.py) or a federated job
    (swarm_hpc/fed/job.py)."""

    @property
    def out_dir(self) -> Path: ...
    @property
    def spec_path(self) -> Path: ...
    @property
    def run_dir(self) -> Path | None: ...
    @property
    def log_path(self) -> Path: ...
    @property
    def array(self) -> str | None: ...
    def script(self) -> str: ...


CANCEL_TIMEOUT = 30.0  # cancel(): seconds to wait for SLURM to say the job has ended


@dataclass(eq=False)
class JobWatcher:
    """Job state for every handle of the process. The queue (`monitor.jobs()`) is read at most once per
    `interval` seconds; a job it no longer lists is looked up in SLURM's record of ended jobs, at most once per
    `interval` for that job, and an answer found there is kept (it cannot change any more)."""

    monitor: Monitor | None = None  # None: chosen on first use (pyslurm or the command-line tools)
    interval: float = 1.0
    clock: Callable[[], float] = time.monotonic
    reason: str = "given"  # how job state is read (`status -v`)
    _listing: list[JobInfo] = field(default_factory=list, init=False, repr=False)
    _listed_at: float = field(default=float("-inf"), init=False, repr=False)
    _history: dict[str, tuple[float, JobInfo | None]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _monitor(self) -> Monitor:
        if self.monitor is None:
            self.monitor, self.reason = choose()
        return self.monitor

    def jobs(self) -> list[JobInfo]:
        """Every job in the queue, as of at most `interval` seconds ago."""
        with self._lock:
            if self.clock() - self._listed_at >= self.interval:
                self._listing = self._monitor().jobs()
                self._listed_at = self.clock()
            return self._listing

    def tasks(self, job_id: str) -> list[JobInfo]:
        """The queue's entries of a job: the job itself, or the tasks `<id>_<n>` of an array job."""
        return [j for j in self.jobs() if j.job == job_id or j.job.startswith(f"{job_id}_")]

    def history(self, job_id: str) -> JobInfo | None:
        with self._lock:
            asked, info = self._history.get(job_id, (float("-inf"), None))
            if info is None and self.clock() - asked >= self.interval:
                info = self._monitor().history(job_id)
                self._history[job_id] = (self.clock(), info)
            return info


WATCHER = JobWatcher()  # the one watcher of this process


def combined_state(states: list[str]) -> str:
    """One state for a job's entries (every task of an array): COMPLETED only when every one completed."""
    if all(s in FINISHED for s in states):
        failed = sorted(set(states) - {"COMPLETED"})
        return failed[0] if failed else "COMPLETED"
    return "RUNNING" if "RUNNING" in states else next(s for s in states if s not in FINISHED)


@dataclass(eq=False)
class SlurmJob(Job):
    """A SLURM job (an array job stands for all its tasks; `<id>_<n>` is one task). `seen`: SLURM has listed it,
    so when the queue no longer does, its record of ended jobs is asked; before that (just after sbatch, or a
    listing taken before it) the job counts as PENDING. A job SLURM has no record of any more is UNKNOWN."""

    job_id: str
    watcher: JobWatcher = field(default_factory=lambda: WATCHER)
    seen: bool = False

    final_states: ClassVar[frozenset[str]] = FINISHED | {"UNKNOWN"}
    wait_fix: ClassVar[str] = "wait longer (--timeout) or check `swarm-hpc status`"

    @property
    def id(self) -> str:
        return self.job_id

    @property
    def poll_interval(self) -> float:
        return self.watcher.interval

    def _record(self, job_id: str) -> dict:
        """The job index's record, unless SLURM lists this job id as submitted at another time (an older job's)."""
        rec = index.lookup(job_id) or {}
        info = next((j for j in self.infos() if j.job == job_id or j.job.startswith(f"{job_id}_")), None)
        return rec if info is None or index.belongs(rec, info.submit, info.restarts) else {}

    @property
    def run_dir(self) -> Path | None:
        """Recorded by the job script once it has made (or, after a requeue, found) the run directory."""
        rec = self._record(self.job_id)
        return Path(rec["run_dir"]) if rec.get("run_dir") else None

    @property
    def log(self) -> Path | None:
        """Recorded at submission (a task's: the array's, `%a` filled in); else what SLURM says."""
        log = self._record(self.job_id).get("log")
        if not log and "_" in self.job_id:
            array_job, task = self.job_id.split("_", 1)
            log = (self._record(array_job).get("log") or "").replace("%a", task) or None
        if not log:
            log = next((j.log for j in self.infos() if j.job == self.job_id), None)
        return Path(log) if log else None

    def infos(self) -> list[JobInfo]:
        """What SLURM says about the job (an array: about each task): the queue, else its record of ended jobs."""
        tasks = self.watcher.tasks(self.job_id)
        if tasks:
            self.seen = True
            return tasks
        info = self.watcher.history(self.job_id) if self.seen else None
        return [info] if info else []

    def state(self) -> str:
        infos = self.infos()
        if not infos:
            return "UNKNOWN" if self.seen else "PENDING"
        return combined_state([j.state for j in infos])

    @property
    def nodes(self) -> str:
        return ",".join(dict.fromkeys(j.nodes for j in self.infos() if j.nodes))

    def cancel(self) -> None:
        """scancel, then wait (at most CANCEL_TIMEOUT seconds) until SLURM says the job has ended."""
        run_tool("scancel", self.job_id)
        for _ in self.follow(self.poll_interval, CANCEL_TIMEOUT):
            pass


@dataclass
class SlurmExecutor(Executor):
    watcher: JobWatcher = field(default_factory=lambda: WATCHER)

    def submit(self, job: BatchJob) -> SlurmJob:
        """sbatch the job's script and record the job (spec, log, run directory) in the job index."""
        job.out_dir.mkdir(parents=True, exist_ok=True)
        job_id = str(sbatch(job.script(), f"--output={job.log_path}"))
        log = str(job.log_path).replace("%j", job_id).replace("%A", job_id)
        index.record(job_id, fresh=True, spec=job.spec_path, log=log, run_dir=job.run_dir, submitted=time.time(),
                     array=job.array, submit_time=index.submit_time(job_id))
        return SlurmJob(job_id, self.watcher)

    def job(self, job_id: str) -> SlurmJob:
        """A handle for a job submitted before (or by hand); a UserError when SLURM does not know it."""
        handle = SlurmJob(job_id, self.watcher, seen=True)
        if not handle.infos():
            raise UserError(f"job {job_id}", "SLURM does not know this job",
                            "give a job id that `swarm-hpc status` lists")
        return handle
