"""A swarm spec as a SLURM batch job: the script you can print before you submit it (dask-jobqueue's way).

One rank per expert, or per group of experts that share a model (SwarmSpec.rank_groups): ntasks = the ranks the
spec needs, cpus-per-task = the most llama.cpp threads any rank needs (a group: its experts' together), nodes
and tasks per node as the spec's [slurm] table says. The script's srun starts the same
entry point as a local run, `python -m swarm_hpc.mpi.rank RUN_DIR`.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.errors import UserError
from swarm_hpc.experts.preflight import job_mem_per_cpu
from swarm_hpc.jinja import render_job

TEMPLATE = "swarm.sbatch.j2"
SERVE_TEMPLATE = "serve.sbatch.j2"   # `swarm-hpc serve --submit`: the swarm as a service (swarm_hpc/serve)
CHAT_TEMPLATE = "chat.sh.j2"
STOP_MARGIN = 15  # seconds to record a round, stop the ranks and exit; and again to requeue the job


def time_limit_seconds(limit: str) -> int:
    """A SLURM time limit ("MM", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS") in seconds."""
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        h, m, sec = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, sec = parts
    else:
        h, m, sec = 0, parts[0], (parts[1] if len(parts) > 1 else 0)
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + sec


def stop_times(round_timeout: float, limit: str) -> tuple[int, int]:
    """(warn, within): SLURM signals the job `warn` s before its time limit; rank 0 then has `within` s to end the
    round in flight (round_timeout plus rank 0's grace, plus STOP_MARGIN to record it). A short limit gets at
    most half of it as warning, and the round in flight may then be given up."""
    within = int(round_timeout + max(1.0, 0.1 * round_timeout)) + 1 + STOP_MARGIN
    warn = min(within + STOP_MARGIN, max(time_limit_seconds(limit) // 2, 2 * STOP_MARGIN // 3), 65535)
    return warn, max(warn - STOP_MARGIN, 5)


@dataclass(frozen=True)
class SwarmJob:
    """Everything the batch template needs; `script()` renders it."""

    spec: SwarmSpec
    spec_path: Path              # absolute
    out_dir: Path                # where run directories and logs go (absolute)
    python: str = sys.executable
    run_dir: Path | None = None  # fixed run directory (resubmitting with --resume); else one per job id
    tasks_file: Path | None = None   # one array task per line: the task each swarm works on
    templates_dir: Path | None = None
    eval_shards: int | None = None   # `swarm-hpc eval --submit`: run_dir is the eval folder, one array task a shard
    serve: bool = False              # `swarm-hpc serve --submit`: run_dir is the service folder

    def __post_init__(self) -> None:
        if (self.eval_shards is not None or self.serve) and self.run_dir is None:
            raise ValueError("an eval or service job needs its folder as run_dir")

    @property
    def job_name(self) -> str:
        kind = "eval" if self.eval_shards else "serve" if self.serve else "swarm"
        return self.spec.slurm.job_name or f"{kind}-{self.spec_path.stem}"

    @property
    def array(self) -> str | None:
        if self.eval_shards is not None:
            return f"0-{self.eval_shards - 1}"
        if self.tasks_file is None:
            return None
        n = len(read_tasks(self.tasks_file))
        return f"0-{n - 1}"

    def run_dir_for(self, job_id: str) -> Path:
        """The run directory the script makes for this job id (arrays: one per task, `<id>_<task>`)."""
        return self.run_dir or self.out_dir / f"slurm-{job_id}-{_safe_stem(self.spec_path.stem)}"

    @property
    def log_name(self) -> str:
        return f"slurm-{'%A_%a' if self.tasks_file else '%j'}-{self.spec_path.stem}.log"

    @property
    def log_path(self) -> Path:
        """Where `submit` puts the log (it makes the folder first, and gives sbatch this path)."""
        if self.run_dir is not None:
            return self.run_dir / ("slurm-%A_%a.log" if self.eval_shards else "slurm-%j.log")
        return self.out_dir / self.log_name

    @property
    def script_log(self) -> str:
        """The script's own --output: relative (the folder sbatch runs in, which exists) unless the folder is the
        existing run directory of a resumed run. SLURM fails a job whose log folder is missing, with no log."""
        return str(self.log_path) if self.run_dir is not None else self.log_name

    def snapshot(self) -> str:
        """spec.json's content, made now: the job runs this spec, whatever happens to the spec file meanwhile."""
        return json.dumps({"spec_path": str(self.spec_path), "spec_dir": str(self.spec_path.parent),
                           "spec": self.spec.model_dump(mode="json")}, indent=1, ensure_ascii=False)

    def mem_per_cpu(self) -> str:
        """The spec's [slurm] mem_per_cpu, else what the neediest rank needs (experts/preflight.py), per CPU."""
        if self.spec.slurm.mem_per_cpu:
            return self.spec.slurm.mem_per_cpu
        return job_mem_per_cpu(self.spec, self.spec_path.parent, self.cpus_per_task, str(self.spec_path))

    @property
    def cpus_per_task(self) -> int:
        return max(self.spec.rank_threads(g) for g in self.spec.rank_groups())

    def values(self) -> dict:
        s = self.spec.slurm
        warn, within = stop_times(self.spec.round_timeout, s.time)
        return {
            "spec_name": self.spec_path.name, "spec_stem": _safe_stem(self.spec_path.stem),
            "strategy": self.spec.strategy, "experts": len(self.spec.experts), "rounds": self.spec.rounds,
            "job_name": self.job_name, "partition": s.partition, "ntasks": self.spec.ranks_needed,
            "cpus_per_task": self.cpus_per_task, "nodes": s.nodes,
            "ntasks_per_node": s.ntasks_per_node, "mem_per_cpu": self.mem_per_cpu(), "time": s.time,
            "requeue": s.requeue, "array": self.array, "extra": s.extra, "log_path": str(self.log_path),
            "script_log": self.script_log, "snapshot": self.snapshot(),
            "warn_seconds": warn, "stop_within": within,
            "spec_path": str(self.spec_path), "out_dir": str(self.out_dir), "python": self.python,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "tasks_file": str(self.tasks_file) if self.tasks_file else None, "mpi": s.mpi,
            "eval_shards": self.eval_shards,
        }

    def script(self) -> str:
        return render_job(SERVE_TEMPLATE if self.serve else TEMPLATE, self.templates_dir, **self.values())

    def chat_script(self, command: list[str], pty: bool) -> str:
        """An interactive session (`swarm-hpc chat`): srun with the batch job's resources and placement."""
        values = self.values() | {"job_name": self.spec.slurm.job_name or f"chat-{self.spec_path.stem}"}
        return render_job(CHAT_TEMPLATE, self.templates_dir, **values, command=command, pty=pty)


def _safe_stem(stem: str) -> str:
    """The spec's file name as part of a run directory name (the rest of the name is SLURM's job id)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:64] or "spec"


def read_tasks(path: Path) -> list[str]:
    """A tasks file: one task per non-empty line (lines starting with # are comments)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(str(path), f"cannot read the tasks file: {e.strerror}", "give a text file with one task per line") from None
    tasks = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tasks:
        raise UserError(str(path), "the tasks file has no tasks", "write one task per line")
    return tasks
