"""What every MPI rank runs: `python -m swarm_hpc.rank RUN_DIR [--resume]` (under mpiexec or srun).

Rank 0 reads the run's spec snapshot, broadcasts it with the placement, and coordinates; every rank loads
its expert at the same time; ranks >= 1 then answer turns until rank 0 says stop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import report
from .ranks import StepExchange, expert_loop, load_on_rank, placement
from .runs import load_snapshot


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swarm_hpc.rank", description=__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--chat", action="store_true", help="rank 0 reads the rounds' messages from standard input")
    args = ap.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    setup: tuple | None = None
    if rank == 0:
        try:
            spec, spec_dir = load_snapshot(args.run_dir)
            setup = ("ok", spec, spec_dir, placement(spec, size))
        except Exception as e:
            setup = ("error", f"{args.run_dir}: {e}")
    setup = comm.bcast(setup, root=0)
    if setup[0] == "error":
        if rank == 0:
            print(f"swarm-hpc: error: {setup[1]}", file=sys.stderr, flush=True)
        return 2
    _, spec, spec_dir, where = setup

    expert, info = load_on_rank(spec, spec_dir, where, rank)
    infos = comm.gather(info, root=0)
    failed = None
    if rank == 0:
        bad = [i for i in infos if i.error]
        if bad:
            failed = f"expert {bad[0].expert} on rank {bad[0].rank} ({bad[0].node}) could not load: {bad[0].error}"
        else:
            how = ("engine autogen (ParallelConversation team)" if spec.engine == "autogen" and not args.chat
                   else f"strategy {spec.strategy}")
            report.say(f"swarm: {len(spec.experts)} experts on {size} ranks ("
                       + ", ".join(f"{i.expert}@rank{i.rank}/{i.node} {i.load_seconds:.2f}s" for i in infos if i.expert)
                       + f"), {how}, {spec.rounds} round(s)")
    failed = comm.bcast(failed, root=0)
    if failed:
        if rank == 0:
            print(f"swarm-hpc: error: {failed}", file=sys.stderr, flush=True)
        return 2

    if rank == 0 and spec.engine == "autogen" and not args.chat:
        from .aio import AsyncExchange
        from .autogen.runner import run_autogen

        aexchange = AsyncExchange(comm, where, expert)
        try:
            run_autogen(spec, spec_dir, args.run_dir, aexchange, infos, resume=args.resume)
        finally:
            if not aexchange.stop(size):
                print("swarm-hpc: warning: some ranks did not stop in time; aborting them", file=sys.stderr, flush=True)
                comm.Abort(0)
    elif rank == 0:
        from .coordinator import Run
        from .routed import RoutedRun, needs_routing

        exchange = StepExchange(comm, where, expert)
        strategy = None
        if args.chat:
            from .strategies.chat import Chat, read_stdin

            strategy = Chat(spec, read_stdin)
        try:
            run_class = RoutedRun if needs_routing(spec) and strategy is None else Run
            run_class(spec, args.run_dir, exchange, infos, strategy=strategy).execute(resume=args.resume)
        finally:
            if not exchange.stop(size):
                print("swarm-hpc: warning: some ranks did not stop in time; aborting them", file=sys.stderr, flush=True)
                comm.Abort(0)
    else:
        expert_loop(comm, expert)
    return 0


if __name__ == "__main__":
    sys.exit(main())
