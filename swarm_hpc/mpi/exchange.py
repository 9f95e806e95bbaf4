"""How a turn reaches an expert and comes back, rank 0's side: the `Exchange` (the expert ranks' side is
swarm_hpc/mpi/expert_loop.py).

Rank 0:
- `Exchange.submit()` sends a TurnRequest to the expert's rank, or hands it to the expert that rank 0 hosts
  (in a worker thread), and returns a `Call`; the call's `future` gets the TurnResult.
- `Exchange.pump()` takes whatever has arrived: streamed text goes to the call's `on_chunk`, a result to its
  future. A result for a call that was given up is counted in `stale` and dropped.
- `Exchange.give_up(call)` cancels the turn on its rank, which stops at its next token.
- Each engine waits its own way on the same calls: the native engine with `run_step()` (every turn of a step
  at once, until all have answered or the hard deadline), asyncio code (the AutoGen client) with
  `await request()` (one turn; requests to one expert queue behind each other).

Expert ranks (expert_loop.py) answer every turn once, with a TurnResult or, for a turn dropped before it
began, a TurnSkipped: so rank 0 knows which ranks still owe it a reply.

Deadlines: an expert stops generating when its turn's `timeout` has passed; rank 0 waits `grace_seconds`
longer, then gives up on the turn (the transcript marks it late; it is never waited on).

A rank that never answers a turn it was given (a hung process: stopped, deadlocked in native code, swapped out
for good) owes rank 0 a reply. It is not waited on at the end either: `stop()` gives such a rank only
`HUNG_STOP_WAIT` seconds to take its Stop, and reports False, so that the caller ends the job (MPI_Abort; a
normal MPI_Finalize would wait for the hung rank forever). Everything has been recorded by then.

Waiting never spins: a rank with nothing to do probes for messages, then sleeps until its doorbell rings or
its back-off says to look again (swarm_hpc/mpi/channel.py: Backoff, channel.wait()).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from swarm_hpc.core.dialogue import Turn
from swarm_hpc.core.passages import Passage
from swarm_hpc.core.turns import ExpertTimeout, Sampling, TurnResult
from swarm_hpc.experts.interface import Expert
from swarm_hpc.mpi.channel import Backoff
from swarm_hpc.mpi.expert_loop import answer_turn
from swarm_hpc.mpi.protocol import CancelTurn, Channel, Stop, TurnChunk, TurnRequest, TurnSkipped, node_name

HUNG_STOP_WAIT = 2.0  # seconds stop() waits for a rank that still owes a reply to a turn rank 0 gave up on


def grace_seconds(timeout: float) -> float:
    """How long after a turn's deadline rank 0 still waits for a reply that is on its way."""
    return max(1.0, 0.1 * timeout)


@dataclass(eq=False)
class Call:
    """One turn in flight."""

    id: int
    expert: str
    rank: int
    give_up_at: float                                   # time.monotonic(): deadline + grace
    on_chunk: Callable[[str], None] | None = None
    future: Future[TurnResult] = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)   # for the expert rank 0 hosts


