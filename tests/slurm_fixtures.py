"""Pytest fixtures for a real local SLURM cluster (slurm/local-cluster.sh), shared by every SLURM test.

Use them from tests/conftest.py:

    from slurm_fixtures import local_slurm, local_slurm_3nodes, slurm_clusters  # noqa: F401  (fixtures)

and in a test (mark it slow):

    @pytest.mark.slow
    def test_something(local_slurm):                      # or local_slurm_3nodes
        job = local_slurm.sbatch(script_path, "-n", "4", "-t", "2", "-o", str(out))
        result = local_slurm.wait(job, timeout=60)
        assert result.state == "COMPLETED", result

`local_slurm` is a 1-node cluster (node n1, 4 CPUs) on this host; `local_slurm_3nodes` has nodes n1..n3 (4 CPUs
each) in network namespaces. Only one local cluster runs at a time: the cluster is started the first time a test
asks for it and kept for the rest of the session; asking for the other size stops it and starts that one (about
1-3 s), so group tests by size. Everything is stopped when the session ends, also after failures.

The yielded `LocalSlurm` gives `conf` (the SLURM_CONF path), `env` (os.environ plus SLURM_CONF, for subprocess
clients), `nodes`, `state` (state folder: logs in state/log), `mpi_env` (swarm_hpc/templates/jobs/mpi-env.sh: `source` it in job
scripts, then `srun --mpi=pmix`) and `python` (sys.executable, so jobs run the venv that runs the tests).

Needs root and the Debian SLURM/munge packages; otherwise the tests are skipped, or fail when the environment
variable SWARM_HPC_REQUIRE_SLURM=1 is set (CI).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "slurm" / "local-cluster.sh"
MPI_ENV = REPO / "swarm_hpc" / "templates" / "jobs" / "mpi-env.sh"
START_TIMEOUT = 120  # seconds for `local-cluster.sh start` (it waits up to 60 s for idle nodes itself)
STOP_TIMEOUT = 90
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}


@dataclass(frozen=True)
class JobResult:
    job_id: int
    state: str  # COMPLETED, FAILED, TIMEOUT, ...
    exit_code: str  # "0:0" = exit status:signal
    seconds: float  # from the start of wait() (just after sbatch) until SLURM reported the final state


@dataclass(frozen=True)
class LocalSlurm:
    conf: Path
    nodes: tuple[str, ...]
    state: Path
    env: dict[str, str] = field(repr=False)
    mpi_env: Path = MPI_ENV
    python: str = sys.executable

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command (sbatch, squeue, ...) against this cluster; fails the test on an error."""
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited with {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def sbatch(self, script: Path | str, *args: str) -> int:
        """Submit a batch script (always give it a `-t` limit); returns the job id."""
        out = self.run("sbatch", "--parsable", *args, str(script)).stdout.strip()
        return int(out.split(";")[0])

    def job_fields(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (kept by slurmctld for MinJobAge=300 s after the job ends)."""
        out = self.run("scontrol", "-o", "show", "job", str(job_id)).stdout
        return dict(word.split("=", 1) for word in out.split() if "=" in word)

    def wait(self, job_id: int, timeout: float = 60) -> JobResult:
        """Wait until the job has finished; on timeout cancel it and fail with the cluster's view."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            fields = self.job_fields(job_id)
            state = fields.get("JobState", "")
            if state in FINISHED:
                return JobResult(job_id, state, fields.get("ExitCode", ""), time.monotonic() - start)
            time.sleep(0.25)
        fields = self.job_fields(job_id)
        subprocess.run(["scancel", str(job_id)], env=self.env, capture_output=True, timeout=10, check=False)
        raise AssertionError(f"job {job_id} did not finish within {timeout} s: {fields}\n{self.logs()}")

    def logs(self, lines: int = 20) -> str:
        """The last lines of every daemon log, for failure messages."""
        out = []
        for log in sorted((self.state / "log").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log}\n" + "\n".join(tail))
        return "\n".join(out)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root"
    needed = ["slurmctld", "slurmd", "sbatch", "munged", "ip", "nsenter"]
    missing = [c for c in needed if shutil.which(c) is None]
    if missing:
        return f"missing commands {missing} (apt-get install slurm-wlm munge)"
    return None


class LocalClusters:
    """At most one running local cluster per process; started on demand, stopped at the end."""

    def __init__(self) -> None:
        self.current: LocalSlurm | None = None
        self.base: Path | None = None

    def get(self, nodes: int) -> LocalSlurm:
        if self.current is not None and len(self.current.nodes) == nodes:
            return self.current
        self.stop()
        assert self.base is not None, "use the slurm_clusters fixture"
        state = self.base / f"slurm-{nodes}node"
        env = {**os.environ, "PYTHON": sys.executable}
        try:
            proc = subprocess.run(
                [str(SCRIPT), "start", "--nodes", str(nodes), "--state", str(state)],
                env=env, capture_output=True, text=True, timeout=START_TIMEOUT, check=False,
            )
        except BaseException:  # timeout or interrupt: do not leave daemons behind
            _stop_script(state)
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"local-cluster.sh start --nodes {nodes} failed:\n{proc.stderr}")
        conf = Path(proc.stdout.strip().removeprefix("export SLURM_CONF="))
        names = tuple((state / "node-names").read_text().split())
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.current = LocalSlurm(conf=conf, nodes=names, state=state, env={**env, "SLURM_CONF": str(conf)})
        return self.current

    def stop(self) -> None:
        if self.current is None:
            return
        state, self.current = self.current.state, None
        _stop_script(state)


def _stop_script(state: Path) -> None:
    proc = subprocess.run(
        [str(SCRIPT), "stop", "--state", str(state)], capture_output=True, text=True, timeout=STOP_TIMEOUT, check=False
    )
    if proc.returncode != 0:
        print(f"local-cluster.sh stop failed:\n{proc.stderr}", file=sys.stderr)


_CLUSTERS = LocalClusters()  # one per process, even if the fixtures are imported in several places
atexit.register(_CLUSTERS.stop)  # last resort if the session is torn down abnormally


@pytest.fixture(scope="session")
def slurm_clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalClusters]:
    reason = _missing()
    if reason:
        if os.environ.get("SWARM_HPC_REQUIRE_SLURM") == "1":
            pytest.fail(f"SWARM_HPC_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    if _CLUSTERS.base is None:
        _CLUSTERS.base = tmp_path_factory.mktemp("local-slurm")
    try:
        yield _CLUSTERS
    finally:
        _CLUSTERS.stop()


@pytest.fixture
def local_slurm(slurm_clusters: LocalClusters) -> LocalSlurm:
    """A running 1-node cluster (n1 on this host), shared by the whole session."""
    return slurm_clusters.get(1)


@pytest.fixture
def local_slurm_3nodes(slurm_clusters: LocalClusters) -> LocalSlurm:
    """A running 3-node cluster (n1..n3 in network namespaces), shared by the whole session."""
    return slurm_clusters.get(3)
