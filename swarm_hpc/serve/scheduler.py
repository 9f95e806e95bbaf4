"""Who runs next: a bounded, fair queue of requests over the experts they need.

Requests start in the order they came (first come, first served); a request starts as soon as every expert it
needs is free, and a later request may start before an earlier one only when it needs none of the experts the
earlier ones still wait for (an expert called alone next to a swarm request that is waiting for others), so
nobody is overtaken for good. At most `capacity` requests wait; one more is refused at once (HTTP 429 with a
Retry-After from the recent request times), never left hanging. Runs on the server's event loop only.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class Closed(Exception):
    """The service is stopping: no request starts any more."""


@dataclass(eq=False)
class Ticket:
    experts: frozenset[str]
    started: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    start_time: float = 0.0


class Scheduler:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.waiting: list[Ticket] = []
        self.running: set[Ticket] = set()
        self.busy: set[str] = set()
        self.closed: str | None = None
        self.durations: deque[float] = deque(maxlen=20)

    def enter(self, experts: frozenset[str]) -> Ticket:
        """Queue a request for `experts` (QueueFull, or Closed when the service stops)."""
        if self.closed is not None:
            raise Closed(self.closed)
        if len(self.waiting) >= self.capacity:
            raise QueueFull(self.retry_after())
        ticket = Ticket(experts)
        self.waiting.append(ticket)
        self._dispatch()
        return ticket

    async def wait(self, ticket: Ticket) -> None:
        """Until the ticket's experts are its own; a cancelled wait leaves the queue."""
        try:
            await asyncio.shield(ticket.started)
        except asyncio.CancelledError:
            self.leave(ticket)
            raise

    def leave(self, ticket: Ticket) -> None:
        """The request is over (or gave up waiting): free its experts and start whoever can start now."""
        if ticket in self.waiting:
            self.waiting.remove(ticket)
            if not ticket.started.done():
                ticket.started.cancel()
        elif ticket in self.running:
            self.running.discard(ticket)
            self.busy -= ticket.experts
            self.durations.append(time.monotonic() - ticket.start_time)
        self._dispatch()

    def close(self, why: str) -> None:
        """Refuse new requests and fail every waiting one with Closed(why); running ones go on."""
        self.closed = why
        for t in self.waiting:
            if not t.started.done():
                t.started.set_exception(Closed(why))
        self.waiting.clear()

    def retry_after(self) -> int:
        """Seconds after which a refused request may find room: the recent mean request time, at least 1."""
        mean = sum(self.durations) / len(self.durations) if self.durations else 1.0
        return max(1, math.ceil(mean))

    def _dispatch(self) -> None:
        claimed = set(self.busy)
        for t in list(self.waiting):
            if not (t.experts & claimed):
                self.waiting.remove(t)
                self.running.add(t)
                self.busy |= t.experts
                t.start_time = time.monotonic()
                t.started.set_result(None)
            claimed |= t.experts   # an earlier waiting request keeps later ones off its experts
