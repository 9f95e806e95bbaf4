"""Which run directory and log belong to which SLURM job: a small JSON file per job id.

`swarm-hpc submit` records the log and spec; `swarm-hpc prepare` (run by the job script itself, so scripts
submitted by hand with sbatch are found too) records the run directory. Kept in $SWARM_HPC_STATE or
~/.cache/swarm-hpc/jobs.

Job ids start again at 1 on a cluster with a new state, so a record also holds the job's SLURM submit time, and
a record whose submit time is not the job's is an older job's (see `belongs`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from swarm_hpc.atomic import atomic_write_json


def index_dir() -> Path:
    base = os.environ.get("SWARM_HPC_STATE")
    return Path(base) / "jobs" if base else Path.home() / ".cache" / "swarm-hpc" / "jobs"


def current_job_key() -> str | None:
    """This process's job, as squeue names it: 123, or 123_4 for task 4 of array job 123."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def record(job: str, fresh: bool = False, **fields: Any) -> None:
    """Add fields to a job's record; `fresh` starts a new one (job ids repeat on a re-created cluster)."""
    path = index_dir() / f"{job}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = {} if fresh else (lookup(job) or {})
    atomic_write_json(path, {**old, "job": job, **{k: str(v) if isinstance(v, Path) else v
                                                   for k, v in fields.items() if v is not None}})


def lookup(job: str) -> dict[str, Any] | None:
    try:
        return json.loads((index_dir() / f"{job}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def submit_time(job: str) -> int | None:
    """SLURM's submit time of a job (epoch seconds), from `scontrol show job`; None when it cannot be read."""
    try:
        out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for word in out.split():
        if word.startswith("SubmitTime="):
            try:
                return int(time.mktime(time.strptime(word.split("=", 1)[1], "%Y-%m-%dT%H:%M:%S")))
            except ValueError:
                return None
    return None


def identity() -> dict[str, Any]:
    """What tells this job (inside a job) from an older one of the same id: its submit time and cluster."""
    job = os.environ.get("SLURM_JOB_ID")
    return {"submit_time": submit_time(job) if job else None, "cluster": os.environ.get("SLURM_CLUSTER_NAME")}


def belongs(rec: dict[str, Any], submitted: int, restarts: int = 0) -> bool:
    """Whether a record is of the job SLURM lists as submitted at `submitted` (0: not known). A requeue moves a
    job's submit time on, so a requeued job's record may be older; a new job's must match."""
    mine = rec.get("submit_time")
    if not mine or not submitted:
        return True
    return abs(int(mine) - submitted) <= 1 or (restarts > 0 and int(mine) < submitted)


def record_in_job(job: str, run_dir: Path) -> None:
    """From inside the job (`swarm-hpc prepare`): its run directory and identity. A record left by an older job
    with this id (on an earlier cluster state) is replaced, not added to."""
    me = identity()
    old = lookup(job) or {}
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    record(job, fresh=not belongs(old, me["submit_time"] or 0, restarts), run_dir=run_dir, **me)
