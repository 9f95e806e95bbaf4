"""MPI hello for ansible/check.yml: every rank says where it runs; rank 0 prints one JSON line."""

import json
import os
import socket

from mpi4py import MPI

comm = MPI.COMM_WORLD
me = {"rank": comm.rank, "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname()}
everyone = comm.allgather(me)
if comm.rank == 0:
    print(json.dumps({"size": comm.size, "nodes": sorted({r["node"] for r in everyone}),
                      "library": MPI.Get_library_version().split("\0")[0].splitlines()[0]}), flush=True)
