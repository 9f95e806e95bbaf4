"""Which run directory and log belong to which SLURM job: a small JSON file per job id.

`swarm-hpc submit` records the log and spec; `swarm-hpc prepare` (run by the job script itself, so scripts
submitted by hand with sbatch are found too) records the run directory. Kept in $SWARM_HPC_STATE or
~/.cache/swarm-hpc/jobs.
"""

from __future__ import annotations

import json
import os
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
