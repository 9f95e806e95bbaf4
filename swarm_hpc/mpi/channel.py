"""How messages travel between ranks: MpiChannel, over mpi4py, with a doorbell per rank so that a rank with
nothing to do sleeps instead of spinning and wakes as soon as a message comes (the rules: swarm_hpc/doorbell.py).
While a send of its own is in flight a rank never sleeps longer than SWARM_HPC_WAIT_MAX, since Open MPI moves a
large message only while its sender calls into MPI.

bench/rounds.py measured why the doorbell is there: with probing alone, the cap trades the round's wall time
against the CPU of waiting ranks, and on a 2-core machine busy with experts no cap met both targets (README).
"""

from __future__ import annotations

import time
from typing import Any

from swarm_hpc.doorbell import DEFAULT_WAIT_MAX, Backoff, Doorbell, wait_max
from swarm_hpc.mpi.protocol import TAGS

__all__ = ["DEFAULT_WAIT_MAX", "Backoff", "MpiChannel", "wait_max"]


class MpiChannel:
    """A Channel (swarm_hpc/mpi/protocol.py) over an mpi4py communicator, with a doorbell per rank. Making one
    is collective: every rank of `comm` makes its own at the same time."""

    def __init__(self, comm: Any):
        from mpi4py import MPI

        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._any_source, self._any_tag = MPI.ANY_SOURCE, MPI.ANY_TAG
        self._sends: list[Any] = []
        self.bell = Doorbell(comm)
        self.peers = self.bell.peers          # the ranks this one talks to
        self.wakeup = self.bell.mode          # "doorbell", or "poll" when a peer cannot ring this rank
        self.cap = self.bell.cap

    # --- messages -------------------------------------------------------------------------------------------------

    def send(self, obj: Any, dest: int) -> None:
        self._sends.append(self.comm.isend(obj, dest=dest, tag=TAGS[type(obj)]))
        self.bell.ring(dest)

    def receive(self, source: int | None = None, kind: type | None = None) -> Any | None:
        self._sends = [r for r in self._sends if not r.Test()]  # a send moves on only while this rank calls MPI
        src = self._any_source if source is None else source
        tag = self._any_tag if kind is None else TAGS[kind]
        if not self.comm.iprobe(source=src, tag=tag):
            return None
        return self.comm.recv(source=src, tag=tag)

    def flush(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while True:
            self._sends = [r for r in self._sends if not r.Test()]
            if not self._sends or time.monotonic() >= deadline:
                return not self._sends
            time.sleep(0.005)

    # --- waiting ---------------------------------------------------------------------------------------------------

    def wake(self) -> None:
        self.bell.wake()

    def wait(self, seconds: float) -> bool:
        if self._sends:
            seconds = min(seconds, wait_max())
        return self.bell.wait(seconds)

    def close(self) -> None:
        self.bell.close()
