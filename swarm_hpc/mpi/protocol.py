"""What travels between rank 0 and the expert ranks, and the channel it travels on.

Rank 0 -> an expert rank:  TurnRequest (answer this chat), CancelTurn (drop turn `id`), Stop (exit).
An expert rank -> rank 0:  TurnChunk (text generated so far, when the request asked to stream), TurnResult,
                           TurnSkipped (a turn rank 0 gave up on was dropped before it started).

Every TurnRequest gets exactly one TurnResult or TurnSkipped: rank 0 knows which ranks still owe it a reply.

Every turn has an `id`, unique in the run: a reply is matched to its request by it, and one that comes after
rank 0 gave up on its turn is recognised and dropped. A `Channel` carries them: swarm_hpc/mpi/channel.py's
MpiChannel over mpi4py; the unit tests put an in-process channel with the same methods in its place.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from swarm_hpc.core.passages import Passage
from swarm_hpc.core.turns import Sampling, TurnResult


@dataclass(frozen=True)
class TurnRequest:
    id: int
    expert: str
    messages: list[dict[str, str]]
    timeout: float                # seconds the expert may generate (its deadline starts when it takes the turn)
    model: str | None = None      # which of the expert's models answers (None: its first)
    stream: bool = False          # send TurnChunks while generating
    sampling: Sampling | None = None  # this turn's temperature and seed (None: the expert's own)
    passages: tuple[Passage, ...] = ()  # retrieved for the expert, best first: it keeps those that fit its n_ctx


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
class TurnSkipped:
    """Turn `id` was dropped unanswered: rank 0 had given it up (cancelled, or a newer turn came) before it began."""

    id: int
    rank: int


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
    wakeup: str = "poll"      # how the rank waits: "doorbell" (woken by its peers) or "poll" (swarm_hpc/mpi/channel.py)
    batch: tuple[str, ...] = ()   # the experts this rank hosts as one batch (swarm_hpc/experts/group.py); `expert` is the first


TAGS: dict[type, int] = {TurnRequest: 11, TurnResult: 12, Stop: 13, TurnChunk: 14, CancelTurn: 15, TurnSkipped: 16}


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


class Channel(Protocol):
    """Messages between this rank and the others (non-blocking both ways)."""

    rank: int
    size: int
    cap: float      # the longest a waiting rank sleeps between two looks (channel.py: Backoff)

    def send(self, obj: Any, dest: int) -> None:
        """Send without waiting; the channel completes the send later by itself."""

    def receive(self, source: int | None = None, kind: type | None = None) -> Any | None:
        """One message that has arrived (from `source`, of `kind`: None for any), or None when there is none."""

    def flush(self, wait: float) -> bool:
        """Give this rank's sends up to `wait` seconds to complete; True when all did."""

    def wait(self, seconds: float) -> bool:
        """Sleep until a message may have come for this rank, or `seconds` have passed; True when woken early."""

    def wake(self) -> None:
        """Wake this rank's own wait (from another thread of the rank)."""
