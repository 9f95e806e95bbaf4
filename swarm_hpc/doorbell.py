"""How a rank with nothing to do waits for an MPI message without spinning, and wakes as soon as one comes.

Open MPI's blocking receive busy-polls on the cores the experts (or a federated client's training) need. So a
rank probes, then sleeps (`Backoff`: not at all right after a message, then doubling up to a cap), and every
rank has a doorbell, a UDP socket that the sender of an MPI message rings right after the send, so that the
sleeper wakes at once instead of at the end of its sleep (MPI places the processes; another transport does
the waking, as dask-mpi lets MPI place processes and another transport do the rest). The rules:

1. A rank that sends another one a message rings that rank's doorbell (the message itself goes over MPI).
2. A waiting rank sleeps in select() on its doorbell until it rings or its back-off's sleep is over; a ring
   resets the back-off, so a ring that overtakes its message costs a few quick probes.
3. The back-off's cap is DOORBELL_SLEEP (a lost ring costs at most that) when every rank this one waits for
   rang it at start-up, else SWARM_HPC_WAIT_MAX (default 0.02 s): a rank that cannot be rung (UDP blocked
   between nodes, or SWARM_HPC_WAKEUP=poll) still wakes often enough.

Used by the swarm's channel (swarm_hpc/mpi/channel.py) and the federated server and clients (swarm_hpc/fed).
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

DEFAULT_WAIT_MAX = 0.02    # seconds: the longest sleep of a rank that cannot rely on its doorbell
DOORBELL_SLEEP = 0.5       # seconds: the longest sleep of a rank that can
HELLO_SECONDS = 0.5        # how long start-up waits for its peers' first rings
_RING = struct.Struct("!i")  # the sender's rank
Address = tuple[str, int]


def wait_max() -> float:
    """SWARM_HPC_WAIT_MAX: the longest sleep between two probes of a rank that cannot rely on its doorbell."""
    return float(os.environ.get("SWARM_HPC_WAIT_MAX") or DEFAULT_WAIT_MAX)


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


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


class Doorbell:
    """This rank's doorbell, and where to ring the others'. Making one is collective: every rank of `comm` makes
    its own at the same time. `peers`: the ranks this one waits for (rank 0 waits for all, the others for 0)."""

    def __init__(self, comm: Any):
        self.rank, size = comm.Get_rank(), comm.Get_size()
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
        self.peers = list(range(1, size)) if self.rank == 0 else [0]
        for r in self.peers:
            self.ring(r)
        comm.Barrier()  # every first ring is on its way (on one node it has arrived)
        self.mode = "doorbell" if self._bell is not None and self._heard(set(self.peers)) else "poll"
        self.cap = DOORBELL_SLEEP if self.mode == "doorbell" else wait_max()

    def _heard(self, expected: set[int]) -> bool:
        """Whether a ring came from each of `expected` within HELLO_SECONDS."""
        give_up = time.monotonic() + HELLO_SECONDS
        while expected and time.monotonic() < give_up:
            expected -= self._drain()
            if expected and self._bell is not None:
                select.select([self._bell], [], [], 0.01)  # then _drain() takes what came
        return not expected

    def ring(self, rank: int) -> None:
        """Tell `rank` a message is on its way (call right after the send)."""
        for address in self._rings.get(rank, ()):
            self._send_ring(address)

    def _send_ring(self, address: Address) -> None:
        if self._bell is not None:
            with contextlib.suppress(OSError):  # a full queue or an unreachable address: the cap still holds
                self._bell.sendto(_RING.pack(self.rank), address)

    def wake(self) -> None:
        """Ring this rank's own doorbell (another thread of this process has something for it)."""
        if self._bell is not None:
            self._send_ring(("127.0.0.1", self._bell.getsockname()[1]))

    def wait(self, seconds: float) -> bool:
        """Sleep until the doorbell rings or `seconds` have passed; whether it rang."""
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
