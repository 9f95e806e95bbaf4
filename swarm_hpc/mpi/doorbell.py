"""Waking a rank when an MPI message is sent to it, so that a waiting rank sleeps instead of polling.

Open MPI's blocking receive spins on a core, and probing in a loop with a short sleep wakes a rank hundreds of
times a second; on a board where every core runs an expert, either one takes time from the experts
(bench/rounds.py measures how much). So every rank has a doorbell, a UDP socket:

- a rank that sends another rank an MPI message rings the receiver's doorbell (one small datagram) right
  after the isend (`Doorbell.isend` does both);
- a waiting rank sleeps in select() on its own doorbell until it rings or its deadline passes, then takes
  its messages with iprobe/recv as before. The message itself always travels over MPI.

At start-up (`connect`) rank 0 and every other rank (the only pairs that talk) try each other's addresses,
loopback first, and keep the first one a hello arrived on: loopback on one node, the node's network address
across nodes. A rank waiting on a peer that could not ring it (a firewall, say) probes every POLL_SECONDS
instead, as it does while a send of its own is incomplete (Open MPI moves a large message only while its
sender calls into MPI) and for a moment after a ring whose message it has not taken yet (a ring can
overtake its message). However it waits, a rank looks at MPI at least every MAX_SLEEP seconds, so a lost
ring costs at most that. Rings carry the job's random key; anything else arriving on the port is ignored.

`SWARM_HPC_WAKEUP=poll` turns doorbells off: every wait probes every POLL_SECONDS (bench/rounds.py runs both).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import select
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any

POLL_SECONDS = 0.002     # probing interval where a ring cannot be relied on
MAX_SLEEP = 0.5          # the longest sleep without looking at MPI (a safety net for a lost ring)
OVERTAKE_SECONDS = 0.05  # how long a ring is owed its message before it is forgotten
HELLO_SECONDS = 0.5      # how long `connect` waits for hellos from other nodes
_RING = struct.Struct("!8siii")  # job key, sender rank, receiver rank, address index (-1: a ring)
Address = tuple[str, int]


def wakeup_mode() -> str:
    """"doorbell" (the default) or "poll" (SWARM_HPC_WAKEUP=poll)."""
    return "poll" if os.environ.get("SWARM_HPC_WAKEUP", "").strip().lower() == "poll" else "doorbell"


def local_ipv4() -> list[str]:
    """This node's IPv4 addresses, loopback first."""
    found = ["127.0.0.1"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:  # SIOCGIFADDR: the interface's address (Linux)
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            except OSError:  # no IPv4 address on it
                continue
            ip = socket.inet_ntoa(raw[20:24])
            if ip not in found and not ip.startswith("127."):
                found.append(ip)
    return found


class Doorbell:
    """One rank's doorbell, and its way to ring the others' (see the module docstring)."""

    def __init__(self, key: bytes, rank: int, enabled: bool = True):
        self.key = key
        self.rank = rank
        self.sock: socket.socket | None = None
        self.addresses: list[Address] = []  # where this doorbell may be rung, loopback first
        self.peers: dict[int, Address] = {}  # rank -> the address its doorbell is rung at (found by `connect`)
        self.rung_by: set[int] = set()        # ranks that can ring this one
        self._owed: dict[int, float] = {}     # sender -> when its ring came, for rings whose message is not taken yet
        if enabled:
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("0.0.0.0", 0))
                s.setblocking(False)
                port = s.getsockname()[1]
                self.addresses = [(ip, port) for ip in local_ipv4()]
                self.sock = s
            except OSError:  # no UDP here: probe instead
                self.sock = None

    @classmethod
    def off(cls, rank: int) -> Doorbell:
        """A doorbell that never rings: its rank probes every POLL_SECONDS (for callers without `connect`)."""
        return cls(b"", rank, enabled=False)

    @property
    def mode(self) -> str:
        return "doorbell" if self.sock is not None else "poll"

    def _send(self, address: Address, receiver: int, index: int = -1) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto(_RING.pack(self.key, self.rank, receiver, index), address)
        except OSError:  # a full queue (it will wake anyway) or an unreachable address: best effort
            pass

    # --- the sending side ---------------------------------------------------------------------------------------

    def isend(self, comm: Any, obj: Any, dest: int, tag: int) -> Any:
        """Send `obj` to rank `dest` over MPI (non-blocking; the request is returned) and ring its doorbell."""
        req = comm.isend(obj, dest=dest, tag=tag)
        self.ring(dest)
        return req

    def ring(self, rank: int) -> None:
        """Wake `rank`; `isend` calls it right after the message is on its way."""
        if rank in self.peers:
            self._send(self.peers[rank], rank)

    def wake_self(self) -> None:
        """Wake this rank's own waiting thread (from another thread of the rank); no MPI message is owed."""
        if self.addresses:
            self._send(self.addresses[0], self.rank)

    def both_ways(self, ranks: Iterable[int]) -> bool:
        """Whether this rank and each of `ranks` can wake each other."""
        return self.sock is not None and all(r in self.peers and r in self.rung_by for r in ranks)

    # --- the receiving side -------------------------------------------------------------------------------------

    def took(self, source: int) -> None:
        """A message from `source` was received: the ring that announced it is settled."""
        self._owed.pop(source, None)

    def must_probe(self, waiting_for: Iterable[int] = (), busy: bool = False) -> bool:
        """Whether a wait now has to probe every POLL_SECONDS instead of sleeping until a ring."""
        if self.sock is None or busy:
            return True
        now = time.monotonic()
        self._owed = {r: t for r, t in self._owed.items() if now - t < OVERTAKE_SECONDS}
        return bool(self._owed) or any(r not in self.rung_by for r in waiting_for)

    def timeout(self, until: float | None, waiting_for: Iterable[int] = (), busy: bool = False) -> float:
        """How long the next sleep may last: to `until` (time.monotonic()), capped by the probing rules."""
        limit = POLL_SECONDS if self.must_probe(waiting_for, busy) else MAX_SLEEP
        return limit if until is None else max(0.0, min(limit, until - time.monotonic()))

    def sleep(self, until: float | None, waiting_for: Iterable[int] = (), busy: bool = False) -> None:
        """Sleep until a ring, `until`, or the probing interval (`waiting_for`: the ranks a message is awaited
        from; `busy`: this rank has sends of its own in flight)."""
        timeout = self.timeout(until, waiting_for, busy)
        if self.sock is None:
            time.sleep(timeout)
            return
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if ready:
            self._drain()

    async def sleep_async(self, until: float | None, waiting_for: Iterable[int] = (), busy: bool = False) -> None:
        """`sleep` for asyncio code: the event loop watches the doorbell meanwhile."""
        timeout = self.timeout(until, waiting_for, busy)
        if self.sock is None:
            await asyncio.sleep(timeout)
            return
        loop = asyncio.get_running_loop()
        rung: asyncio.Future[None] = loop.create_future()
        loop.add_reader(self.sock, lambda: rung.done() or rung.set_result(None))
        try:
            await asyncio.wait_for(rung, timeout)
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(self.sock)
        self._drain()

    def _drain(self) -> dict[int, int]:
        """Take every datagram waiting on the socket: {sender: lowest address index} of this job's rings to
        this rank (rings proper have index -1; this rank's own wake-ups are left out)."""
        got: dict[int, int] = {}
        while self.sock is not None:
            try:
                data = self.sock.recv(64)
            except BlockingIOError:
                break
            except OSError:  # an ICMP error from an earlier send surfaces here: nothing to take
                continue
            if len(data) != _RING.size:
                continue
            key, sender, receiver, index = _RING.unpack(data)
            if key == self.key and receiver == self.rank and sender != self.rank:
                got[sender] = min(index, got.get(sender, index))
        now = time.monotonic()
        for sender, index in got.items():
            if index < 0:
                self._owed.setdefault(sender, now)
        return got

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def connect(comm: Any) -> Doorbell:
    """Collective: give every rank its doorbell and find, for rank 0 and each other rank, the address at which
    each can ring the other. Where that fails, the rank waiting on the other probes instead."""
    rank, size = comm.Get_rank(), comm.Get_size()
    key = comm.bcast(secrets.token_bytes(8) if rank == 0 else None, root=0)
    bell = Doorbell(key, rank, enabled=wakeup_mode() == "doorbell")
    everyone = comm.allgather(bell.addresses)
    comm.Barrier()  # every doorbell is bound
    peers = list(range(1, size)) if rank == 0 else [0]
    for p in peers:
        for index, address in enumerate(everyone[p]):
            bell._send(address, p, index)
    heard: dict[int, int] = {}  # sender -> the index of this rank's address its hello came to first
    expected = {p for p in peers if everyone[p]} if bell.sock is not None else set()
    give_up = time.monotonic() + HELLO_SECONDS
    comm.Barrier()  # every hello was sent (on one node they have arrived by now; across nodes nearly so)
    while True:
        for sender, index in bell._drain().items():
            if index >= 0:  # a hello (rings have index -1)
                heard[sender] = min(index, heard.get(sender, index))
        if expected <= heard.keys() or time.monotonic() >= give_up:
            break
        time.sleep(POLL_SECONDS)
    bell.rung_by = set(heard)
    # tell each sender which of this rank's addresses reached it: rank 0 scatters, the others gather
    if rank == 0:
        replies = comm.gather(None, root=0)
        comm.scatter([None] + [heard.get(p) for p in range(1, size)], root=0)
        bell.peers = {p: everyone[p][i] for p in range(1, size) if (i := replies[p]) is not None}
    else:
        comm.gather(heard.get(0), root=0)
        i = comm.scatter(None, root=0)
        if i is not None:
            bell.peers = {0: everyone[0][i]}
    return bell
