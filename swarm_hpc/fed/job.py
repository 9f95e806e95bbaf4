"""A federated run as a SLURM batch job (`swarm-hpc fed submit`): the run directory (snapshot, data shards,
baseline) is made at submit, on storage every node sees; the script's srun starts `python -m swarm_hpc.fed.rank
RUN_DIR --resume` on clients + 1 ranks, so a requeued job continues after its last checkpointed round."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from swarm_hpc.fed.spec import FedSpec
from swarm_hpc.jinja import render_job
from swarm_hpc.slurm.job import stop_times

TEMPLATE = "fed.sbatch.j2"
MEM_PER_CPU = "400M"  # a rank: Python, numpy, mpi4py and its shard (the digits model is a few kB)


@dataclass(frozen=True)
class FedJob:
    """Everything fed.sbatch.j2 needs; `script()` renders it (SlurmExecutor.submit takes it like a SwarmJob)."""

    spec: FedSpec
    spec_path: Path          # absolute
    run_dir: Path            # made at submit (fed/prepare.py)
    python: str = sys.executable
    templates_dir: Path | None = None

    @property
    def out_dir(self) -> Path:
        return self.run_dir.parent

    @property
    def log_path(self) -> Path:
        return self.run_dir / "slurm-%j.log"

    @property
    def array(self) -> None:
        return None

    def values(self) -> dict:
        s = self.spec.slurm
        warn, _ = stop_times(self.spec.round_timeout, s.time)
        return {
            "spec_name": self.spec_path.name, "fed_name": self.spec.name, "clients": self.spec.clients,
            "rounds": self.spec.rounds, "strategy": self.spec.strategy,
            "job_name": s.job_name or f"fed-{self.spec.name}", "partition": s.partition,
            "ntasks": self.spec.ranks_needed, "nodes": s.nodes, "ntasks_per_node": s.ntasks_per_node,
            "mem_per_cpu": s.mem_per_cpu or MEM_PER_CPU, "time": s.time, "requeue": s.requeue, "extra": s.extra,
            "log_path": str(self.log_path), "warn_seconds": warn, "mpi": s.mpi,
            "python": self.python, "run_dir": str(self.run_dir),
        }

    def script(self) -> str:
        return render_job(TEMPLATE, self.templates_dir, **self.values())
