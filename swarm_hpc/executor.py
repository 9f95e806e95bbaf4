"""Starting the ranks, submitit's way: an executor's `submit()` starts a swarm and returns a `Job` handle (state,
run directory, log, wait, cancel). `LocalExecutor` runs mpiexec on this machine; `SlurmExecutor`
(swarm_hpc/slurm/executor.py) submits an sbatch script whose srun starts the very same entry point,
`python -m swarm_hpc.mpi.rank RUN_DIR`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from swarm_hpc import procs
from swarm_hpc.errors import EXIT_USAGE, UserError
from swarm_hpc.procs import session_members

# Open MPI as root on one machine: allow root, allow more ranks than cores, do not pin ranks to cores
# (llama.cpp threads must be free to move), and let idle ranks yield the CPU.
OPEN_MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
    "OMPI_MCA_hwloc_base_binding_policy": "none",
    "OMPI_MCA_mpi_yield_when_idle": "1",
}

# States after which a job does not change any more (SLURM's names; a local job ends COMPLETED, FAILED or CANCELLED).
FINISHED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                      "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"})


class JobTimeout(UserError):
    """`Job.wait(timeout)` gave up; the job goes on."""

    def __init__(self, job_id: str, timeout: float, fix: str):
        super().__init__(f"job {job_id}", f"still not finished after {timeout:g} s", fix)


class Job(ABC):
    """A started swarm. `id`, `run_dir` and `log` (None: output goes to this terminal) describe it; `state()` is
    PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ... or UNKNOWN."""

    final_states: ClassVar[frozenset[str]] = FINISHED
    wait_fix: ClassVar[str] = "wait longer, or cancel it"

    @property
    @abstractmethod
    def id(self) -> str: ...

    @property
    @abstractmethod
    def run_dir(self) -> Path | None: ...

    @property
    @abstractmethod
    def log(self) -> Path | None: ...

    @abstractmethod
    def state(self) -> str: ...

    @abstractmethod
    def cancel(self) -> None: ...

    @property
    def poll_interval(self) -> float:
        """Seconds between looks while waiting."""
        return 1.0

    def done(self) -> bool:
        return self.state() in self.final_states

    def follow(self, interval: float = 1.0, timeout: float | None = None) -> Iterator[str]:
        """The job's state every `interval` seconds; ends after its final state, or when `timeout` has passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.state()
            yield state
            left = float("inf") if deadline is None else deadline - time.monotonic()
            if state in self.final_states or left <= 0:
                return
            time.sleep(min(interval, left))

    def wait(self, timeout: float | None = None) -> str:
        """Block until the job has ended; its final state. JobTimeout (a UserError) after `timeout` seconds."""
        *_, state = self.follow(self.poll_interval, timeout)
        if state not in self.final_states:
            raise JobTimeout(self.id, timeout or 0, self.wait_fix)
        return state


class Executor(ABC):
    """Starts swarms; every executor's `submit(...)` returns a `Job`."""

    @abstractmethod
    def submit(self, *args: Any, **kwargs: Any) -> Job: ...


RANK_MODULE = "swarm_hpc.mpi.rank"


def rank_command(run_dir: Path, resume: bool = False, module: str = RANK_MODULE) -> list[str]:
    """The command every rank runs, under mpiexec or srun (`module`: another entry point, e.g. swarm_hpc.fed.rank)."""
    return [sys.executable, "-m", module, str(run_dir)] + (["--resume"] if resume else [])


def wait_and_exit(job: LocalJob, hint: str) -> None:
    """Wait for local ranks and leave as they did: return on success; on failure exit with their code, after one
    line ending in `hint` (what is kept, how to go on), unless rank 0 has said what was wrong (EXIT_USAGE)."""
    job.wait()
    rc = job.returncode or 0
    if rc not in (0, EXIT_USAGE):
        print(f"swarm-hpc: the ranks exited with code {rc}; {hint}", file=sys.stderr)
    if rc != 0:
        sys.exit(rc)


