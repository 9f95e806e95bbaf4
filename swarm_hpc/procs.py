"""Processes on this node, from /proc: a run's mpiexec and ranks (their command lines name the run directory), a
session's members, a process's children and parents. Used to say who holds a run's writer lock, by LocalJob to
end what it started (and an mpiexec that outlives its ranks), and by the fault tests and the soak benchmark to
find, signal and count a run's processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# fields of /proc/PID/stat after "(comm) ", counted from 0: state, ppid, pgrp, session, ..., exit_code (proc(5))
STATE, PPID, SESSION, EXIT_CODE = 0, 1, 3, 49


def stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (which may hold spaces and parentheses); None: gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def _stats() -> Iterator[tuple[int, list[str]]]:
    for proc in Path("/proc").glob("[0-9]*"):
        if (fields := stat(proc.name)) is not None:
            yield int(proc.name), fields


def run_processes(run_dir: str | Path) -> dict[int, list[str]]:
    """{pid: argv} of the live (not zombie) processes with the run directory as one of their arguments."""
    key = str(run_dir).encode()
    found = {}
    for pid, fields in _stats():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if fields[STATE] != "Z" and key in cmd:
            found[pid] = [c.decode(errors="replace") for c in cmd if c]
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


def session_members(sid: int) -> list[int]:
    """The live processes of a session. Zombies do not count: orphaned ones stay until init reaps them, or for
    good where PID 1 is not an init (as in some containers)."""
    return [pid for pid, fields in _stats() if fields[STATE] != "Z" and int(fields[SESSION]) == sid]


def children(pid: int) -> dict[int, tuple[str, int]]:
    """{child pid: (state, exit status)} of `pid`'s children; the exit status (waitpid's form) means something only
    for a zombie ("Z"). Read from the threads' `children` lists (a few small files: LocalJob asks this 4 times a
    second while a run lasts), else from every process's parent."""
    lists = list(Path(f"/proc/{pid}/task").glob("*/children"))
    try:
        pids = {int(p) for f in lists for p in f.read_text().split()} if lists else None
    except OSError:
        pids = None
    found = {}
    for kid, fields in ((k, stat(k)) for k in pids) if pids is not None else _stats():
        if fields is not None and int(fields[PPID]) == pid:
            found[kid] = (fields[STATE], int(fields[EXIT_CODE]) if len(fields) > EXIT_CODE else 0)
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
        fields = stat(current)
        if fields is None:
            break
        current = int(fields[PPID])
    return found
