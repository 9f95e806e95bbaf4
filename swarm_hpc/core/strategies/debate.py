"""debate: parallel rounds, every expert sees its peers' previous answers, then a final synthesis (or, with
`final = "vote"`, a vote over the last round)."""

from __future__ import annotations

from swarm_hpc.core.strategies.base import Strategy, StrategyRun


class Debate(Strategy):
    name = "debate"

    def run(self) -> StrategyRun:
        last = yield from self.parallel_rounds()
        return (yield from self.conclude(last, "The experts' answers after the debate"))
