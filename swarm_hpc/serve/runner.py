"""One request, run by the native engine: its strategy step by step (swarm_hpc/core/native.py NativeRun), each
step's turns sent with rank 0's asyncio side of the Exchange (`await request()`), recorded by an ordinary
Recorder into a run directory of its own (`swarm-hpc show` reads it).

The strategy and the Recorder's fsync'd writes run in a worker thread; every Exchange call happens on the
server's event loop, the one thread that touches MPI. A step's turns run at the same time; requests on
different experts run side by side (the scheduler keeps their experts apart). Cancelling a request (its client
went away, or the service stops) cancels its turns on their ranks, which stop at their next token, and marks its
run `cancelled`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from swarm_hpc.core.dialogue import Final, Turn
from swarm_hpc.core.native import NativeRun
from swarm_hpc.core.passages import Passage, Reader
from swarm_hpc.core.recorder import MessageRecord, Recorder, StepEnd, mark_status
from swarm_hpc.core.routing import Learned, Route, narrowed, task_route
from swarm_hpc.core.rundir import create_run_dir
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.core.strategies import get_strategy
from swarm_hpc.core.turns import ExpertTimeout, Sampling, TurnResult
from swarm_hpc.memory.retrieval import LexicalRetriever, RetrieverFor


class Requester(Protocol):
    """Rank 0's Exchange, as asyncio code calls it (swarm_hpc/mpi/exchange.py)."""

    async def request(self, expert: str, messages: list[dict[str, str]], *, timeout: float,
                      model: str | None = None, on_chunk: Callable[[str], None] | None = None,
                      sampling: Sampling | None = None, passages: Sequence[Passage] = ()) -> TurnResult: ...


class RequestCancelled(Exception):
    """The request was given up (its client left, or the service stops); `why` says which."""


@dataclass
class Progress:
    """A finished step of a request, for a streaming client and the metrics."""

    round: int
    label: str
    answered: int
    turns: int
    replies: list[dict[str, Any]]


@dataclass
class Outcome:
    final: Final
    run_dir: Path
    steps: list[Progress]
    prompt_tokens: int
    completion_tokens: int
    seconds: float          # the conversation itself: the run directory made, every step run and recorded


class _Recorder(Recorder):
    """A Recorder that also reports each step it writes (from the worker thread)."""

    on_step: Callable[[list[MessageRecord], StepEnd], None] = staticmethod(lambda records, end: None)

    def write_step(self, records: list[MessageRecord], end: StepEnd) -> None:
        super().write_step(records, end)
        self.on_step(records, end)


@dataclass(eq=False)
class Request:
    """One request in flight: its spec, its run directory, what it has done so far."""

    spec: SwarmSpec
    run_dir: Path
    model: str | None = None                   # the routed model, None: each expert's own
    route: Route | None = None                 # the spec's [[routes]] choice for this task
    query: str | None = None                   # what its experts' passages are retrieved for (None: the task)
    steps: list[Progress] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cancelled: str | None = None
    _step: concurrent.futures.Future[dict[str, TurnResult | None]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self, why: str) -> None:
        """Give the request up: its step in flight is cancelled, no further step starts (any thread)."""
        with self._lock:
            if self.cancelled is None:
                self.cancelled = why
            if self._step is not None:
                self._step.cancel()


