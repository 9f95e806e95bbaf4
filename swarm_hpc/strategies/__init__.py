"""Strategies: how the experts take turns. Each is one module with one `Strategy` subclass.

A strategy's `run()` is a generator: it yields a `Step` (turns that run at the same time), receives the
replies as {expert: Reply}, and finally returns a `Final`. Because a strategy is a pure function of the
replies it received, `--resume` replays the transcript's finished steps into it and carries on live.
"""

from __future__ import annotations

from .base import Strategy
from .debate import Debate
from .moa import MixtureOfAgents
from .round_robin import RoundRobin
from .vote import Vote

STRATEGIES: dict[str, type[Strategy]] = {
    "debate": Debate,
    "vote": Vote,
    "moa": MixtureOfAgents,
    "round-robin": RoundRobin,
}


def get_strategy(name: str) -> type[Strategy]:
    return STRATEGIES[name]


__all__ = ["STRATEGIES", "Strategy", "get_strategy"]
