"""What one SLURM array task runs: `python -m swarm_hpc.ops.benchmark.task RUN_DIR [--index N]`.

The task reads RUN_DIR/plan.json, takes its task by SLURM_ARRAY_TASK_ID (or --index), measures the node's
bandwidth and then the model in a subprocess (runner.run_task), writes RUN_DIR/raw/NNN-<model>-<node>.json and
prints its progress as plain lines into the job's output file. Exit code 0 when the model was measured, 1 when
it failed (the result file says why), 2 when the task itself cannot run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from swarm_hpc.errors import EXIT_USAGE, UserError
from swarm_hpc.ops.benchmark.plan import load_plan
from swarm_hpc.ops.benchmark.results import OK
from swarm_hpc.ops.benchmark.runner import Bandwidths, run_task


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swarm_hpc.ops.benchmark.task", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--index", type=int, help="task index (default: $SLURM_ARRAY_TASK_ID)")
    args = ap.parse_args(argv)
    try:
        plan = load_plan(args.run_dir)
        index = args.index if args.index is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
        if index is None:
            raise UserError("swarm_hpc.ops.benchmark.task", "no task index", "run it as a SLURM array task or give --index N")
        index = int(index)
        if not 0 <= index < len(plan.tasks):
            raise UserError(str(args.run_dir), f"task index {index} is not in the plan (0..{len(plan.tasks) - 1})",
                            "submit the array with `swarm-hpc bench models --submit`")
    except UserError as e:
        print(f"swarm-hpc: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    task = plan.tasks[index]
    run = plan.runs[task.model]
    job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', '')}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}".strip("_")

    def progress(event: dict[str, Any]) -> None:
        stage = event.get("stage")
        if stage == "rep":
            print(f"{run.name}: repetition {event['rep']}/{event['reps']}", flush=True)
        elif stage == "done":
            print(f"{run.name}: {event['status']} {event.get('error') or ''}".rstrip(), flush=True)
        elif stage in ("bandwidth", "probe"):
            print(f"{run.name}: {stage}", flush=True)

    result = run_task(plan, task, args.run_dir, Bandwidths(), progress, slurm_job=job)
    return 0 if result.status == OK else 1


if __name__ == "__main__":
    sys.exit(main())
