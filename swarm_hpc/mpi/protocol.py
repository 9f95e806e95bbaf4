"""What travels between rank 0 and the expert ranks, and the channel it travels on.

Rank 0 -> an expert rank:  TurnRequest (answer this chat), CancelTurn (drop turn `id`), Stop (exit).
An expert rank -> rank 0:  TurnChunk (text generated so far, when the request asked to stream), TurnResult.

Every turn has an `id`, unique in the run: a reply is matched to its request by it, and one that comes after
rank 0 gave up on its turn is recognised and dropped. `MpiChannel` carries these objects over mpi4py
(pickled, non-blocking sends, a tag per kind so that an expert can look for a cancel between two tokens);
the unit tests put an in-process channel with the same three methods in its place.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Protocol

from swarm_hpc.core.turns import TurnResult


@dataclass(frozen=True)
class TurnRequest:
    id: int
    expert: str
    messages: list[dict[str, str]]
    timeout: float                # seconds the expert may generate (its deadline starts when it takes the turn)
    model: str | None = None      # which of the expert's models answers (None: its first)
    stream: bool = False          # send TurnChunks while generating


@dataclass(frozen=True)
class TurnChunk:
    """Text an expert generated in turn `id` since its last chunk (the chunks of a turn add up to its reply)."""

    id: int
    expert: str
    text: str


@dataclass(frozen=True)
class CancelTurn:
    id: int


@dataclass(frozen=True)
class Stop:
    """The run is over: the expert rank returns."""


@dataclass(frozen=True)
class RankInfo:
    """What a rank reports at start-up (summary.json's `ranks`)."""

    rank: int
    node: str
    pid: int
    expert: str | None
    model_path: str | None
    load_seconds: float
    error: str | None = None
    wakeup: str = "backoff"   # how the rank waits for messages (swarm_hpc/mpi/exchange.py, Backoff)


TAGS: dict[type, int] = {TurnRequest: 11, TurnResult: 12, Stop: 13, TurnChunk: 14, CancelTurn: 15}


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


class Channel(Protocol):
    """Messages between this rank and the others (non-blocking both ways)."""

    rank: int
    size: int

    def send(self, obj: Any, dest: int) -> None:
        """Send without waiting; the channel completes the send later by itself."""

    def receive(self, source: int | None = None, kind: type | None = None) -> Any | None:
        """One message that has arrived (from `source`, of `kind`: None for any), or None when there is none."""

    def flush(self, wait: float) -> bool:
        """Give this rank's sends up to `wait` seconds to complete; True when all did."""


class MpiChannel:
    """A Channel over an mpi4py communicator."""

    def __init__(self, comm: Any):
        from mpi4py import MPI

        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._any_source, self._any_tag = MPI.ANY_SOURCE, MPI.ANY_TAG
        self._sends: list[Any] = []

    def send(self, obj: Any, dest: int) -> None:
        self._sends.append(self.comm.isend(obj, dest=dest, tag=TAGS[type(obj)]))

    def receive(self, source: int | None = None, kind: type | None = None) -> Any | None:
        # Open MPI moves a large message only while its sender calls into MPI: complete what can be completed
        self._sends = [r for r in self._sends if not r.Test()]
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
