"""The MPI conversation layer: what travels between rank 0 and the expert ranks, and how.

- Start-up: rank 0 broadcasts the spec and the placement (expert -> rank); every rank loads its expert at
  the same time and rank 0 gathers a `RankInfo` from each.
- Each step: rank 0 sends every turn to its expert's rank (`TurnRequest`, non-blocking), runs its own
  expert (if it hosts one) in a thread, and collects `TurnResult`s as they arrive until the step's hard
  deadline. An expert stops generating at the deadline by itself; one that has not answered by the
  deadline plus a grace period is marked late and not waited on. Its reply, if it ever comes, is
  recognised by its step number and dropped.
- Waiting never spins: a blocked MPI receive busy-polls in Open MPI and would steal the cores the experts
  generate on. A waiting rank sleeps on its doorbell (swarm_hpc/doorbell.py), which the sender rings after
  each isend; where a peer cannot ring it (another node), it probes every couple of milliseconds.

Additions for AutoGen clients, routing and model switching (swarm_hpc/aio.py sends all of them; the native
StepExchange sets only `model`, when the spec routes the task):
- `TurnRequest.model` asks an expert that serves several models for one of them (swarm_hpc/switching.py);
  `TurnRequest.stream` asks for the text as it is generated: `TurnChunk`s (TAG_CHUNK) before the reply.
- `CancelTurn` (TAG_CANCEL) ends the named turn at the next token (or its test stall) with finish_reason
  "cancelled"; a cancel for a turn that is not running is ignored.
- `TurnResult.info` carries what the turn cost besides tokens: the model that answered, switch costs, memory.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm_hpc.core.dialogue import Step
from swarm_hpc.mpi.doorbell import POLL_SECONDS, Doorbell, connect
from swarm_hpc.experts.llama import Generation, LlamaExpert
from swarm_hpc.experts.models import resolve_model
from swarm_hpc.core.spec import SwarmSpec

TAG_TURN, TAG_REPLY, TAG_STOP = 11, 12, 13
TAG_CHUNK, TAG_CANCEL = 14, 15


def grace_seconds(timeout: float) -> float:
    """How long after a step's deadline rank 0 still waits for a reply that is on its way."""
    return max(1.0, 0.1 * timeout)


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


@dataclass(frozen=True)
class RankInfo:
    rank: int
    node: str
    pid: int
    expert: str | None
    model_path: str | None
    load_seconds: float
    error: str | None = None
    wakeup: str = "poll"   # how the rank waits for rank 0 (and rank 0 for it): "doorbell" or "poll"


@dataclass(frozen=True)
class TurnRequest:
    step: int
    expert: str
    messages: list[dict[str, str]]
    timeout: float
    model: str | None = None      # which of the expert's models answers (None: its `model`)
    stream: bool = False          # send TurnChunks while generating


@dataclass(frozen=True)
class TurnResult:
    step: int
    expert: str
    rank: int
    node: str
    generation: Generation
    info: dict[str, Any] = field(default_factory=dict)   # model, switch costs, memory (see switching.py)


@dataclass(frozen=True)
class TurnChunk:
    """Text an expert generated so far in turn `step` (the chunks of a turn add up to its reply)."""

    step: int
    expert: str
    text: str


@dataclass(frozen=True)
class CancelTurn:
    step: int


def placement(spec: SwarmSpec, size: int) -> dict[str, int]:
    """Expert -> rank: rank 0 hosts the first expert when the spec says so, the others get ranks 1, 2, ..."""
    first = 0 if spec.rank0_hosts_expert else 1
    if len(spec.experts) + first > size:
        raise ValueError(f"{len(spec.experts)} experts need {len(spec.experts) + first} ranks, got {size}")
    return {e.name: first + i for i, e in enumerate(spec.experts)}


def build_expert(spec: SwarmSpec, name: str, spec_dir: Path, first: str | None = None) -> Any:
    """The rank's expert: a ServingExpert (a LlamaExpert that can also stream and be cancelled), or a
    PooledExpert when it serves several models or has a memory budget (`first`: the model loaded first)."""
    from swarm_hpc.experts.serving import ServingExpert

    e = spec.expert(name)
    if e.switches_models:
        from swarm_hpc.experts.switching import PooledExpert, served_models

        models = served_models(e, spec_dir, field=f"experts.{name}.models")
        if first in models:
            models = {first: models[first], **{k: v for k, v in models.items() if k != first}}
        return PooledExpert(name, models, n_ctx=e.n_ctx, threads=e.threads, temperature=e.temperature,
                            seed=e.seed, max_tokens=e.max_tokens, budget_mb=e.memory_budget_mb)
    model = resolve_model(e.model, spec_dir, field=f"experts.{name}.model")
    if e.chat_format:
        model = dataclasses.replace(model, chat_format=e.chat_format)
    return ServingExpert(name, model, n_ctx=e.n_ctx, threads=e.threads, temperature=e.temperature,
                         seed=e.seed, max_tokens=e.max_tokens)