class Runner:
    """Runs requests on rank 0 (see the module docstring)."""

    def __init__(self, requester: Requester, loop: asyncio.AbstractEventLoop, ranks: list[Any], node: str,
                 stale: Callable[[], int], out: Path, spec_path: Path, workers: int, learned: Learned | None = None,
                 reader: Reader | None = None, recall: RetrieverFor = LexicalRetriever):
        self.requester = requester
        self.reader = reader      # the spec's [knowledge]: each request's experts read passages for its task
        self.recall = recall      # ranks the memory store's facts for a request (its threads share it)
        self.loop = loop
        self.ranks = ranks
        self.node = node
        self.stale = stale
        self.out = out
        self.spec_path = spec_path
        self.learned = learned   # the spec's learned router (None: keyword rules alone)
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="request")

    def prepare(self, spec: SwarmSpec, model_id: str, query: str | None = None) -> Request:
        """One request's plan: its experts (narrowed by the spec's routes, if any) and the name of its run
        directory, which is made when it starts (a refused request leaves nothing behind)."""
        model = None
        route = task_route(spec, self.learned) if spec.routes or spec.router else None
        if route is not None:
            spec, model = narrowed(spec, route), route.model
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{model_id.replace('/', '-')}-{secrets.token_hex(3)}"
        return Request(spec, self.out / name, model, route, query=query)

    async def run(self, req: Request, on_progress: Callable[[Progress], None] = lambda p: None) -> Outcome:
        """Run the request to its final answer (RequestCancelled when it is given up)."""

        def on_step(records: list[MessageRecord], end: StepEnd) -> None:
            replies = [{"expert": r.expert, "status": r.status, "content": r.content,
                        "prompt_tokens": r.extra.get("prompt_tokens", 0),
                        "completion_tokens": r.extra.get("completion_tokens", 0), "tok_s": r.extra.get("tok_s", 0.0)}
                       for r in records if r.role == "expert"]
            p = Progress(end.round, end.label, end.answered or 0, end.turns or 0, replies)
            req.steps.append(p)
            req.prompt_tokens += sum(r["prompt_tokens"] for r in replies)
            req.completion_tokens += sum(r["completion_tokens"] for r in replies)
            self.loop.call_soon_threadsafe(on_progress, p)

        recorder = _Recorder(req.run_dir, req.spec, self.ranks, self.node, req.route, stale=self.stale)
        recorder.on_step = on_step
        strategy = get_strategy(req.spec.strategy)(req.spec)
        native = NativeRun(strategy, recorder, _StepRunner(self, req), req.model, say=lambda line: None,
                           reader=self.reader, query=req.query, recall=self.recall)

        def execute() -> tuple[Final, float]:
            t0 = time.perf_counter()
            create_run_dir(req.run_dir, req.spec, self.spec_path)
            try:
                return native.execute(), time.perf_counter() - t0
            except RequestCancelled:
                mark_status(req.run_dir, "cancelled")
                raise

        try:
            final, seconds = await asyncio.wrap_future(self.pool.submit(execute))
        except asyncio.CancelledError:
            req.cancel("the request was cancelled")
            raise
        return Outcome(final, req.run_dir, req.steps, req.prompt_tokens, req.completion_tokens, seconds)

    async def step(self, turns: Sequence[Turn], timeout: float, model: str | None) -> dict[str, TurnResult | None]:
        """A step's turns at once, on the event loop; a turn with no reply in time is None (recorded late)."""

        async def one(t: Turn) -> TurnResult | None:
            try:
                return await self.requester.request(t.expert, t.messages, timeout=timeout, model=model,
                                                    sampling=t.sampling, passages=t.passages)
            except (ExpertTimeout, KeyError, RuntimeError):
                return None

        results = await asyncio.gather(*(one(t) for t in turns))
        return {t.expert: r for t, r in zip(turns, results, strict=True)}


class _StepRunner:
    """NativeRun's StepRunner in the worker thread: each step goes to the event loop and is waited for."""

    def __init__(self, runner: Runner, req: Request):
        self.runner = runner
        self.req = req

    def run_step(self, turns: list[Turn], timeout: float, on_result: Callable[[TurnResult], None],
                 model: str | None = None) -> dict[str, TurnResult]:
        turns = [self._sampled(t) for t in turns]
        with self.req._lock:
            if self.req.cancelled is not None:
                raise RequestCancelled(self.req.cancelled)
            fut = asyncio.run_coroutine_threadsafe(self.runner.step(turns, timeout, model), self.runner.loop)
            self.req._step = fut
        try:
            got = fut.result()
        except concurrent.futures.CancelledError:
            raise RequestCancelled(self.req.cancelled or "cancelled") from None
        results = {e: r for e, r in got.items() if r is not None}
        for r in results.values():
            on_result(r)
        return results

    def _sampled(self, turn: Turn) -> Turn:
        """The turn with the request's temperature and max_tokens (the request's spec has them per expert): the
        expert ranks loaded their experts with the spec's own."""
        e = self.req.spec.expert(turn.expert)
        base = turn.sampling or Sampling(e.temperature, e.seed)
        return dataclasses.replace(turn, sampling=dataclasses.replace(base, max_tokens=e.max_tokens))
