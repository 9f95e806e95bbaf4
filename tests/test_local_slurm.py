"""Real SLURM: start the local test cluster, submit an MPI job with sbatch, read its output file."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from slurm_fixtures import LocalSlurm, local_slurm, local_slurm_3nodes, slurm_clusters  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

RANKS = 4

# Each rank reports where it runs; rank 0 prints one JSON line into the job's output file.
HELLO = """
import json, os, socket
from mpi4py import MPI
comm = MPI.COMM_WORLD
me = {"rank": comm.rank, "node": os.environ.get("SLURMD_NODENAME"), "host": socket.gethostname(),
      "tmpdir": os.environ.get("TMPDIR"), "netns": os.readlink("/proc/self/ns/net")}
everyone = comm.allgather(me)
if comm.rank == 0:
    print("RESULT " + json.dumps({"size": comm.size, "ranks": everyone,
                                  "library": MPI.Get_library_version().split("\\0")[0].splitlines()[0]}), flush=True)
"""


def run_hello(cluster: LocalSlurm, tmp_path: Path, *sbatch_args: str) -> dict:
    pytest.importorskip("mpi4py")
    hello = tmp_path / "hello.py"
    hello.write_text(HELLO)
    job = tmp_path / "job.sh"
    job.write_text(
        "#!/bin/bash\n"
        "set -euo pipefail\n"
        f"source {shlex.quote(str(cluster.mpi_env))}\n"
        f"srun --mpi=pmix {shlex.quote(cluster.python)} {shlex.quote(str(hello))}\n"
    )
    out = tmp_path / "job.out"
    job_id = cluster.sbatch(job, "-t", "2", "-n", str(RANKS), "-D", str(tmp_path), "-o", str(out), *sbatch_args)
    result = cluster.wait(job_id, timeout=90)
    text = out.read_text(errors="replace") if out.exists() else "(no output file)"
    assert result.state == "COMPLETED" and result.exit_code == "0:0", f"{result}\n{text}\n{cluster.logs()}"
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, text
    return json.loads(lines[0].removeprefix("RESULT "))


def test_mpi_job_on_one_node(local_slurm: LocalSlurm, tmp_path: Path) -> None:  # noqa: F811
    report = run_hello(local_slurm, tmp_path)
    assert report["size"] == RANKS
    assert "Open MPI" in report["library"]
    assert sorted(r["rank"] for r in report["ranks"]) == list(range(RANKS))
    assert {r["node"] for r in report["ranks"]} == {"n1"}
    # The task prolog gave the step its own TMPDIR under the cluster's state folder.
    assert all(r["tmpdir"].startswith(str(local_slurm.state / "tmp" / "n1")) for r in report["ranks"])


def test_mpi_job_across_namespace_nodes(local_slurm_3nodes: LocalSlurm, tmp_path: Path) -> None:  # noqa: F811
    report = run_hello(local_slurm_3nodes, tmp_path, "-N", "3")
    assert report["size"] == RANKS
    nodes = {r["node"] for r in report["ranks"]}
    assert len(nodes) >= 2 and nodes <= set(local_slurm_3nodes.nodes), report
    # Ranks on different nodes really are in different network namespaces, with per-node TMPDIRs.
    by_node = {r["node"]: r for r in report["ranks"]}
    assert len({r["netns"] for r in by_node.values()}) == len(nodes), report
    assert len({r["tmpdir"] for r in by_node.values()}) == len(nodes), report
