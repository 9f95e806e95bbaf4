"""Rank 0's asyncio side of the MPI layer: one request to one expert rank, awaited without blocking the loop.

`AsyncExchange.request()` sends a `TurnRequest` (non-blocking isend) and awaits its `TurnResult`; one poller
task per exchange takes replies and streamed chunks (iprobe, then it sleeps on the rank's doorbell, which
the event loop watches: never a blocking receive, which busy-polls in Open MPI and takes the experts' cores;
see swarm_hpc/doorbell.py). Many requests to different experts are in flight at once, so the experts
generate at the same time.

- a request has a timeout: the expert stops generating at it by itself; a reply that has not come a grace
  period later raises `ExpertTimeout`, and the expert rank is told to drop the turn (`CancelTurn`);
- a request whose awaiting task is cancelled (an AutoGen CancellationToken) also cancels the turn on its
  rank, which stops at its next token;
- requests to one expert run one after another (a rank generates one turn at a time);
- the expert that rank 0 itself hosts (rank0_hosts_expert) runs in a worker thread.
All MPI calls happen on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from swarm_hpc.mpi.doorbell import POLL_SECONDS, Doorbell
from swarm_hpc.mpi.exchange import (TAG_CANCEL, TAG_CHUNK, TAG_REPLY, TAG_STOP, TAG_TURN, CancelTurn, TurnRequest,
                    TurnResult, grace_seconds, node_name, serve_turn)

FIRST_STEP = 1_000_000  # request ids of this exchange (the native StepExchange counts steps from 1)


class ExpertTimeout(TimeoutError):
    """No reply from an expert within the request's timeout plus the grace period."""


@dataclass
class _Pending:
    step: int
    expert: str
    rank: int
    future: asyncio.Future
    on_chunk: Callable[[str], None] | None
    cancel: threading.Event = field(default_factory=threading.Event)   # the rank-0 expert's cancel flag