def first_model(spec: SwarmSpec, name: str) -> str | None:
    """The model an expert should load first: the one the spec's routing picks for the task, if any."""
    if not spec.routes:
        return None
    from swarm_hpc.core.routing import route

    r = route(spec, spec.task)
    return r.model if r.model and name in r.experts else None


def load_on_rank(spec: SwarmSpec, spec_dir: Path, where: dict[str, int], rank: int,
                 wakeup: str = "poll") -> tuple[Any, RankInfo]:
    name = next((n for n, r in where.items() if r == rank), None)
    base = {"rank": rank, "node": node_name(), "pid": os.getpid(), "expert": name, "wakeup": wakeup}
    if name is None:
        return None, RankInfo(**base, model_path=None, load_seconds=0.0)
    try:
        expert = build_expert(spec, name, spec_dir, first_model(spec, name))
    except Exception as e:  # reported to rank 0, which stops the run with one clear line
        return None, RankInfo(**base, model_path=None, load_seconds=0.0, error=f"{type(e).__name__}: {e}")
    return expert, RankInfo(**base, model_path=str(expert.model.path), load_seconds=expert.load_seconds)


class StartupError(Exception):
    """Start-up failed (bad spec snapshot, too few ranks, an expert that cannot load); raised on every rank."""


@dataclass(frozen=True)
class Startup:
    spec: SwarmSpec
    spec_dir: Path
    where: dict[str, int]         # expert -> rank
    expert: Any                   # this rank's expert, or None
    infos: list[RankInfo] | None  # every rank's RankInfo, on rank 0 only
    bell: Doorbell                # this rank's doorbell (swarm_hpc/doorbell.py)


def start_ranks(comm: Any, load: Callable[[], tuple[SwarmSpec, Path]]) -> Startup:
    """Run on every rank: rank 0 reads the spec with `load` and broadcasts it with the placement, every rank
    loads its expert at the same time, rank 0 gathers what each loaded. When any of it fails, every rank
    raises StartupError with the same one-line reason, so all of them stop together."""
    rank, size = comm.Get_rank(), comm.Get_size()
    setup: tuple | None = None
    if rank == 0:
        try:
            spec, spec_dir = load()
            setup = ("ok", spec, spec_dir, placement(spec, size))
        except Exception as e:
            setup = ("error", str(e))
    setup = comm.bcast(setup, root=0)
    if setup[0] == "error":
        raise StartupError(setup[1])
    _, spec, spec_dir, where = setup
    bell = connect(comm)
    wakeup = "doorbell" if bell.both_ways(range(1, size) if rank == 0 else [0]) else "poll"
    expert, info = load_on_rank(spec, spec_dir, where, rank, wakeup)
    infos = comm.gather(info, root=0)
    failed = None
    if rank == 0:
        bad = [i for i in infos if i.error]
        if bad:
            failed = f"expert {bad[0].expert} on rank {bad[0].rank} ({bad[0].node}) could not load: {bad[0].error}"
    failed = comm.bcast(failed, root=0)
    if failed:
        bell.close()
        raise StartupError(failed)
    return Startup(spec, spec_dir, where, expert, infos, bell)


def wait_recv(comm: Any, bell: Doorbell, source: int, tag: int, deadline: float | None = None,
              sends: list[Any] | None = None) -> tuple[Any, int] | None:
    """Receive one message (object, tag) from `source`, sleeping on the doorbell meanwhile; None when
    `deadline` passes first. `sends`: this rank's own sends in flight, completed as they can be."""
    from mpi4py import MPI

    status = MPI.Status()
    while True:
        if comm.iprobe(source=source, tag=tag, status=status):
            obj = comm.recv(source=status.Get_source(), tag=status.Get_tag())
            bell.took(status.Get_source())
            return obj, status.Get_tag()
        if deadline is not None and time.monotonic() >= deadline:
            return None
        if sends:
            sends[:] = [r for r in sends if not r.Test()]
        bell.sleep(deadline, waiting_for=() if source == MPI.ANY_SOURCE else (source,), busy=bool(sends))


