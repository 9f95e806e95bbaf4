"""What every MPI rank runs: `python -m swarm_hpc.mpi.rank RUN_DIR [--resume]` (under mpiexec or srun).

Rank 0 reads the run's spec snapshot, broadcasts it with the placement, and coordinates; every rank loads
its expert at the same time; ranks >= 1 then answer turns until rank 0 says stop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from swarm_hpc.core import report
from swarm_hpc.mpi.exchange import StartupError, StepExchange, expert_loop, start_ranks
from swarm_hpc.core.rundir import load_snapshot


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swarm_hpc.mpi.rank", description=__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--chat", action="store_true", help="rank 0 reads the rounds' messages from standard input")
    args = ap.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()

    def load() -> tuple:
        try:
            return load_snapshot(args.run_dir)
        except Exception as e:
            raise ValueError(f"{args.run_dir}: {e}") from None

    try:
        started = start_ranks(comm, load)
    except StartupError as e:
        if rank == 0:
            print(f"swarm-hpc: error: {e}", file=sys.stderr, flush=True)
        return 2
    spec, where, expert, infos, bell = started.spec, started.where, started.expert, started.infos, started.bell
    spec_dir = started.spec_dir
    if rank == 0:
        how = ("engine autogen (ParallelConversation team)" if spec.engine == "autogen" and not args.chat
               else f"strategy {spec.strategy}")
        report.say(f"swarm: {len(spec.experts)} experts on {size} ranks ("
                   + ", ".join(f"{i.expert}@rank{i.rank}/{i.node} {i.load_seconds:.2f}s" for i in infos if i.expert)
                   + f"), {how}, {spec.rounds} round(s)")

    if rank == 0 and spec.engine == "autogen" and not args.chat:
        from swarm_hpc.mpi.aio import AsyncExchange
        from swarm_hpc.autogen.runner import run_autogen

        aexchange = AsyncExchange(comm, where, expert, bell)
        try:
            run_autogen(spec, spec_dir, args.run_dir, aexchange, infos, resume=args.resume)
        finally:
            if not aexchange.stop(size):
                print("swarm-hpc: warning: some ranks did not stop in time; aborting them", file=sys.stderr, flush=True)
                comm.Abort(0)
    elif rank == 0:
        from swarm_hpc.core.native import Run
        from swarm_hpc.core.routed import RoutedRun, needs_routing

        exchange = StepExchange(comm, where, expert, bell)
        strategy = None
        if args.chat:
            from swarm_hpc.core.strategies.chat import Chat, read_stdin

            strategy = Chat(spec, read_stdin)
        try:
            run_class = RoutedRun if needs_routing(spec) and strategy is None else Run
            run_class(spec, args.run_dir, exchange, infos, strategy=strategy).execute(resume=args.resume)
        finally:
            if not exchange.stop(size):
                print("swarm-hpc: warning: some ranks did not stop in time; aborting them", file=sys.stderr, flush=True)
                comm.Abort(0)
    else:
        expert_loop(comm, expert, bell)
    return 0


if __name__ == "__main__":
    sys.exit(main())
