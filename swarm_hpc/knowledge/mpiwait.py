"""How the index's ranks wait for each other without spinning: probe or test, then sleep, not at all right after
a message and then doubling up to a cap (mpi4py.futures' `Backoff` idiom; Open MPI's blocking calls busy-poll a
core, which the ranks still embedding need). Same rule as swarm_hpc/mpi/channel.py and swarm_hpc/fed/waiting.py,
which this layer may not import (they are above it, or apart). The cap is `SWARM_HPC_WAIT_MAX` (default 0.02 s).
"""

from __future__ import annotations

import os
import time
from typing import Any

FIRST, CAP = 0.0005, 0.02  # seconds


class Backoff:
    def __init__(self) -> None:
        try:
            self.cap = min(1.0, max(0.0001, float(os.environ.get("SWARM_HPC_WAIT_MAX", CAP))))
        except ValueError:
            self.cap = CAP
        self.delay = 0.0

    def reset(self) -> None:
        self.delay = 0.0

    def sleep(self) -> None:
        self.delay = min(self.cap, self.delay * 2 or FIRST)
        time.sleep(self.delay)


def complete(request: Any) -> Any:
    """Wait for a non-blocking request (isend, Ibcast, ...) to finish; its result (an irecv's object)."""
    backoff = Backoff()
    while True:
        done, value = request.test()
        if done:
            return value
        backoff.sleep()


def receive(comm: Any, source: int, tag: int) -> tuple[int, Any]:
    """(source, object) of the next pickled message from `source` (MPI.ANY_SOURCE: anyone) with `tag`."""
    from mpi4py import MPI

    status = MPI.Status()
    backoff = Backoff()
    while not comm.Iprobe(source=source, tag=tag, status=status):
        backoff.sleep()
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
