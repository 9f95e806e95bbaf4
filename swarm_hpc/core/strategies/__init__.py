"""Strategies: how the experts take turns. Each is one module with one `Strategy` subclass.

A strategy's `run()` is a generator: it yields a `Step` (turns that run at the same time), receives the
replies as {expert: Reply}, and finally returns a `Final`. Because a strategy is a pure function of the
replies it received, `--resume` replays the transcript's finished steps into it and carries on live.
"""

from __future__ import annotations

from swarm_hpc.core.strategies.base import Strategy
from swarm_hpc.core.strategies.debate import Debate
from swarm_hpc.core.strategies.moa import MixtureOfAgents
from swarm_hpc.core.strategies.program import Program
from swarm_hpc.core.strategies.round_robin import RoundRobin
from swarm_hpc.core.strategies.self_consistency import SelfConsistency
from swarm_hpc.core.strategies.verify import Verify
from swarm_hpc.core.strategies.vote import Vote

STRATEGIES: dict[str, type[Strategy]] = {
    "debate": Debate,
    "vote": Vote,
    "moa": MixtureOfAgents,
    "round-robin": RoundRobin,
    "self-consistency": SelfConsistency,
    "verify": Verify,
    "program": Program,
}


def get_strategy(name: str) -> type[Strategy]:
    return STRATEGIES[name]


__all__ = ["STRATEGIES", "Strategy", "get_strategy"]