@dataclass
class LocalJob(Job):
    """mpiexec and its ranks on this machine, in a session (and process group) of their own."""

    process: subprocess.Popen[bytes]
    directory: Path
    kill_after: float = 5.0  # cancel(): seconds between SIGTERM and SIGKILL
    stuck_after: float = 5.0  # wait(): seconds mpiexec may stay once every rank has exited (see _stuck)
    cancelled: bool = field(default=False, init=False)
    ranks_rc: int | None = field(default=None, init=False)   # set when mpiexec had to be ended (see _stuck)
    _ranks: dict[int, int] = field(default_factory=dict, init=False)   # pid -> MPI rank, as seen alive

    @property
    def id(self) -> str:
        return str(self.process.pid)

    @property
    def run_dir(self) -> Path:
        return self.directory

    @property
    def log(self) -> None:
        return None

    @property
    def returncode(self) -> int | None:
        rc = self.process.poll()
        return self.ranks_rc if rc is not None and self.ranks_rc is not None else rc

    def state(self) -> str:
        rc = self.returncode
        if rc is None:
            return "RUNNING"
        return "CANCELLED" if self.cancelled else "COMPLETED" if rc == 0 else "FAILED"

    def wait(self, timeout: float | None = None) -> str:
        """Block until mpiexec has exited. Ctrl-C cancels the job: its processes are out of the terminal's reach."""
        deadline = None if timeout is None else time.monotonic() + timeout
        stuck_since: float | None = None
        try:
            while self.process.poll() is None:
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobTimeout(self.id, timeout or 0, self.wait_fix)
                stuck_since = (stuck_since or time.monotonic()) if self._stuck() else None
                if stuck_since is not None and time.monotonic() - stuck_since >= self.stuck_after:
                    self._end_stuck()
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(0.25)
        except KeyboardInterrupt:
            self.cancel()
            raise
        return self.state()

    def _stuck(self) -> bool:
        """Every rank has exited but mpiexec has not: Open MPI 4.1's mpiexec can hang on a futex after an
        MPI_Abort (seen when a rank had been SIGSTOPped), its ranks left as zombies it never reaps."""
        kids = procs.children(self.process.pid)
        for pid, (state, _) in kids.items():
            if state != "Z" and pid not in self._ranks and (rank := procs.mpi_rank(pid)) is not None:
                self._ranks[pid] = rank
        return bool(kids) and all(state == "Z" for state, _ in kids.values())

    def _end_stuck(self) -> None:
        """End a stuck mpiexec; the job's exit code is rank 0's, read from its zombie (as mpiexec would report)."""
        kids = procs.children(self.process.pid)
        zero = next((pid for pid, rank in self._ranks.items() if rank == 0 and pid in kids), min(kids, default=0))
        status = kids.get(zero, ("Z", 0))[1]
        self.ranks_rc = os.waitstatus_to_exitcode(status) if status else 0
        print(f"swarm-hpc: note: mpiexec was still there {self.stuck_after:g} s after every rank had exited (an Open "
              "MPI hang); it was ended", file=sys.stderr, flush=True)
        for pid in [self.process.pid, *session_members(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def cancel(self) -> None:
        """SIGTERM to the process group (mpiexec ends its ranks, which Open MPI gives groups of their own), then
        SIGKILL to every process of the session still there after `kill_after` seconds; returns when none is."""
        self.cancelled = self.cancelled or self.process.poll() is None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        if not self._ends_within(self.kill_after):
            for pid in session_members(self.process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._ends_within(5.0)
        self.process.wait()

    def _ends_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.process.poll() is None or session_members(self.process.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


def _end_with_parent(parent: int, prctl: Callable[..., int] | None) -> None:
    """Run in the child before exec: it gets SIGTERM when `parent` ends, even by SIGKILL, so that a killed
    `swarm-hpc run` does not leave its ranks running (they are out of reach of signals to its group)."""
    if prctl is not None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent ended before prctl
        os._exit(1)


@functools.cache
def _is_open_mpi(mpiexec: str) -> bool:
    out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    return "Open MPI" in out or "OpenRTE" in out


@dataclass
class LocalExecutor(Executor):
    """Runs the ranks on this machine with mpiexec."""

    mpiexec: str = field(default_factory=lambda: shutil.which("mpiexec") or "")

    def _check(self) -> None:
        if not self.mpiexec:
            raise UserError("mpiexec", "not found on PATH",
                            "install Open MPI: `bash install.sh` (apt package openmpi-bin)")

    def is_open_mpi(self) -> bool:
        return _is_open_mpi(self.mpiexec)

    def command(self, run_dir: Path, np: int, resume: bool = False, module: str = RANK_MODULE) -> list[str]:
        """mpiexec and the ranks' command; Open MPI's --quiet leaves a rank's own one-line error alone on stderr."""
        self._check()
        quiet = ["--quiet"] if self.is_open_mpi() else []
        return [self.mpiexec, *quiet, "-n", str(np)] + rank_command(run_dir, resume, module)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.is_open_mpi():
            for k, v in OPEN_MPI_ENV.items():
                env.setdefault(k, v)
        return env

    def submit(self, run_dir: Path, np: int, resume: bool = False, extra_args: Sequence[str] = (),
               module: str = RANK_MODULE) -> LocalJob:
        """Start the ranks in a session (and process group) of their own, so that cancel() reaches every one; their
        output streams to this terminal as it comes. Like a batch job they read no input (stdin is /dev/null). They
        end when the thread that called submit() does (Linux), so call it from one that waits for them."""
        cmd = self.command(run_dir, np, resume, module) + list(extra_args)
        prctl = getattr(ctypes.CDLL(None), "prctl", None)  # looked up before the fork: no dlsym in the child
        proc = subprocess.Popen(cmd, env=self.env(), stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=functools.partial(_end_with_parent, os.getpid(), prctl))
        return LocalJob(proc, run_dir)
