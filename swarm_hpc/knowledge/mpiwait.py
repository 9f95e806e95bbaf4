"""How the index's ranks wait for each other without spinning: probe or test, then sleep the next step of a
`Backoff` (swarm_hpc/doorbell.py: not at all right after a message, then doubling up to SWARM_HPC_WAIT_MAX,
default 0.02 s). Open MPI's blocking calls busy-poll a core, which the ranks still embedding need. (No doorbell
here: a build's waits are few and long, and a query's process start-up dwarfs a 20 ms wake-up.)
"""

from __future__ import annotations

import time
from typing import Any

from swarm_hpc.doorbell import Backoff


def _sleep(backoff: Backoff) -> None:
    time.sleep(backoff.next())


def complete(request: Any) -> Any:
    """Wait for a non-blocking request (isend, Ibcast, ...) to finish; its result (an irecv's object)."""
    backoff = Backoff()
    while True:
        done, value = request.test()
        if done:
            return value
        _sleep(backoff)


def receive(comm: Any, source: int, tag: int) -> tuple[int, Any]:
    """(source, object) of the next pickled message from `source` (MPI.ANY_SOURCE: anyone) with `tag`."""
    from mpi4py import MPI

    status = MPI.Status()
    backoff = Backoff()
    while not comm.Iprobe(source=source, tag=tag, status=status):
        _sleep(backoff)
    src = status.Get_source()
    return src, comm.recv(source=src, tag=tag)


def send(comm: Any, obj: Any, dest: int, tag: int) -> None:
    """Send a pickled object and wait, sleeping, until it is out (a large one waits for its receiver)."""
    complete(comm.isend(obj, dest=dest, tag=tag))


def agree(comm: Any, error: str, tag: int = 29) -> str:
    """Every rank's start-up error (text, "" for none) to rank 0, and the first one back to every rank: a
    gather and a broadcast that sleep while they wait."""
    from mpi4py import MPI

    rank, size = comm.Get_rank(), comm.Get_size()
    if rank != 0:
        send(comm, error, 0, tag)
        return str(receive(comm, 0, tag)[1])
    errors = {0: error}
    for _ in range(size - 1):
        src, got = receive(comm, MPI.ANY_SOURCE, tag)
        errors[src] = got
    verdict = next((errors[r] for r in sorted(errors) if errors[r]), "")
    for req in [comm.isend(verdict, dest=r, tag=tag) for r in range(1, size)]:
        complete(req)
    return verdict
