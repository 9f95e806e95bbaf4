"""How messages travel between ranks (MpiChannel, over mpi4py) and how a rank with nothing to do waits for them.

A waiting rank must not spin: Open MPI's blocking receive busy-polls on the cores the experts generate on.
So a rank probes, then sleeps (`Backoff`: not at all right after a message, then doubling up to a cap), and
every rank has a doorbell, a UDP socket that the sender of an MPI message rings right after the send, so
that the sleeper wakes at once instead of at the end of its sleep. The rules, all of them:

1. A rank that sends another one a message rings that rank's doorbell (the message itself goes over MPI).
2. A waiting rank sleeps in select() on its doorbell until it rings or its back-off's sleep is over; a ring
   resets the back-off, so a ring that overtakes its message costs a few quick probes.
3. The back-off's cap is DOORBELL_SLEEP (a lost ring costs at most that) when every rank this one waits for
   rang it at start-up, else SWARM_HPC_WAIT_MAX (default 0.02 s): a rank that cannot be rung (UDP blocked
   between nodes, or SWARM_HPC_WAKEUP=poll) still wakes often enough. While a send of its own is in flight it
   never sleeps longer than SWARM_HPC_WAIT_MAX, since Open MPI moves a large message only while its sender
   calls into MPI.

bench/rounds.py measured why the doorbell is there: with probing alone, the cap trades the round's wall time
against the CPU of waiting ranks, and on a 2-core machine busy with experts no cap met both targets (README).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import struct
import time
from typing import Any

from swarm_hpc.mpi.protocol import TAGS, node_name

DEFAULT_WAIT_MAX = 0.02    # seconds: the longest sleep of a rank that cannot rely on its doorbell
DOORBELL_SLEEP = 0.5       # seconds: the longest sleep of a rank that can
HELLO_SECONDS = 0.5        # how long start-up waits for its peers' first rings
_RING = struct.Struct("!i")  # the sender's rank
Address = tuple[str, int]


def wait_max() -> float:
    """SWARM_HPC_WAIT_MAX: the longest sleep between two probes of a rank that cannot rely on its doorbell."""
    return float(os.environ.get("SWARM_HPC_WAIT_MAX") or DEFAULT_WAIT_MAX)


class Backoff:
    """Sleeps between probes for messages: none right after one came, then doubling from cap/1024 up to the cap
    (mpi4py.futures' idiom)."""

    def __init__(self, cap: float | None = None):
        self.cap = wait_max() if cap is None else cap
        self.floor = self.cap / 1024
        self.seconds = 0.0

    def reset(self) -> None:
        self.seconds = 0.0

    def next(self, until: float | None = None) -> float:
        """The next sleep (shortened to end at `until`, a time.monotonic() value)."""
        t = self.seconds
        self.seconds = min(self.cap, max(self.floor, 2 * t))
        return t if until is None else max(0.0, min(t, until - time.monotonic()))


def local_ipv4() -> list[str]:
    """This node's IPv4 addresses other than loopback."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):  # OSError: no IPv4 address on that interface
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
                ip = socket.inet_ntoa(raw[20:24])
                if not ip.startswith("127.") and ip not in found:
                    found.append(ip)
    return found


class MpiChannel:
    """A Channel (swarm_hpc/mpi/protocol.py) over an mpi4py communicator, with a doorbell per rank. Making one
    is collective: every rank of `comm` makes its own at the same time."""

    def __init__(self, comm: Any):
        from mpi4py import MPI

        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._any_source, self._any_tag = MPI.ANY_SOURCE, MPI.ANY_TAG
        self._sends: list[Any] = []
        self._bell: socket.socket | None = None
        if os.environ.get("SWARM_HPC_WAKEUP", "").strip().lower() != "poll":
            with contextlib.suppress(OSError):  # no UDP here: this rank polls
                self._bell = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._bell.bind(("0.0.0.0", 0))
                self._bell.setblocking(False)
        port = self._bell.getsockname()[1] if self._bell is not None else 0
        everyone = comm.allgather((node_name(), port, local_ipv4()))
        node = everyone[self.rank][0]
        # where each rank's doorbell is rung: loopback on this node, the node's addresses elsewhere
        self._rings: dict[int, list[Address]] = {
            r: ([("127.0.0.1", p)] if n == node else [(ip, p) for ip in ips])
            for r, (n, p, ips) in enumerate(everyone) if p and r != self.rank}
        self.peers = list(range(1, self.size)) if self.rank == 0 else [0]   # the ranks this one talks to
        for r in self.peers:
            self._ring(r)
        comm.Barrier()  # every first ring is on its way (on one node it has arrived)
        self.wakeup = "doorbell" if self._bell is not None and self._heard(set(self.peers)) else "poll"
        self.cap = DOORBELL_SLEEP if self.wakeup == "doorbell" else wait_max()

    def _heard(self, expected: set[int]) -> bool:
        """Whether a ring came from each of `expected` within HELLO_SECONDS."""
        give_up = time.monotonic() + HELLO_SECONDS
        while expected and time.monotonic() < give_up:
            expected -= self._drain()
            if expected and self._bell is not None:
                select.select([self._bell], [], [], 0.01)  # then _drain() takes what came
        return not expected

    # --- messages -------------------------------------------------------------------------------------------------

    def send(self, obj: Any, dest: int) -> None:
        self._sends.append(self.comm.isend(obj, dest=dest, tag=TAGS[type(obj)]))
        self._ring(dest)

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

    # --- the doorbell ---------------------------------------------------------------------------------------------

    def _ring(self, rank: int) -> None:
        for address in self._rings.get(rank, ()):
            self._send_ring(address)

    def _send_ring(self, address: Address) -> None:
        if self._bell is not None:
            with contextlib.suppress(OSError):  # a full queue or an unreachable address: the cap still holds
                self._bell.sendto(_RING.pack(self.rank), address)

    def wake(self) -> None:
        if self._bell is not None:
            self._send_ring(("127.0.0.1", self._bell.getsockname()[1]))

    def wait(self, seconds: float) -> bool:
        if self._sends:
            seconds = min(seconds, wait_max())
        return self.wait_bell(seconds)

    def wait_bell(self, seconds: float) -> bool:
        if self._bell is None:
            time.sleep(seconds)
            return False
        ready, _, _ = select.select([self._bell], [], [], seconds)
        if ready:
            self._drain()
        return bool(ready)

    def _drain(self) -> set[int]:
        """Take every ring waiting on the doorbell; the ranks that rang."""
        rang: set[int] = set()
        while self._bell is not None:
            try:
                data = self._bell.recv(16)
            except BlockingIOError:
                break
            except OSError:  # an ICMP error from an earlier ring surfaces here
                continue
            if len(data) == _RING.size:
                rang.add(_RING.unpack(data)[0])
        return rang

    def close(self) -> None:
        if self._bell is not None:
            self._bell.close()
            self._bell = None
