"""What every MPI rank runs: `python -m swarm_hpc.mpi.rank RUN_DIR [--resume] [--chat]` (under mpiexec or srun).

Every rank starts up together (swarm_hpc/mpi/startup.py); ranks >= 1 then serve their expert
(swarm_hpc/mpi/exchange.py), and rank 0 runs the spec's engine over one Exchange: the native strategy loop
(swarm_hpc/core/native.py) or the AutoGen team (swarm_hpc/autogen/runner.py). Both record the run with one
Recorder (swarm_hpc/core/recorder.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarm_hpc.core import report
from swarm_hpc.core.dialogue import Final
from swarm_hpc.core.recorder import FINAL, MessageRecord, Recorder, StepEnd, is_complete, mark_status
from swarm_hpc.core.routing import narrowed
from swarm_hpc.core.rundir import load_snapshot
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.errors import UserError
from swarm_hpc.memory.retrieval import LexicalRetriever, RetrieverFor
from swarm_hpc.mpi.exchange import Exchange
from swarm_hpc.mpi.expert_loop import serve, serve_batch
from swarm_hpc.mpi.startup import Startup, StartupError, start_ranks
from swarm_hpc.mpi.stopping import STOP_EXIT, Stopped, StopRequest

if TYPE_CHECKING:
    from swarm_hpc.knowledge.reader import Library


class StoppableRecorder(Recorder):
    """A Recorder that ends the run after the step it has just written, when a stop was asked for (SIGUSR1)."""

    stop: StopRequest = StopRequest()

    def write_step(self, records: list[MessageRecord], end: StepEnd) -> None:
        super().write_step(records, end)
        self.stop.after_step()

    def finish(self, step_no: int, final: Final) -> None:
        self.stop.disarm()  # the final answer is being written: the run ends now anyway
        super().finish(step_no, final)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swarm_hpc.mpi.rank", description=__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--chat", action="store_true", help="rank 0 reads the rounds' messages from standard input")
    ap.add_argument("--eval", metavar="K/N", nargs="?", const="0/1",
                    help="RUN_DIR is an eval folder: rank 0 runs shard K of N of its questions (swarm_hpc/eval)")
    ap.add_argument("--serve", action="store_true",
                    help="RUN_DIR is a service folder: rank 0 serves the swarm over HTTP until a signal (swarm_hpc/serve)")
    args = ap.parse_args(argv)
    StopRequest.early()

    from mpi4py import MPI

    comm = MPI.COMM_WORLD

    def load() -> tuple[SwarmSpec, Path]:
        try:
            return load_snapshot(args.run_dir)
        except Exception as e:
            raise ValueError(f"{args.run_dir}: {e}") from None

    try:
        started = start_ranks(comm, load)
    except StartupError as e:
        if comm.Get_rank() == 0:
            print(f"swarm-hpc: error: {e}", file=sys.stderr, flush=True)
        return 2
    if comm.Get_rank() != 0:
        StopRequest.install_expert()
        if started.group is not None:
            serve_batch(started.channel, started.group)
        else:
            serve(started.channel, started.expert)
        return 0
    stop = StopRequest()
    stop.install_rank0()
    exchange = Exchange(started.channel, started.where, started.expert)
    stopped: Stopped | None = None
    try:
        if args.serve:
            serve_http(started, exchange, args.run_dir)
        elif args.eval is not None:
            evaluate(started, exchange, args.run_dir, args.eval, stop)
        else:
            coordinate(started, exchange, args.run_dir, resume=args.resume, chat=args.chat, stop=stop)
        stop.disarm()
    except UserError as e:
        print(f"swarm-hpc: error: {e}", file=sys.stderr, flush=True)
        return 2
    except Stopped as s:
        stopped = s
        if args.serve:
            print(f"swarm-hpc: {s.why}; every request's finished rounds are in {args.run_dir}/requests/",
                  file=sys.stderr, flush=True)
        else:
            mark_status(args.run_dir, s.status)
            more = {"requeued": "the job continues it when SLURM starts it again",
                    "cancelled": "continue it with `swarm-hpc submit --resume` (or `run --resume`)"}
            print(f"\nswarm-hpc: {s.why}; summary status {s.status!r}; every finished round is in the transcript "
                  f"({more.get(s.status, 'continue it with --resume')})", file=sys.stderr, flush=True)
    finally:
        cancelled = stopped is not None and stopped.status == "cancelled"
        if not exchange.stop(wait=2.0 if cancelled else 30.0):  # a rank may be hung for good: end the job
            if cancelled:  # the other ranks got SIGTERM too: do not wait for them in MPI's finalize
                os._exit(143)
            print("swarm-hpc: warning: some ranks did not stop in time; aborting them", file=sys.stderr, flush=True)
            comm.Abort(0)
    if stopped is None:
        return 0
    if stopped.status == "cancelled":
        return 143
    if stopped.status == "stopped" and args.chat:
        return 0  # Ctrl-C ends a chat: what was said is in the transcript
    return STOP_EXIT


def coordinate(started: Startup, exchange: Exchange, run_dir: Path, resume: bool, chat: bool,
               stop: StopRequest | None = None) -> None:
    """Rank 0: route the task, then run the spec's engine and record it."""
    if resume and is_complete(run_dir):
        report.say(f"{run_dir}: the run is complete already (final answer in {run_dir / FINAL}); nothing to do")
        return
    spec, autogen = started.spec, started.spec.engine == "autogen" and not chat
    report.say(f"swarm: {len(spec.experts)} experts on {len(started.infos)} ranks ("
               + ", ".join(f"{'+'.join(i.batch) or i.expert}@rank{i.rank}/{i.node} {i.load_seconds:.2f}s"
                           for i in started.infos if i.expert)
               + "), " + ("engine autogen (ParallelConversation team)" if autogen else f"strategy {spec.strategy}")
               + f", {spec.rounds} round(s)")
    # a chat's messages are not routed
    route = started.route if (spec.routes or spec.router) and not chat else None
    if route is not None:
        report.say(f"routing: {route.reason}")
        spec = narrowed(spec, route)
    labels: dict[str, Any] = {}
    if autogen:
        labels = {"engine": "autogen", "strategy": "autogen ParallelConversation", "team": "ParallelConversation"}
    recorder = StoppableRecorder(run_dir, spec, started.infos, exchange.node, route, stale=lambda: exchange.stale,
                                 labels=labels)
    recorder.stop = stop or StopRequest()
    model = route.model if route is not None else None
    with reading(started, run_dir) as library, recalling(started, run_dir) as recall:
        if autogen:
            from swarm_hpc.autogen.runner import AutogenRun

            AutogenRun(spec, started.spec, started.spec_dir, recorder, exchange, model,
                       reader=library, recall=recall).execute(resume=resume)
            return
        from swarm_hpc.core.native import NativeRun
        from swarm_hpc.core.strategies import Strategy, get_strategy

        strategy: Strategy
        if chat:
            from swarm_hpc.core.strategies.chat import Chat, read_stdin

            strategy = Chat(spec, read_stdin)
        else:
            strategy = get_strategy(spec.strategy)(spec)
        NativeRun(strategy, recorder, exchange, model, reader=library, recall=recall).execute(resume=resume)