def test_stall(expert: str) -> float:
    """Seconds this expert sleeps before each turn when the tests ask for it
    (SWARM_HPC_TEST_STALL=name:s, or several: a:2,b:2)."""
    raw = os.environ.get("SWARM_HPC_TEST_STALL", "")
    for part in raw.split(","):
        name, _, seconds = part.strip().partition(":")
        if name == expert and seconds:
            return float(seconds)
    return 0.0


def answer(expert: LlamaExpert, req: TurnRequest) -> Generation:
    return serve_turn(expert, req)[0]


def serve_turn(expert: Any, req: TurnRequest, cancelled: Callable[[], bool] | None = None,
               on_text: Callable[[str], None] | None = None) -> tuple[Generation, dict[str, Any]]:
    """Answer one turn: (the generation, info about the model that answered)."""
    from swarm_hpc.experts.serving import CANCELLED, ServingExpert
    from swarm_hpc.experts.switching import PooledExpert

    deadline = time.monotonic() + req.timeout
    stall = test_stall(expert.name)
    if stall:
        end = time.monotonic() + stall
        while time.monotonic() < end:  # a stalled expert still notices a cancel
            if cancelled is not None and cancelled():
                return Generation("", CANCELLED, error="cancelled during the test stall"), {}
            time.sleep(min(0.01, max(0.0, end - time.monotonic())))
    if isinstance(expert, PooledExpert):
        return expert.serve(req.messages, deadline, on_text=on_text, cancelled=cancelled, model=req.model)
    info = {"model": expert.model.ref}
    if req.model is not None and req.model != expert.model.ref:
        return Generation("", "error", error=f"expert {expert.name} serves only model {expert.model.ref!r}, "
                          f"not {req.model!r} (list it in the expert's `models`)"), info
    if isinstance(expert, ServingExpert) and (on_text is not None or cancelled is not None):
        return expert.serve(req.messages, deadline=deadline, on_text=on_text, cancelled=cancelled), info
    return expert.generate(req.messages, deadline=deadline), info


class _Inbox:
    """Rank >= 1's view of what rank 0 sent: the newest turn, stop, and cancels (drained without blocking)."""

    def __init__(self, comm: Any, bell: Doorbell):
        self.comm = comm
        self.bell = bell
        self.cancelled: set[int] = set()

    def drain(self, pending: tuple[Any, int] | None) -> tuple[Any, int] | None:
        """Take every queued message; keep the newest turn (an older one was closed by rank 0 already)."""
        from mpi4py import MPI

        while self.comm.iprobe(source=0, tag=MPI.ANY_TAG):
            got = wait_recv(self.comm, self.bell, 0, MPI.ANY_TAG)
            assert got is not None
            obj, tag = got
            if tag == TAG_STOP:
                return got
            if tag == TAG_CANCEL:
                self.cancelled.add(obj.step)
                if pending is not None and pending[0].step == obj.step:
                    pending = None
                continue
            pending = got
        return pending

    def cancel_requested(self, step: int) -> bool:
        """Polled between tokens: has rank 0 cancelled turn `step`? (other messages wait in the queue)"""
        while self.comm.iprobe(source=0, tag=TAG_CANCEL):
            self.cancelled.add(self.comm.recv(source=0, tag=TAG_CANCEL).step)
            self.bell.took(0)
        return step in self.cancelled


