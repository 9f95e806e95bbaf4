"""The run directory of a benchmark and its plan: one task per (model, node).

bench/results/<file stem>-<YYYYmmdd-HHMMSS>/
    plan.json        the file's settings per model (defaults applied), the nodes and the task list
    jobs.json        SLURM array job ids (--submit only)
    raw/NNN-<model>-<node>.json   one result per task, written atomically by the task itself
    logs/            SLURM output of each array task (--submit only)
    results.json, results.csv, report.md, plot.png    assembled by `swarm-hpc bench report`
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swarm_hpc.atomic import atomic_write_json
from swarm_hpc.errors import UserError
from swarm_hpc.ops.benchmark.config import BenchConfig, ModelRun, model_runs

PLAN = "plan.json"
JOBS = "jobs.json"
RAW = "raw"
LOGS = "logs"
NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Task:
    index: int                # SLURM_ARRAY_TASK_ID of the task
    model: int                # index into Plan.runs
    node: str | None          # the node it must run on (--nodes), else any node


@dataclass(frozen=True)
class Plan:
    config_path: str
    base_dir: str             # the folder relative model paths start from
    created: str
    mode: str                 # local | slurm
    runs: list[ModelRun]
    tasks: list[Task]
    nodes: list[str] = field(default_factory=list)
    slurm: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        return cls(**{**d, "runs": [ModelRun.from_dict(r) for r in d["runs"]],
                      "tasks": [Task(**t) for t in d["tasks"]]})


def this_node() -> str:
    import os

    return os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def parse_nodes(text: str | None) -> list[str]:
    """`--nodes blade01,blade02` as a list; a bad name is a UserError."""
    if not text:
        return []
    nodes = [n.strip() for n in text.split(",") if n.strip()]
    for n in nodes:
        if not NODE_RE.match(n):
            raise UserError("--nodes", f"{n!r} is not a node name", "give node names separated by commas, e.g. --nodes blade01,blade02")
    if len(set(nodes)) != len(nodes):
        raise UserError("--nodes", "a node is named twice", "name each node once")
    return nodes


def make_plan(cfg: BenchConfig, config_path: Path, mode: str, nodes: list[str]) -> Plan:
    runs = model_runs(cfg)
    # grouped by node, so that each node's tasks form one contiguous array range (one array job per node)
    where: list[str | None] = list(nodes) or [None]
    pairs = [(m, n) for n in where for m in range(len(runs))]
    tasks = [Task(i, m, n) for i, (m, n) in enumerate(pairs)]
    return Plan(config_path=str(config_path.resolve()), base_dir=str(config_path.resolve().parent),
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), mode=mode, runs=runs, tasks=tasks, nodes=nodes,
                slurm=cfg.slurm.model_dump(mode="json"))


def run_dir_for(cfg: BenchConfig, config_path: Path, out: Path | None) -> Path:
    if out is not None:
        return Path(out).resolve()
    base = Path(cfg.output_dir)
    if not base.is_absolute():
        base = config_path.resolve().parent / base
    name = f"{config_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = base / name, 2
    while path.exists():
        path, k = base / f"{name}-{k}", k + 1
    return path


def create_run_dir(run_dir: Path, plan: Plan) -> Path:
    """Make `run_dir` (new or empty) with plan.json, raw/ and (for SLURM) logs/ in it."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(str(run_dir), "already exists and is not empty", "give a new folder with --out, or leave --out out")
    try:
        (run_dir / RAW).mkdir(parents=True, exist_ok=True)
        if plan.mode == "slurm":
            (run_dir / LOGS).mkdir(exist_ok=True)  # SLURM does not create the folder of --output itself
    except OSError as e:
        raise UserError(str(run_dir), f"cannot create the run directory: {e.strerror}", "give a writable folder with --out", "output_dir") from None
    atomic_write_json(run_dir / PLAN, plan.to_dict())
    return run_dir


def load_plan(run_dir: Path) -> Plan:
    path = Path(run_dir) / PLAN
    if not path.exists():
        raise UserError(str(run_dir), "is not a benchmark run directory (no plan.json)",
                        "give a folder made by `swarm-hpc bench models`, e.g. bench/results/models-20261125-101500")
    try:
        return Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(str(path), f"unreadable plan: {e}", "run the benchmark again") from None


def raw_path(run_dir: Path, plan: Plan, task: Task, node: str) -> Path:
    return Path(run_dir) / RAW / f"{task.index:03d}-{plan.runs[task.model].name}-{node}.json"