class Exchange:
    """Rank 0's side: turns out to the experts, results back (see the module docstring)."""

    def __init__(self, channel: Channel, where: dict[str, int], local: Expert | None = None):
        self.channel = channel
        self.where = dict(where)          # expert -> rank
        self.local = local                # the expert rank 0 hosts, if any
        self.node = node_name()
        self.calls: dict[int, Call] = {}  # unsettled calls by turn id
        self.stale = 0                    # results that came after their call was given up
        self.owed: dict[int, set[int]] = {}  # rank -> ids of given-up turns it has not answered yet
        self.requests = 0                 # turns submitted so far; the newest one's id
        self._local_out: queue.SimpleQueue[Any] = queue.SimpleQueue()   # what the local expert's thread produced
        # the expert rank 0 hosts answers in a daemon thread of its own: a turn stuck for good (in native code,
        # deaf to its cancel) must not keep rank 0 from exiting, as a ThreadPoolExecutor's worker would at exit
        self._local_in: queue.SimpleQueue[tuple[TurnRequest, threading.Event] | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    # --- calls ------------------------------------------------------------------------------------------------

    def submit(self, expert: str, messages: list[dict[str, str]], *, timeout: float, model: str | None = None,
               on_chunk: Callable[[str], None] | None = None, sampling: Sampling | None = None,
               passages: Sequence[Passage] = ()) -> Call:
        """Send one turn to `expert`; its TurnResult arrives in `call.future` (through `pump()`)."""
        if self._closed:
            raise RuntimeError("the exchange is closed (the expert ranks were told to stop)")
        if expert not in self.where:
            raise KeyError(f"no expert named {expert!r} (known: {', '.join(self.where)})")
        self.requests += 1
        call = Call(self.requests, expert, self.where[expert], time.monotonic() + timeout + grace_seconds(timeout),
                    on_chunk)
        self.calls[call.id] = call
        req = TurnRequest(call.id, expert, list(messages), timeout, model, stream=on_chunk is not None,
                          sampling=sampling, passages=tuple(passages))
        if call.rank == self.channel.rank:
            assert self.local is not None, f"rank {call.rank} hosts no expert"
            if self._worker is None:
                self._worker = threading.Thread(target=self._local_turns, name="rank0-expert", daemon=True)
                self._worker.start()
            self._local_in.put((req, call.cancelled))
        else:
            self.channel.send(req, call.rank)
        return call

    def _local_turns(self) -> None:
        """The local expert's thread: its turns one after another, until stop() sends None."""
        while (item := self._local_in.get()) is not None:
            req, cancelled = item
            if not cancelled.is_set():
                self._answer_locally(req, cancelled)

    def _answer_locally(self, req: TurnRequest, cancelled: threading.Event) -> None:
        def hand_over(obj: TurnChunk | TurnResult) -> None:
            self._local_out.put(obj)
            self.channel.wake()

        def on_text(text: str) -> None:
            hand_over(TurnChunk(req.id, req.expert, text))

        gen = answer_turn(self.local, req, self.channel.rank, cancelled.is_set, on_text if req.stream else None)
        hand_over(TurnResult(req.id, req.expert, self.channel.rank, self.node, gen))

    def pump(self) -> bool:
        """Take every message that has arrived and settle its call; True when anything came."""
        got = False
        while (obj := self.channel.receive()) is not None:
            self._deliver(obj)
            got = True
        while not self._local_out.empty():
            self._deliver(self._local_out.get_nowait())
            got = True
        return got

    def _deliver(self, obj: TurnChunk | TurnResult | TurnSkipped) -> None:
        call = self.calls.get(obj.id)
        if isinstance(obj, TurnSkipped):  # only turns rank 0 gave up on are skipped: nothing waits for it
            self.owed.get(obj.rank, set()).discard(obj.id)
        elif isinstance(obj, TurnChunk):
            if call is not None and call.on_chunk is not None:
                call.on_chunk(obj.text)
        elif call is None:
            self.stale += 1
            self.owed.get(obj.rank, set()).discard(obj.id)
        else:
            del self.calls[obj.id]
            call.future.set_result(obj)

    def give_up(self, call: Call) -> None:
        """Stop waiting for `call`; its expert drops the turn at its next token."""
        if self.calls.pop(call.id, None) is None:
            return
        call.cancelled.set()
        if call.rank != self.channel.rank:
            self.owed.setdefault(call.rank, set()).add(call.id)
            if not self._closed:
                self.channel.send(CancelTurn(call.id), call.rank)

    def unresponsive(self) -> list[int]:
        """Ranks that have not answered a turn rank 0 gave up on (maybe hung: they are not waited for at the end)."""
        return sorted(r for r, ids in self.owed.items() if ids)

    # --- the native engine: a step of turns at once ------------------------------------------------------------

    def run_step(self, turns: Sequence[Turn], timeout: float, on_result: Callable[[TurnResult], None] = lambda r: None,
                 model: str | None = None) -> dict[str, TurnResult]:
        """Run `turns` at the same time; {expert: result} of those that answered in time (`on_result` is called
        for each as it arrives). The others are given up."""
        calls = [self.submit(t.expert, t.messages, timeout=timeout, model=model, sampling=t.sampling,
                             passages=t.passages) for t in turns]
        give_up_at = max((c.give_up_at for c in calls), default=0.0)
        results: dict[str, TurnResult] = {}
        backoff = Backoff(self.channel.cap)
        while len(results) < len(calls) and time.monotonic() < give_up_at:
            if self.pump():
                backoff.reset()
            for c in calls:
                if c.future.done() and c.expert not in results:
                    results[c.expert] = c.future.result()
                    on_result(results[c.expert])
            if len(results) < len(calls) and self.channel.wait(backoff.next(give_up_at)):
                backoff.reset()
        for c in calls:
            if not c.future.done():
                self.give_up(c)
        return results

    # --- asyncio code: one request at a time per expert ---------------------------------------------------------

    async def request(self, expert: str, messages: list[dict[str, str]], *, timeout: float, model: str | None = None,
                      on_chunk: Callable[[str], None] | None = None, sampling: Sampling | None = None,
                      passages: Sequence[Passage] = ()) -> TurnResult:
        """Ask `expert` to answer `messages`: its TurnResult, or ExpertTimeout after timeout + grace seconds.
        Cancelling the awaiting task cancels the turn on its rank too."""
        loop = asyncio.get_running_loop()
        give_up_at = time.monotonic() + timeout + grace_seconds(timeout)
        lock = self._locks.setdefault(expert, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), max(0.0, give_up_at - time.monotonic()))
        except TimeoutError:
            raise ExpertTimeout(f"expert {expert} was still busy with an earlier request after {timeout:g}s") from None
        try:
            left = max(0.05, give_up_at - time.monotonic() - grace_seconds(timeout))
            call = self.submit(expert, messages, timeout=left, model=model, on_chunk=on_chunk, sampling=sampling,
                               passages=passages)
            if self._poller is None or self._poller.done():
                self._poller = loop.create_task(self._poll(), name="mpi-poller")
            try:
                return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(call.future)),
                                              max(0.0, give_up_at - time.monotonic()))
            except TimeoutError:
                self.give_up(call)
                raise ExpertTimeout(f"no reply from expert {expert} (rank {call.rank}) within {timeout:g}s "
                                    f"+ {grace_seconds(timeout):g}s grace") from None
            except asyncio.CancelledError:
                self.give_up(call)
                raise
        finally:
            lock.release()

    async def _poll(self) -> None:
        backoff = Backoff(self.channel.cap)
        while self.calls:
            if self.pump():
                backoff.reset()
                await asyncio.sleep(0)
            elif await asyncio.to_thread(self.channel.wait, backoff.next()):  # the event loop runs on meanwhile
                backoff.reset()

    # --- the end ----------------------------------------------------------------------------------------------

    def stop(self, wait: float = 30.0) -> bool:
        """Cancel what is still running and tell every other rank to stop; True when every message was delivered
        and every rank that owed a reply (`unresponsive()`) answered, within `wait` seconds, or HUNG_STOP_WAIT
        when a rank owes one. False means a rank may be hung for good: MPI_Finalize would wait for it forever,
        so the caller must end the job instead. Call it outside the event loop."""
        for call in list(self.calls.values()):
            self.give_up(call)
        self._closed = True
        for r in range(self.channel.size):
            if r != self.channel.rank:
                self.channel.send(Stop(), r)
        deadline = time.monotonic() + (min(wait, HUNG_STOP_WAIT) if self.unresponsive() else wait)
        while True:
            self.pump()  # take the replies still coming (a cancelled turn's last one), so their sends complete too
            delivered = self.channel.flush(0.0)
            # done when every Stop went out and every rank that owed a reply has answered: a small Stop send
            # completes eagerly, so delivery alone does not say that a rank is alive
            if (delivered and not self.unresponsive()) or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        self._local_in.put(None)  # the local expert's thread ends after its turn (or with the process)
        return delivered and not self.unresponsive()
