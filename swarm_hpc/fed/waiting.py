"""How a rank waits for a message without spinning: probe, then sleep, not at all right after a message and then
doubling up to a cap (Open MPI's blocking calls busy-poll a core, which the clients need for training)."""

from __future__ import annotations

import time

FIRST, CAP = 0.0005, 0.02  # seconds


class Backoff:
    def __init__(self, cap: float = CAP):
        self.cap = cap
        self.delay = 0.0

    def reset(self) -> None:
        self.delay = 0.0

    def sleep(self, until: float | None = None) -> None:
        """Sleep the next back-off step (never past `until`, a time.monotonic() value)."""
        self.delay = min(self.cap, self.delay * 2 or FIRST)
        d = self.delay if until is None else min(self.delay, until - time.monotonic())
        if d > 0:
            time.sleep(d)