def expert_loop(comm: Any, expert: LlamaExpert | None, bell: Doorbell | None = None) -> None:
    """Ranks >= 1: answer turns until rank 0 says stop."""
    from mpi4py import MPI

    rank, node = comm.Get_rank(), node_name()
    bell = bell or Doorbell.off(rank)
    inbox = _Inbox(comm, bell)
    sends: list[Any] = []
    while True:
        got = wait_recv(comm, bell, 0, MPI.ANY_TAG, sends=sends)
        assert got is not None
        if got[1] == TAG_CANCEL:
            inbox.cancelled.add(got[0].step)
            got = None
        # a newer message queued behind this one means rank 0 closed this turn's step already: skip ahead
        got = inbox.drain(got)
        if got is None:
            continue
        req, tag = got
        if tag == TAG_STOP:
            _finish_sends(sends)
            bell.close()
            return
        info: dict[str, Any] = {}
        if expert is None:  # an idle rank got a turn: answer with an error rather than hang rank 0
            gen = Generation("", "error", error=f"rank {rank} hosts no expert")
        else:
            on_text: Callable[[str], None] | None = None
            if req.stream:
                def on_text(text: str, step: int = req.step, name: str = req.expert) -> None:
                    sends.append(bell.isend(comm, TurnChunk(step, name, text), 0, TAG_CHUNK))
            gen, info = serve_turn(expert, req, cancelled=lambda step=req.step: inbox.cancel_requested(step),
                                   on_text=on_text)
        sends.append(bell.isend(comm, TurnResult(req.step, req.expert, rank, node, gen, info), 0, TAG_REPLY))
        sends[:] = [r for r in sends if not r.Test()]
        inbox.cancelled = {s for s in inbox.cancelled if s > req.step}


def _finish_sends(sends: list[Any], wait: float = 1.0) -> None:
    """Give this rank's last sends up to `wait` seconds to complete (a reply rank 0 gave up on, or a stop
    message to a rank that hangs, is never received); the ones that did not stay in `sends`."""
    deadline = time.monotonic() + wait
    while True:
        sends[:] = [r for r in sends if not r.Test()]
        if not sends or time.monotonic() >= deadline:
            return
        time.sleep(POLL_SECONDS)


class StepExchange:
    """Rank 0's side of a step: send the turns, run the local expert, gather replies until the deadline."""

    def __init__(self, comm: Any, where: dict[str, int], local: LlamaExpert | None, bell: Doorbell | None = None):
        self.comm = comm
        self.where = where
        self.local = local
        self.bell = bell or Doorbell.off(comm.Get_rank())
        self.node = node_name()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rank0-expert") if local else None
        self._sends: list[Any] = []
        self.stale = 0  # replies that came after their step was closed
        self.models: dict[str, str] = {}  # expert -> the model its turns ask for (routing); default: its own

    def run(self, step_no: int, step: Step, timeout: float,
            on_result: Callable[[TurnResult], None] = lambda r: None) -> dict[str, TurnResult]:
        from mpi4py import MPI

        local_future: Future[tuple[Generation, dict[str, Any]]] | None = None
        local_name = None
        for turn in step.turns:
            req = TurnRequest(step_no, turn.expert, turn.messages, timeout, model=self.models.get(turn.expert))
            rank = self.where[turn.expert]
            if rank == 0:
                assert self._pool is not None and self.local is not None
                local_future, local_name = self._pool.submit(serve_turn, self.local, req), turn.expert
                local_future.add_done_callback(lambda f: self.bell.wake_self())
            else:
                self._sends.append(self.bell.isend(self.comm, req, rank, TAG_TURN))
        expected = {t.expert for t in step.turns}
        results: dict[str, TurnResult] = {}
        hard_deadline = time.monotonic() + timeout + grace_seconds(timeout)
        status = MPI.Status()
        while len(results) < len(expected) and time.monotonic() < hard_deadline:
            progressed = False
            if local_future is not None and local_future.done() and local_name not in results:
                res = TurnResult(step_no, local_name, 0, self.node, *local_future.result())
                results[local_name] = res
                on_result(res)
                progressed = True
            while self.comm.iprobe(source=MPI.ANY_SOURCE, tag=TAG_REPLY, status=status):
                res = self.comm.recv(source=status.Get_source(), tag=TAG_REPLY)
                self.bell.took(status.Get_source())
                if res.step != step_no or res.expert not in expected:
                    self.stale += 1
                    continue
                results[res.expert] = res
                on_result(res)
                progressed = True
            if not progressed:
                self._sends = [r for r in self._sends if not r.Test()]
                waiting = {self.where[n] for n in expected - results.keys()} - {0}
                self.bell.sleep(hard_deadline, waiting_for=waiting, busy=bool(self._sends))
        self._sends = [r for r in self._sends if not r.Test()]
        return results

    def stop(self, size: int, wait: float = 30.0) -> bool:
        """Tell every other rank to stop; True when all stop messages were delivered within `wait` seconds."""
        self._sends += [self.bell.isend(self.comm, None, r, TAG_STOP) for r in range(1, size)]
        _finish_sends(self._sends, wait)
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.bell.close()
        return not self._sends