@contextlib.contextmanager
def reading(started: Startup, folder: Path) -> Iterator[Library | None]:
    """The spec's [knowledge] indexes and their embedding model on rank 0 while the engine runs (None without
    [knowledge]); a missing or damaged index is a UserError naming the folder's spec snapshot."""
    if not started.spec.knowledge.enabled:
        yield None
        return
    from swarm_hpc.knowledge.reader import Library

    library = Library(started.spec, started.spec_dir, str(folder / "spec.json"))
    try:
        yield library
    finally:
        library.close()


@contextlib.contextmanager
def recalling(started: Startup, folder: Path) -> Iterator[RetrieverFor]:
    """What ranks the memory store's facts for a task on rank 0: by meaning (swarm_hpc/knowledge/recall.py: minilm,
    loaded on the first recall and kept while the engine runs), or BM25 with `[memory] retriever = "bm25"`, without
    a store, or where minilm is not installed (said once in the run's log)."""
    memory = started.spec.memory
    if memory.store is None or memory.recall == 0 or memory.retriever == "bm25":
        yield LexicalRetriever
        return
    from swarm_hpc.knowledge.recall import Recall

    with Recall(str(folder / "spec.json"), "memory.retriever", say=report.say) as recall:
        yield recall


def serve_http(started: Startup, exchange: Exchange, folder: Path) -> None:
    """Rank 0 of `swarm-hpc serve`: the OpenAI-compatible endpoint (swarm_hpc/serve/server.py) until a signal,
    which ends it as a stop ends a run (Stopped: cancelled, requeued or stopped)."""
    from swarm_hpc.serve.server import run_service

    learned = None
    if started.spec.router is not None:  # the learned router, for every request's route (its model stays loaded)
        from swarm_hpc.fed.router import LearnedRouter

        learned = LearnedRouter(started.spec.router.model, started.spec_dir)
    try:
        with reading(started, folder) as library, recalling(started, folder) as recall:
            how = run_service(folder, exchange, started.infos, exchange.node, lambda: exchange.stale,
                              learned=learned, reader=library, recall=recall)
    finally:
        if learned is not None:
            learned.close()
    why = {"cancelled": "the service was stopped (SIGTERM or Ctrl-C)",
           "requeued": "the service stopped before its time limit (SIGUSR1)",
           "stopped": "the service stopped before its time limit (SIGUSR1)"}[how]
    raise Stopped(how, why)


def evaluate(started: Startup, exchange: Exchange, out: Path, shard: str, stop: StopRequest) -> None:
    """Rank 0 of an eval: every question of shard K/N, every arm (swarm_hpc/eval/engine.py). A stop (SIGUSR1,
    SIGTERM) ends it after (or in) the step in flight, like a run; the eval resumes where it stopped."""
    from swarm_hpc.eval.engine import EvalRun
    from swarm_hpc.eval.plan import load_plan

    k, _, n = shard.partition("/")
    if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
        raise UserError("--eval", f"{shard!r} is not a shard K/N", "e.g. --eval 0/4 (K from 0 to N-1)")
    plan = load_plan(out)
    report.say(f"eval: {len(plan.questions)} questions x {len(plan.arms)} arms ({', '.join(a.name for a in plan.arms)}), "
               f"shard {k}/{n}, {len(started.spec.experts)} experts on {len(started.infos)} ranks")

    class EvalRecorder(StoppableRecorder):
        def finish(self, step_no: int, final: Final) -> None:
            Recorder.finish(self, step_no, final)   # one question-arm ends, the eval goes on: stay armed

    def recorder(run_dir: Path, spec: SwarmSpec) -> Recorder:
        r = EvalRecorder(run_dir, spec, started.infos, exchange.node, stale=lambda: exchange.stale)
        r.stop = stop
        return r

    with reading(started, out) as library, recalling(started, out) as recall:
        EvalRun(out, plan, started.spec, exchange, recorder, reader=library, recall=recall).execute((int(k), int(n)))


if __name__ == "__main__":
    sys.exit(main())
