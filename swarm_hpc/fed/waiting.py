"""How a rank waits for a message without spinning: probe, then sleep, not at all right after a message and then
doubling up to a cap (Open MPI's blocking calls busy-poll a core, which the clients need for training).

The cap is `SWARM_HPC_WAIT_MAX` seconds (default 0.02, as for the swarm's ranks): it is also the most a message
can wait to be noticed, so a round of a few milliseconds of training pays up to about twice that in wake-ups."""

from __future__ import annotations

import os
import time

FIRST, CAP = 0.0005, 0.02  # seconds


def cap() -> float:
    try:
        return min(1.0, max(0.0001, float(os.environ.get("SWARM_HPC_WAIT_MAX", CAP))))
    except ValueError:
        return CAP


class Backoff:
    def __init__(self, cap_s: float | None = None):
        self.cap = cap() if cap_s is None else cap_s
        self.delay = 0.0

    def reset(self) -> None:
        self.delay = 0.0

    def sleep(self, until: float | None = None) -> None:
        """Sleep the next back-off step (never past `until`, a time.monotonic() value)."""
        self.delay = min(self.cap, self.delay * 2 or FIRST)
        d = self.delay if until is None else min(self.delay, until - time.monotonic())
        if d > 0:
            time.sleep(d)
