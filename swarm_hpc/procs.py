"""The processes of a run on this node, from /proc: mpiexec and the ranks (their command lines name the run
directory). Used to say who holds a run's writer lock, and by the fault tests and the soak benchmark to find,
signal and count a run's processes."""

from __future__ import annotations

import os
from pathlib import Path


def run_processes(run_dir: str | Path) -> dict[int, list[str]]:
    """{pid: argv} of the live (not zombie) processes with the run directory as one of their arguments."""
    key = str(run_dir).encode()
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if state != "Z" and key in cmd:
            found[int(proc.name)] = [c.decode(errors="replace") for c in cmd if c]
    return found


def rank_pids(run_dir: str | Path) -> dict[int, int]:
    """{MPI rank: pid} of the run's ranks on this node (Open MPI gives every rank OMPI_COMM_WORLD_RANK)."""
    found = {}
    for pid, cmd in run_processes(run_dir).items():
        if "swarm_hpc.mpi.rank" in cmd and (rank := mpi_rank(pid)) is not None:
            found[rank] = pid
    return found


def mpiexec_pid(run_dir: str | Path) -> int | None:
    return next((pid for pid, cmd in run_processes(run_dir).items() if Path(cmd[0]).name.startswith("mpiexec")), None)


def children(pid: int) -> dict[int, tuple[str, int]]:
    """{child pid: (state, exit status)} of `pid`'s children; the exit status (waitpid's form, /proc's field 52)
    means something only for a zombie ("Z")."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
            if int(fields[1]) == pid:
                found[int(stat.parent.name)] = (fields[0], int(fields[49]) if len(fields) > 49 else 0)
        except (OSError, IndexError, ValueError):
            continue
    return found


def mpi_rank(pid: int) -> int | None:
    """The MPI rank Open MPI gave a live process (OMPI_COMM_WORLD_RANK), if it is one."""
    try:
        env = dict(v.split(b"=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in v)
        return int(env[b"OMPI_COMM_WORLD_RANK"])
    except (OSError, KeyError, ValueError):
        return None


def ancestors(pid: int | None = None) -> set[int]:
    """`pid` (default: this process) and its parents up to init."""
    found, current = set(), pid or os.getpid()
    while current > 1 and current not in found:
        found.add(current)
        try:
            current = int(Path(f"/proc/{current}/stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return found
