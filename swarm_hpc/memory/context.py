"""Dynamic context: how big an expert's llama.cpp context should be, in steps of 256 tokens, within a budget.

An expert starts with its spec's n_ctx and grows its context (a new llama.cpp context on the same model: no
weights are read again) when a prompt and its answer no longer fit, up to `n_ctx_max` and as far as the KV
cache fits the memory budget. The budget is the spec's `context_budget_mb` or, without one, this rank's share
of the memory the job may use: under SLURM the job's limit (SLURM_MEM_PER_NODE, or SLURM_MEM_PER_CPU times the
CPUs), else the node's available memory; shared by the ranks on the node, less what the rank holds already.
"""

from __future__ import annotations

import os

STEP = 256
MB = 2**20


def round_up(tokens: int, step: int = STEP) -> int:
    return max(step, -(-tokens // step) * step)


def target_size(needed: int, current: int, floor: int, ceiling: int, kv_bytes_per_token: float,
                budget_mb: float | None) -> int:
    """The context size for a prompt plus answer of `needed` tokens: the smallest multiple of 256 that holds it, no
    smaller than `floor` (the spec's n_ctx) and no bigger than `ceiling` or the budget allows. When `needed` does
    not fit even there, the biggest size allowed (the caller then compresses or drops)."""
    cap = ceiling
    if budget_mb is not None and kv_bytes_per_token > 0:
        cap = min(cap, int(budget_mb * MB / kv_bytes_per_token) // STEP * STEP)
    cap = max(cap, floor)   # the spec's own n_ctx was checked before the launch
    return min(max(round_up(needed), floor), cap)


def local_ranks() -> int:
    """MPI ranks on this node (Open MPI and SLURM say; else 1)."""
    for var in ("OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        try:
            return max(1, int(os.environ.get(var, "")))
        except ValueError:
            continue
    return 1


def _meminfo_mb(field: str) -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def job_memory_mb() -> tuple[float | None, str]:
    """The memory this job may use on this node and where that number comes from."""
    env = os.environ
    try:
        if env.get("SLURM_MEM_PER_NODE"):
            return float(env["SLURM_MEM_PER_NODE"]), "SLURM_MEM_PER_NODE"
        if env.get("SLURM_MEM_PER_CPU"):
            cpus = int(env.get("SLURM_CPUS_ON_NODE") or env.get("SLURM_CPUS_PER_TASK") or 1)
            return float(env["SLURM_MEM_PER_CPU"]) * cpus, "SLURM_MEM_PER_CPU"
    except ValueError:
        pass
    return _meminfo_mb("MemAvailable"), "MemAvailable"


def default_budget_mb(rank_rss_mb: float) -> tuple[float | None, str]:
    """This rank's share of the job's memory on the node, less what it holds already (its model; the node's
    available memory has that taken out already)."""
    total, source = job_memory_mb()
    if total is None:
        return None, "unknown"
    held = 0.0 if source == "MemAvailable" else rank_rss_mb
    return max(0.0, total / local_ranks() - held), source
