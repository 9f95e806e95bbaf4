"""self-consistency: each expert draws `rounds` answers on its own (sampled: its temperature, or SAMPLE_TEMPERATURE
if it is greedy, and a new seed each time), and all answers are voted on. No expert sees another's answer: the
baseline a swarm must beat on one machine, since one rank with the same token budget can do it alone."""

from __future__ import annotations

from swarm_hpc.core.dialogue import Reply, Step
from swarm_hpc.core.spec import ExpertSpec
from swarm_hpc.core.strategies.base import Strategy, StrategyRun
from swarm_hpc.core.strategies.tally import tally
from swarm_hpc.core.turns import Sampling

SAMPLE_TEMPERATURE = 0.7   # for a greedy expert: greedy draws would all be the same answer


def draw_sampling(expert: ExpertSpec, draw: int) -> Sampling:
    """How `expert` samples its draw number `draw` (1, 2, ...)."""
    return Sampling(expert.temperature if expert.temperature > 0 else SAMPLE_TEMPERATURE, expert.seed + draw)


class SelfConsistency(Strategy):
    name = "self-consistency"

    def run(self) -> StrategyRun:
        d = self.dialogue
        answers: list[Reply] = []
        for draw in range(1, self.spec.rounds + 1):
            turns = []
            for n in d.names:
                sampling = draw_sampling(self.spec.expert(n), draw)
                turns.append(d.fresh(n, f"Task: {self.spec.task}\n\n{self.instruction}", [], sampling))
            out = yield Step(draw, f"draw {draw}", turns)
            answers += out.values()
        return tally(answers)
