"""Job state from SLURM: pyslurm where it is installed and matches the running Slurm, else the command-line
tools (squeue --json; for jobs squeue has forgotten, `sacct -c` on the job-completion log). `choose()` picks
one and says why (shown by --verbose). Job handles do not call a monitor themselves: they share one
rate-limited `JobWatcher` (swarm_hpc/slurm/executor.py).
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from swarm_hpc.slurm import index
from swarm_hpc.slurm.commands import run_tool, squeue_jobs


@dataclass(frozen=True)
class JobInfo:
    job: str            # "123", or "123_4" for an array task
    name: str
    state: str
    nodes: str
    partition: str
    start: int          # epoch seconds, 0 if not started
    end: int
    reason: str
    log: str | None
    submit: int = 0     # SLURM's submit time (epoch seconds; a requeue moves it on), 0 if not known
    restarts: int = 0   # how often the job was requeued

    def record(self) -> dict[str, Any]:
        """The job index's record of this job; {} when there is none, or it is of an older job with this id."""
        rec = index.lookup(self.job) or {}
        return rec if index.belongs(rec, self.submit, self.restarts) else {}

    @property
    def run_dir(self) -> Path | None:
        rec = self.record()
        return Path(rec["run_dir"]) if rec.get("run_dir") else None


class Monitor(Protocol):
    name: str

    def jobs(self) -> list[JobInfo]:
        """Every job the queue lists (running, pending, and ended ones within MinJobAge), in one call."""
        ...

    def history(self, job: str) -> JobInfo | None:
        """A job the queue no longer lists, from SLURM's record of ended jobs (None: no such record)."""
        ...


def _num(v: Any) -> int:
    """squeue 22.05 gives plain numbers; later releases give {"set": .., "number": ..}."""
    if isinstance(v, dict):
        return int(v.get("number", 0)) if v.get("set", True) else 0
    return int(v or 0)


def _state(v: Any) -> str:
    if isinstance(v, list):
        return v[0] if v else "UNKNOWN"
    return str(v or "UNKNOWN")


def expand_log(pattern: str | None, job: dict[str, Any]) -> str | None:
    """An squeue job's --output pattern with SLURM's replacements filled in (%j, %A, %a, %x, %u; %% is a %)."""
    if not pattern:
        return None
    task = job.get("array_task_id")
    fill = {"j": str(_num(job.get("job_id"))), "A": str(_num(job.get("array_job_id")) or _num(job.get("job_id"))),
            "a": str(_num(task)) if isinstance(task, (int, dict)) else "4294967294", "x": str(job.get("name", "")),
            "u": str(job.get("user_name", "")), "%": "%"}
    return re.sub(r"%(\d*)([jAaxu%])", lambda m: fill[m.group(2)].zfill(int(m.group(1) or 0)), pattern)


class CliMonitor:
    name = "squeue/sacct command-line tools"

    def jobs(self) -> list[JobInfo]:
        out = []
        for j in squeue_jobs():
            task = j.get("array_task_id")
            task_id = _num(task) if task not in (None, "") else None
            array_job = _num(j.get("array_job_id"))
            key = f"{array_job}_{task_id}" if array_job and task_id is not None and not isinstance(task, str) else str(_num(j["job_id"]))
            out.append(JobInfo(key, j.get("name", ""), _state(j.get("job_state")), j.get("nodes", "") or "",
                               j.get("partition", ""), _num(j.get("start_time")), _num(j.get("end_time")),
                               j.get("state_reason", "") or "",
                               expand_log(j.get("standard_output"), j), _num(j.get("submit_time")),
                               _num(j.get("restart_cnt"))))
        return out

    def history(self, job: str) -> JobInfo | None:
        """A job squeue no longer lists: its line in the job-completion log (`sacct -c`)."""
        try:
            out = run_tool("sacct", "-c", "-n", "-P", "-j", job.split("_")[0], "-o", "jobid,jobname,state,nodelist,partition")
        except Exception:
            return None
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) >= 5 and parts[0] in (job, job.split("_")[0]):
                rec = index.lookup(job) or {}
                return JobInfo(job, parts[1], parts[2].split()[0], parts[3], parts[4], 0, 0, "", rec.get("log"))
        return None


class PySlurmMonitor:
    """pyslurm >= 23 (`pyslurm.Jobs.load()`, attribute names as in pyslurm/core/job/job.pyx of the 25.11 line):
    used only where its release matches the running Slurm. Not exercised here: PyPI has no pyslurm for the
    Debian 12 Slurm (22.05) these tests run on."""

    name = "pyslurm"

    def jobs(self) -> list[JobInfo]:
        import pyslurm

        out = []
        for j in pyslurm.Jobs.load().values():
            key = f"{j.array_id}_{j.array_task_id}" if j.array_id and j.array_task_id is not None else str(j.id)
            out.append(JobInfo(key, j.name or "", str(j.state), j.allocated_nodes or "", j.partition or "",
                               int(j.start_time or 0), int(j.end_time or 0), str(j.state_reason or ""), j.standard_output))
        return out

    def history(self, job: str) -> JobInfo | None:
        return None  # pyslurm.Jobs.load() lists ended jobs as long as slurmctld keeps them


def choose() -> tuple[Monitor, str]:
    """pyslurm when it is importable and built for the running Slurm; the CLI tools otherwise. Returns the
    monitor and the reason. pyslurm is never imported before both are checked: libslurm reads slurm.conf at
    import and ends the process when there is none."""
    if importlib.util.find_spec("pyslurm") is None:
        return CliMonitor(), "pyslurm is not installed (PyPI has it only for Slurm 25.11): using squeue/sacct"
    running = _slurm_version()
    built = _pyslurm_version()
    if running and built and running[:2] == built[:2]:
        return PySlurmMonitor(), f"pyslurm {'.'.join(built)} matches Slurm {'.'.join(running)}"
    return CliMonitor(), (f"pyslurm {'.'.join(built or ('?',))} does not match the running Slurm "
                          f"{'.'.join(running or ('?',))}: using squeue/sacct")


def _slurm_version() -> tuple[str, ...] | None:
    try:
        m = re.search(r"(\d+)\.(\d+)\.(\d+)", run_tool("sinfo", "--version"))
    except Exception:
        return None
    return m.groups() if m else None


def _pyslurm_version() -> tuple[str, ...] | None:
    try:
        from importlib.metadata import version

        m = re.match(r"(\d+)\.(\d+)\.(\d+)", version("pyslurm"))
    except Exception:
        return None
    return m.groups() if m else None


def progress(run_dir: Path | None) -> dict[str, Any]:
    """The swarm's own progress, from its run directory's summary.json."""
    if run_dir is None:
        return {}
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
