"""What an expert rank runs (rank 0's side is swarm_hpc/mpi/exchange.py): take turns, answer, reply.

- `serve()`, a rank with one expert: take the newest turn (an older one still queued was given up by rank 0
  already), answer it, looking for a cancel between tokens, send the result; until Stop.
- `serve_batch()`, a rank with an expert group (swarm_hpc/experts/group.py): every member's turn is one
  sequence of the group's batch; turns join between two steps and each reply is sent when its turn ends.
- Every turn gets exactly one reply: a TurnResult, or a TurnSkipped for a turn dropped before it began (an
  older one of the same expert, one cancelled while queued, one still running at Stop).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from swarm_hpc.core.turns import Generation, TurnResult, failed
from swarm_hpc.experts.interface import Expert
from swarm_hpc.mpi.channel import Backoff
from swarm_hpc.mpi.protocol import CancelTurn, Channel, Stop, TurnChunk, TurnRequest, TurnSkipped, node_name

if TYPE_CHECKING:
    from swarm_hpc.experts.group import ExpertGroup


def answer_turn(expert: Expert | None, req: TurnRequest, rank: int, cancelled: Callable[[], bool],
                on_text: Callable[[str], None] | None) -> Generation:
    """One turn on the rank that hosts `expert` (its deadline starts now)."""
    if expert is None:  # an idle rank got a turn: answer with an error rather than leave rank 0 waiting
        return failed(f"rank {rank} hosts no expert")
    try:
        return expert.answer(req.messages, deadline=time.monotonic() + req.timeout, model=req.model,
                             on_text=on_text, cancelled=cancelled, sampling=req.sampling, passages=req.passages)
    except Exception as e:  # an expert that breaks its promise still answers
        return failed(f"{type(e).__name__}: {e}")


class Inbox:
    """An expert rank's view of what rank 0 sent."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.cancelled: set[int] = set()

    def next(self) -> list[TurnRequest] | Stop:
        """Stop, or the newest waiting turn of each expert that is not cancelled (an expert's older turn was given up
        by rank 0 already). Each turn dropped here is reported to rank 0 (TurnSkipped)."""
        newest: dict[str, TurnRequest] = {}
        while (obj := self.channel.receive(source=0)) is not None:
            if isinstance(obj, CancelTurn):
                self.cancelled.add(obj.id)
            elif isinstance(obj, Stop):
                for turn in newest.values():
                    self._skip(turn)
                return obj
            else:
                if obj.expert in newest:
                    self._skip(newest[obj.expert])
                newest[obj.expert] = obj
        for turn in [t for t in newest.values() if t.id in self.cancelled]:
            self._skip(newest.pop(turn.expert))
        return list(newest.values())

    def forget(self, below: int) -> None:
        """Cancels of turns older than `below` no longer matter (those turns have ended)."""
        self.cancelled = {i for i in self.cancelled if i >= below}

    def _skip(self, turn: TurnRequest) -> None:
        self.channel.send(TurnSkipped(turn.id, self.channel.rank), 0)

    def callbacks(self, req: TurnRequest) -> tuple[Callable[[str], None] | None, Callable[[], bool]]:
        """What a turn's generation calls: `on_text` sends its text to rank 0 as it comes (None unless the turn asked
        for a stream), `cancelled` asks whether rank 0 has given the turn up."""

        def on_text(text: str) -> None:
            self.channel.send(TurnChunk(req.id, req.expert, text), 0)

        def cancelled() -> bool:
            return self.is_cancelled(req.id)

        return (on_text if req.stream else None), cancelled

    def is_cancelled(self, turn_id: int) -> bool:
        """Asked between two tokens: has rank 0 cancelled this turn? (other messages wait in the queue)"""
        while (obj := self.channel.receive(source=0, kind=CancelTurn)) is not None:
            self.cancelled.add(obj.id)
        return turn_id in self.cancelled


def serve(channel: Channel, expert: Expert | None) -> None:
    """Ranks >= 1: answer turns until rank 0 says stop."""
    node = node_name()
    inbox = Inbox(channel)
    backoff = Backoff(channel.cap)
    while True:
        got = inbox.next()
        if not got:
            if channel.wait(backoff.next()):
                backoff.reset()
            continue
        backoff.reset()
        if isinstance(got, Stop):
            channel.flush(1.0)  # a last reply rank 0 gave up on may never be received: do not wait long
            return
        req = got[-1]  # one expert: one turn
        on_text, cancelled = inbox.callbacks(req)
        gen = answer_turn(expert, req, channel.rank, cancelled, on_text)
        channel.send(TurnResult(req.id, req.expert, channel.rank, node, gen), 0)
        inbox.forget(req.id + 1)


def serve_batch(channel: Channel, group: ExpertGroup) -> None:
    """Ranks >= 1 that host an expert group: every member's turn runs as one sequence of the group's batch; turns
    join between two steps, and each ends (and is sent) on its own. Until rank 0 says stop."""
    node = node_name()
    inbox = Inbox(channel)
    backoff = Backoff(channel.cap)
    running: dict[str, TurnRequest] = {}
    newest = 0   # the newest turn that ended

    def send(req: TurnRequest, gen: Generation) -> None:
        channel.send(TurnResult(req.id, req.expert, channel.rank, node, gen), 0)

    while True:
        got = inbox.next()
        if isinstance(got, Stop):
            for req in running.values():
                group.cancel(req.expert)
                inbox.channel.send(TurnSkipped(req.id, channel.rank), 0)
            channel.flush(1.0)
            return
        for req in got:
            if req.expert in running:  # its turn in flight was given up by rank 0 (a newer one came)
                group.cancel(req.expert)
                channel.send(TurnSkipped(running.pop(req.expert).id, channel.rank), 0)
            on_text, cancelled = inbox.callbacks(req)
            early = group.begin(req.expert, req.messages, deadline=time.monotonic() + req.timeout, model=req.model,
                                on_text=on_text, cancelled=cancelled, sampling=req.sampling, passages=req.passages)
            if early is not None:
                send(req, early)
            else:
                running[req.expert] = req
        if not running:
            if channel.wait(backoff.next()):
                backoff.reset()
            continue
        backoff.reset()
        try:
            ended = group.step()
        except Exception as e:  # the batch broke: every turn in it still gets its answer
            ended = {name: failed(f"{type(e).__name__}: {e}") for name in running}
            for name in running:
                group.cancel(name)
        for name, gen in ended.items():
            req = running.pop(name)
            send(req, gen)
            newest = max(newest, req.id)
        inbox.forget(min((r.id for r in running.values()), default=newest + 1))
