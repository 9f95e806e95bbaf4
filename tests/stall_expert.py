"""Test-only fault injection, outside the product: SWARM_HPC_TEST_STALL=name:seconds[,name:seconds] makes those
experts sleep that long before each turn (a cancel from rank 0 still ends the sleep). conftest.py installs it
on every rank through the product's extension point, SWARM_HPC_EXPERT_WRAPPER=stall_expert:wrap."""

from __future__ import annotations

import os
import time
from typing import Any

from swarm_hpc.core.turns import Generation


def stall_seconds(name: str) -> float:
    for part in os.environ.get("SWARM_HPC_TEST_STALL", "").split(","):
        expert, _, seconds = part.strip().partition(":")
        if expert == name and seconds:
            return float(seconds)
    return 0.0


class Stalled:
    """An expert that stalls before each turn, then answers as the wrapped one does."""

    def __init__(self, expert: Any, seconds: float):
        self.expert = expert
        self.seconds = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self.expert, name)

    def answer(self, messages: list[dict[str, str]], **kw: Any) -> Generation:
        end = time.monotonic() + self.seconds
        cancelled = kw.get("cancelled")
        while time.monotonic() < end:
            if cancelled is not None and cancelled():
                return Generation("", "cancelled", error="cancelled during the test stall")
            time.sleep(0.01)
        return self.expert.answer(messages, **kw)


def wrap(expert: Any) -> Any:
    seconds = stall_seconds(expert.name)
    return Stalled(expert, seconds) if seconds else expert
