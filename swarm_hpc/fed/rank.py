"""What every rank of a federated job runs: `python -m swarm_hpc.fed.rank RUN_DIR [--resume]` (mpiexec).

Start-up, where every rank must be there anyway, uses collectives: each client loads its own shard and builds its
client; a Gather (numpy int64 buffers) brings rank 0 every shard size and parameter count, and a gather of their
start-up errors (text, once); rank 0 checks them (a missing shard, a model of another size: one line, exit 2)
and Bcasts the starting model (or the checkpoint's) as one flat float64 buffer. Then rank 0 runs the rounds
(server.py) and the clients serve them (worker.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from swarm_hpc.doorbell import Doorbell
from swarm_hpc.errors import UserError
from swarm_hpc.fed import data, model, record, wire
from swarm_hpc.fed.client import DigitsClient, NumPyClient, wrapped
from swarm_hpc.fed.prepare import load_snapshot
from swarm_hpc.fed.server import CANCELLED, COMPLETE, HUNG, STOPPED, Server
from swarm_hpc.fed.spec import FedSpec
from swarm_hpc.fed.strategy import from_spec
from swarm_hpc.fed.worker import serve

EXIT_STOPPED = 3      # SIGUSR1 (the time limit is near): stopped after a round; the job script requeues
EXIT_CANCELLED = 143  # SIGTERM (scancel, Ctrl-C)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m swarm_hpc.fed.rank", description=__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    error = ""
    spec: FedSpec | None = None
    client: NumPyClient | None = None
    flat = np.zeros(0)
    shapes: list[tuple[int, ...]] = []
    n_examples = 0
    test: data.Shard | None = None
    checkpoint: tuple[int, np.ndarray, dict[str, np.ndarray]] | None = None
    try:
        spec = load_snapshot(args.run_dir)
        if size != spec.ranks_needed:
            raise UserError(str(args.run_dir), f"the run has {spec.clients} client shards, so it needs "
                            f"{spec.ranks_needed} MPI ranks, not {size}", f"start it with -n {spec.ranks_needed}")
        most = wire.max_rounds(int(comm.Get_attr(MPI.TAG_UB) or 32767))
        if spec.rounds > most:
            raise UserError(str(args.run_dir), f"{spec.rounds} rounds are more than this MPI's tags can number",
                            f"at most {most}", "rounds")
        meta = data.read_meta(args.run_dir)
        initial = model.init_params(spec.model, meta.features, len(meta.classes), spec.hidden, spec.seed)
        if rank > 0:
            shard = data.read_shard(record.shard_path(args.run_dir, rank))
            client = wrapped(DigitsClient(shard, initial, spec.seed), rank)
            params = client.get_parameters({})
            shapes, flat, n_examples = model.shapes(params), model.flatten(params), len(shard)
        else:
            held = record.lock(args.run_dir)  # noqa: F841  (held until this process ends)
            shapes, flat = model.shapes(initial), model.flatten(initial)
            test = data.read_shard(record.test_path(args.run_dir))
            checkpoint = record.load_checkpoint(args.run_dir) if args.resume else None
            if checkpoint is not None and checkpoint[1].shape != flat.shape:
                raise UserError(str(args.run_dir / record.CHECKPOINT), f"holds {checkpoint[1].size} parameters, "
                                f"the model has {flat.size}", "start a new run")
    except UserError as e:
        error = str(e)
    except Exception as e:  # a client's own get_parameters() failing, say
        error = f"rank {rank}: {type(e).__name__}: {e}"
    mine = np.array([n_examples, len(flat)], np.int64)
    table = np.zeros((size, 2), np.int64) if rank == 0 else None
    comm.Gather([mine, MPI.INT64_T], [table, MPI.INT64_T] if rank == 0 else None, root=0)
    errors = comm.gather(error, root=0)
    verdict = ""
    if rank == 0:
        assert errors is not None and table is not None
        verdict = next((e for e in errors if e), "")
        if not verdict:
            wrong = [k for k in range(1, size) if table[k, 1] != len(flat)]
            if wrong:
                verdict = (f"{args.run_dir}: client rank(s) {', '.join(map(str, wrong))} have models of "
                           f"{sorted({int(table[k, 1]) for k in wrong})} parameters, the server's has {len(flat)}: "
                           "mismatched parameter shapes (fix: give every client the same model)")
    verdict = comm.bcast(verdict, root=0)
    if verdict:
        if rank == 0:
            print(f"swarm-hpc: error: {verdict}", file=sys.stderr, flush=True)
        return 2
    assert spec is not None
    bell = Doorbell(comm)  # collective: every rank makes its own now (how ranks wait without spinning)
    if rank > 0:
        assert client is not None
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # srun passes the time-limit signal to every rank; rank 0 acts on it
        comm.Bcast([flat, MPI.DOUBLE], root=0)
        serve(comm, client, shapes, spec, bell)
        return 0
    assert test is not None
    return run_server(comm, spec, args.run_dir, flat, shapes, table, test, checkpoint, bell, meta)


def run_server(comm: Any, spec: FedSpec, run_dir: Path, flat: np.ndarray, shapes: list[tuple[int, ...]],
               table: Any, test: data.Shard, checkpoint: tuple[int, np.ndarray, dict[str, np.ndarray]] | None,
               bell: Doorbell, meta: data.Meta) -> int:
    from mpi4py import MPI

    strategy = from_spec(spec)
    done = 0
    if checkpoint is not None:
        done, flat, state = checkpoint
        strategy.load_state(state)
    record.keep_rounds_upto(run_dir, done)
    comm.Bcast([flat, MPI.DOUBLE], root=0)
    central = (record.read_json(run_dir / record.CENTRAL) or {}).get("accuracy", float("nan"))
    sizes = ", ".join(str(int(n)) for n in table[1:, 0])
    print(f"{spec.clients} clients (examples: {sizes}), {spec.strategy}, {len(flat)} parameters; "
          + (f"resuming after round {done}" if done else "starting") + f"; centralised accuracy {central:.4f}",
          flush=True)
    server = Server(comm, spec, run_dir, shapes, test, strategy, central, bell, say=lambda s: print(s, flush=True))
    for signum, status in ((signal.SIGTERM, CANCELLED), (signal.SIGUSR1, STOPPED)):
        signal.signal(signum, lambda *_, status=status: server.asked.append(status))
    t0 = time.monotonic()
    final, status = server.run(flat, done)
    server.write_summary(COMPLETE if status == HUNG else status)
    if status in (COMPLETE, HUNG):
        saved = record.save_model(run_dir, model.unflatten(final, shapes), meta)
        print(f"model: {saved}" + (" (use it as a swarm's learned router: [router] model = ...)"
                                   if spec.dataset == "router" else ""), flush=True)
    if status in (CANCELLED, STOPPED):
        print(f"{status} after round {len(record.read_rounds(run_dir))}: the checkpoint keeps it; a resumed or "
              "requeued job continues from there", flush=True)
        if status == CANCELLED:
            comm.Abort(EXIT_CANCELLED)
        return EXIT_STOPPED
    try:
        from swarm_hpc.fed.plot import plot

        plot(run_dir)
    except UserError as e:
        print(f"note: {e}", flush=True)
    summary = record.read_json(run_dir / record.SUMMARY) or {}
    print(f"final accuracy {summary.get('final_accuracy', float('nan')):.4f} (centralised {central:.4f}) after "
          f"{summary.get('rounds_done')} rounds, {time.monotonic() - t0:.1f} s", flush=True)
    if status == HUNG:
        comm.Abort(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
