"""Starting the ranks. An executor turns a run directory into a command you can print before running it:
`LocalExecutor` uses mpiexec on this machine; the SLURM executor (swarm_hpc/slurm) renders an sbatch script
whose srun starts the very same entry point, `python -m swarm_hpc.mpi.rank RUN_DIR`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from swarm_hpc.errors import UserError

# Open MPI as root on one machine: allow root, allow more ranks than cores, do not pin ranks to cores
# (llama.cpp threads must be free to move), and let idle ranks yield the CPU.
OPEN_MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMPI_MCA_hwloc_base_binding_policy": "none",
    "OMPI_MCA_mpi_yield_when_idle": "1",
}


def rank_command(run_dir: Path, resume: bool = False) -> list[str]:
    """The command every rank runs, under mpiexec or srun."""
    return [sys.executable, "-m", "swarm_hpc.mpi.rank", str(run_dir)] + (["--resume"] if resume else [])


@dataclass
class LocalExecutor:
    """Runs the ranks on this machine with mpiexec."""

    mpiexec: str = field(default_factory=lambda: shutil.which("mpiexec") or "")

    def _check(self) -> None:
        if not self.mpiexec:
            raise UserError("mpiexec", "not found on PATH", "install Open MPI: `bash install.sh` (apt package openmpi-bin)")

    def is_open_mpi(self) -> bool:
        out = subprocess.run([self.mpiexec, "--version"], capture_output=True, text=True).stdout
        return "Open MPI" in out or "OpenRTE" in out

    def command(self, run_dir: Path, np: int, resume: bool = False) -> list[str]:
        self._check()
        return [self.mpiexec, "-n", str(np)] + rank_command(run_dir, resume)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.is_open_mpi():
            for k, v in OPEN_MPI_ENV.items():
                env.setdefault(k, v)
        return env

    def run(self, run_dir: Path, np: int, resume: bool = False) -> int:
        """Start the ranks and wait; their output streams to this terminal as it comes."""
        return subprocess.run(self.command(run_dir, np, resume), env=self.env()).returncode
