"""debate: parallel rounds, every expert sees its peers' previous answers, then a final synthesis."""

from __future__ import annotations

from swarm_hpc.core.strategies.base import Strategy, StrategyRun


class Debate(Strategy):
    name = "debate"

    def run(self) -> StrategyRun:
        last = yield from self.parallel_rounds()
        return (yield from self.synthesis(last, "The experts' answers after the debate"))