class AsyncExchange:
    """Requests to the experts on other ranks (and the one rank 0 hosts), for asyncio code on rank 0."""

    def __init__(self, comm: Any, where: dict[str, int], local: Any = None, bell: Doorbell | None = None):
        self.comm = comm
        self.where = dict(where)
        self.local = local
        self.bell = bell or Doorbell.off(comm.Get_rank())
        self.node = node_name()
        self.stale = 0          # replies that came after their request gave up
        self.late_chunks = 0    # streamed chunks of such requests
        self.requests = 0
        self._next = FIRST_STEP
        self._pending: dict[int, _Pending] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._sends: list[Any] = []
        self._poller: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rank0-expert") if local is not None else None
        self._closed = False

    # --- one request ------------------------------------------------------------------------------------------

    async def request(self, expert: str, messages: list[dict[str, str]], *, timeout: float,
                      model: str | None = None, on_chunk: Callable[[str], None] | None = None) -> TurnResult:
        """Ask `expert` to answer `messages`; its TurnResult, or ExpertTimeout after timeout + grace seconds."""
        if self._closed:
            raise RuntimeError("the exchange is closed (the expert ranks were told to stop)")
        if expert not in self.where:
            raise KeyError(f"no expert named {expert!r} (known: {', '.join(self.where)})")
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout + grace_seconds(timeout)
        lock = self._locks.setdefault(expert, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), max(0.0, give_up - loop.time()))
        except TimeoutError:
            raise ExpertTimeout(f"expert {expert} was still busy with an earlier request after {timeout:g}s") from None
        try:
            left = give_up - loop.time() - grace_seconds(timeout)
            return await self._send_and_wait(expert, messages, max(0.05, left), model, on_chunk, give_up)
        finally:
            lock.release()

    async def _send_and_wait(self, expert: str, messages: list[dict[str, str]], timeout: float, model: str | None,
                             on_chunk: Callable[[str], None] | None, give_up: float) -> TurnResult:
        loop = asyncio.get_running_loop()
        step, self._next = self._next, self._next + 1
        self.requests += 1
        rank = self.where[expert]
        req = TurnRequest(step, expert, list(messages), timeout, model=model, stream=on_chunk is not None)
        p = _Pending(step, expert, rank, loop.create_future(), on_chunk)
        self._pending[step] = p
        if rank == 0:
            self._run_local(p, req, loop)
        else:
            self._sends.append(self.bell.isend(self.comm, req, rank, TAG_TURN))
            if self._poller is None or self._poller.done():
                self._poller = loop.create_task(self._poll(), name="mpi-poller")
            else:
                self.bell.wake_self()  # the poller re-reads what it waits for (and completes this send)
        try:
            return await asyncio.wait_for(asyncio.shield(p.future), max(0.0, give_up - loop.time()))
        except TimeoutError:
            self._cancel(p)
            raise ExpertTimeout(f"no reply from expert {expert} (rank {rank}) within {timeout:g}s "
                                f"+ {grace_seconds(timeout):g}s grace") from None
        except asyncio.CancelledError:
            self._cancel(p)
            raise
        finally:
            self._pending.pop(step, None)

    def _run_local(self, p: _Pending, req: TurnRequest, loop: asyncio.AbstractEventLoop) -> None:
        assert self._pool is not None and self.local is not None, "rank 0 hosts no expert"
        on_text = None
        if p.on_chunk is not None:
            chunk = p.on_chunk
            on_text = lambda text: loop.call_soon_threadsafe(chunk, text)  # noqa: E731

        def done(cf: Any) -> None:
            if p.future.done():
                self.stale += 1
                return
            if cf.exception() is not None:
                p.future.set_exception(cf.exception())
            else:
                gen, info = cf.result()
                p.future.set_result(TurnResult(p.step, p.expert, 0, self.node, gen, info))

        cf = self._pool.submit(serve_turn, self.local, req, p.cancel.is_set, on_text)
        cf.add_done_callback(lambda f: loop.call_soon_threadsafe(done, f))

    def _cancel(self, p: _Pending) -> None:
        """Tell the expert to drop the turn (it stops at its next token); its late reply is counted stale."""
        if p.rank == 0:
            p.cancel.set()
        elif not self._closed:
            self._sends.append(self.bell.isend(self.comm, CancelTurn(p.step), p.rank, TAG_CANCEL))
            self.bell.wake_self()

    # --- the poller -------------------------------------------------------------------------------------------

    async def _poll(self) -> None:
        from mpi4py import MPI

        status = MPI.Status()
        while any(p.rank != 0 for p in self._pending.values()):
            got = False
            while self.comm.iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
                source, tag = status.Get_source(), status.Get_tag()
                obj = self.comm.recv(source=source, tag=tag)
                self.bell.took(source)
                got = True
                self._dispatch(obj, tag)
            self._sends = [r for r in self._sends if not r.Test()]
            if got:
                await asyncio.sleep(0)
            else:
                waiting = {p.rank for p in self._pending.values() if p.rank != 0}
                await self.bell.sleep_async(None, waiting_for=waiting, busy=bool(self._sends))

    def _dispatch(self, obj: Any, tag: int) -> None:
        p = self._pending.get(getattr(obj, "step", -1))
        if tag == TAG_CHUNK:
            if p is not None and p.on_chunk is not None and not p.future.done():
                p.on_chunk(obj.text)
            else:
                self.late_chunks += 1
        elif tag == TAG_REPLY:
            if p is not None and not p.future.done():
                p.future.set_result(obj)
            else:
                self.stale += 1

    # --- the end ----------------------------------------------------------------------------------------------

    def drain(self) -> None:
        """Count and drop replies that are still queued (from requests that gave up)."""
        from mpi4py import MPI

        status = MPI.Status()
        while self.comm.iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
            obj = self.comm.recv(source=status.Get_source(), tag=status.Get_tag())
            self._dispatch(obj, status.Get_tag())

    def stop(self, size: int, wait: float = 30.0) -> bool:
        """Tell every other rank to stop (no awaiting: call it after the event loop has finished)."""
        import time

        for p in list(self._pending.values()):
            p.cancel.set()
        self._closed = True
        self._sends += [self.bell.isend(self.comm, None, r, TAG_STOP) for r in range(1, size)]
        deadline = time.monotonic() + wait
        while self._sends and time.monotonic() < deadline:
            self._sends = [r for r in self._sends if not r.Test()]
            self.drain()
            time.sleep(POLL_SECONDS * 5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.bell.close()
        return not self._sends
