"""`swarm-hpc index build --submit`: an index build as a SLURM batch job (templates/jobs/index.sbatch.j2).

The job's folder sits next to the index, `.<index name>.jobs/`: the build plan of each submission (what every
rank reads) and the job's log. The job runs in the folder it was submitted from, so the files' paths (the chunks'
sources) are the ones given to `build`; the job index records the folder, so `swarm-hpc status` and `swarm-hpc
logs JOBID` find it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from swarm_hpc.jinja import render_job
from swarm_hpc.knowledge.build import BuildPlan
from swarm_hpc.slurm import index
from swarm_hpc.slurm.commands import sbatch

TEMPLATE = "index.sbatch.j2"


@dataclass(frozen=True)
class IndexJob:
    plan: BuildPlan
    ranks: int
    time: str = "1:00:00"
    partition: str | None = None
    mpi: str = "pmix"
    python: str = sys.executable
    workdir: Path = Path(".")

    @property
    def folder(self) -> Path:
        out = (self.workdir / self.plan.out).absolute()
        return out.parent / f".{out.name}.jobs"

    def script(self, plan_file: Path) -> str:
        return render_job(TEMPLATE, None, job_name=f"index-{Path(self.plan.out).name}"[:64],
                          partition=self.partition, ntasks=self.ranks, cpus_per_task=self.plan.threads,
                          time=self.time, log_path=str(self.folder / "slurm-%j.log"),
                          workdir=str(self.workdir.absolute()), python=self.python, plan=str(plan_file),
                          mpi=self.mpi, folder=self.plan.folder, out=self.plan.out)


def submit(job: IndexJob) -> str:
    """Write the plan, sbatch the script, record the job; its id."""
    job.folder.mkdir(parents=True, exist_ok=True)
    plan_file = job.folder / f"plan-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.json"
    job.plan.save(plan_file)
    job_id = str(sbatch(job.script(plan_file)))
    index.record(job_id, fresh=True, log=str(job.folder / f"slurm-{job_id}.log"), run_dir=job.folder,
                 submitted=time.time(), submit_time=index.submit_time(job_id))
    return job_id
