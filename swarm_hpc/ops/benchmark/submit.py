"""The benchmark as a SLURM job array: render swarm_hpc/templates/jobs/bench-array.sbatch.j2, submit it, wait for it.

Without --nodes the plan is one array job (one task per model, on whichever node SLURM picks; `exclusive` gives
each task a node to itself). With --nodes there is one array job per node, pinned with --nodelist and limited
to one running task at a time (`%1`), so that models measured on the same board never slow each other down;
its array range is that node's slice of the plan's task list, so SLURM_ARRAY_TASK_ID indexes the plan.

Each task writes into the run directory itself, so the run directory, the python running swarm-hpc and the
model files must be at the same paths on every node (shared storage, as on a cluster with an NFS home).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from swarm_hpc.atomic import atomic_write_json
from swarm_hpc.errors import UserError
from swarm_hpc.jinja import render_job
from swarm_hpc.ops.benchmark.plan import JOBS, LOGS, RAW, Plan
from swarm_hpc.slurm.commands import run_tool, sbatch
from swarm_hpc.slurm.executor import SlurmJob

TEMPLATE = "bench-array.sbatch.j2"


@dataclass(frozen=True)
class ArrayJob:
    node: str | None
    first: int
    last: int
    script: str


def array_jobs(plan: Plan, run_dir: Path, python: str = sys.executable) -> list[ArrayJob]:
    """One rendered array script per node (or one for any node)."""
    jobs = []
    groups: dict[str | None, list[int]] = {}
    for t in plan.tasks:
        groups.setdefault(t.node, []).append(t.index)
    s = plan.slurm
    for node, indexes in groups.items():
        first, last = min(indexes), max(indexes)
        assert indexes == list(range(first, last + 1)), "a node's tasks must be contiguous"
        cpus = max(plan.runs[plan.tasks[i].model].threads for i in indexes)
        script = render_job(TEMPLATE, job_name=s["job_name"], array=f"{first}-{last}" + ("%1" if node else ""),
                        cpus=cpus, time=s["time"], output=str(Path(run_dir).resolve() / LOGS / "%A_%a.out"),
                        run_dir=str(Path(run_dir).resolve()), node=node, partition=s.get("partition"),
                        mem=s.get("mem"), exclusive=s.get("exclusive", True), extra=s.get("extra", []),
                        python=python)
        jobs.append(ArrayJob(node, first, last, script))
    return jobs


def check(jobs: list[ArrayJob]) -> None:
    """`sbatch --test-only` each script: no cluster, a bad partition or node is a UserError before anything is made."""
    for job in jobs:
        run_tool("sbatch", "--test-only", input=job.script)


def submit(plan: Plan, run_dir: Path, python: str = sys.executable) -> list[int]:
    """Submit every array job; their ids go to RUN_DIR/jobs.json."""
    ids: list[int] = []
    rendered = array_jobs(plan, run_dir, python)
    records = []
    for job in rendered:
        job_id = sbatch(job.script)
        ids.append(job_id)
        records.append({"job_id": job_id, "node": job.node, "array": f"{job.first}-{job.last}"})
        atomic_write_json(Path(run_dir) / JOBS, records)  # after each one: a later failure keeps what was submitted
    return ids


def results_written(plan: Plan, run_dir: Path) -> int:
    raw = Path(run_dir) / RAW
    return sum(1 for t in plan.tasks if any(raw.glob(f"{t.index:03d}-*.json")))


def wait(plan: Plan, run_dir: Path, job_ids: list[int], timeout: float | None = None, poll: float = 2.0,
         on_update: Callable[[int, int], None] | None = None) -> None:
    """Wait until every task has written its result or none of the jobs is pending or running any more."""
    start = time.monotonic()
    last = -1
    jobs = [SlurmJob(str(job_id)) for job_id in job_ids]
    while True:
        done = results_written(plan, run_dir)
        if done != last and on_update:
            on_update(done, len(plan.tasks))
        last = done
        if done == len(plan.tasks) or all(job.done() for job in jobs):
            return
        if timeout and time.monotonic() - start > timeout:
            raise UserError("--wait", f"the benchmark jobs {', '.join(map(str, job_ids))} did not finish within "
                            f"{timeout:g} s", f"check them with squeue; `swarm-hpc bench report {run_dir}` "
                            "assembles what has finished")
        time.sleep(poll)
