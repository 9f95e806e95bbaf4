"""Signals that stop a run before its end, on rank 0: what each means and how the run ends for it.

- SIGUSR1: time is running out (the job script forwards SLURM's `--signal=B:USR1@secs` warning, or
  `scancel --signal=USR1 --batch`). The round in flight is finished and recorded, then rank 0 stops the ranks
  and exits STOP_EXIT; the summary says `requeued` (the job script requeues the job and it continues from there)
  or `stopped`. A round that would not end within $SWARM_HPC_STOP_WITHIN seconds is given up instead.
- SIGTERM: cancelled (`scancel`, or SLURM killing the job at its limit): the round in flight is given up at once;
  the summary says `cancelled` (or keeps `requeued`/`stopped` when a stop was already asked for).
- SIGINT (Ctrl-C in `swarm-hpc chat`): the round in flight is given up; the summary says `stopped`.

Expert ranks ignore SIGUSR1 (srun hands it to every task); rank 0 tells them to stop. Every finished round is
in the transcript, so `--resume` (or the requeued job) continues from the last one.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from types import FrameType

STOP_EXIT = 3              # rank 0's exit code after a SIGUSR1 stop: "requeue me" to the job script
STOP_WITHIN_DEFAULT = 60.0  # seconds to end the round in flight after SIGUSR1, when the job script does not say


class Stopped(Exception):
    """Raised on rank 0 where the run must stop; `status` goes into summary.json."""

    def __init__(self, status: str, why: str):
        super().__init__(why)
        self.status = status
        self.why = why


@dataclass
class StopRequest:
    """Rank 0's signal handlers and what they asked for."""

    status: str | None = None   # set once a stop was asked for: requeued | stopped | cancelled
    why: str = ""

    @staticmethod
    def early() -> None:
        """Before MPI starts (the rank is not known yet): a SIGUSR1 is remembered, not fatal."""
        signal.signal(signal.SIGUSR1, _remember)

    def install_rank0(self) -> None:
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_int)
        if _early_usr1:
            self._on_usr1(signal.SIGUSR1, None)

    @staticmethod
    def install_expert() -> None:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    def disarm(self) -> None:
        """The run has ended on its own: a late SIGUSR1 no longer matters, SIGTERM and SIGINT act as usual."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.status = None
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def after_step(self) -> None:
        """Called when a step is recorded: stop here if a stop was asked for."""
        if self.status is not None:
            self._raise()

    # --- handlers ---------------------------------------------------------------------------------------------

    def _on_usr1(self, signum: int, frame: FrameType | None) -> None:
        if self.status is not None:
            return
        self.status = "requeued" if os.environ.get("SWARM_HPC_ON_STOP") == "requeue" else "stopped"
        self.why = "time is running out (SIGUSR1): the round in flight ends, then the run stops"
        within = _seconds(os.environ.get("SWARM_HPC_STOP_WITHIN"), STOP_WITHIN_DEFAULT)
        signal.setitimer(signal.ITIMER_REAL, max(within, 0.1))

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        self.why = "time is running out (SIGUSR1), and the round in flight did not end in time: it is given up"
        self._raise()

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        if self.status is None:
            self.status, self.why = "cancelled", "cancelled (SIGTERM): the round in flight is given up"
        self._raise()

    def _on_int(self, signum: int, frame: FrameType | None) -> None:
        if self.status is None:
            self.status, self.why = "stopped", "stopped (Ctrl-C): the round in flight is given up"
        self._raise()

    def _raise(self) -> None:
        """Stop once: later signals are ignored while the ranks are told to stop and the summary is written."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig in (signal.SIGUSR1, signal.SIGALRM, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        assert self.status is not None
        raise Stopped(self.status, self.why)


_early_usr1 = False


def _remember(signum: int, frame: FrameType | None) -> None:
    global _early_usr1
    _early_usr1 = True


def _seconds(text: str | None, default: float) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default
