"""vote: every expert answers on its own (then, if rounds > 1, revises after seeing the others); the last
round's answers are voted on (swarm_hpc/core/strategies/tally.py)."""

from __future__ import annotations

from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.core.strategies.base import Strategy, StrategyRun
from swarm_hpc.core.strategies.tally import tally

VOTE_INSTRUCTION = "Give only your answer, as short as possible (a word, a number or one sentence)."


class Vote(Strategy):
    name = "vote"
    own_instruction = VOTE_INSTRUCTION

    def __init__(self, spec: SwarmSpec):
        super().__init__(spec)
        # agreeing with a peer's answer, or keeping one's own, is what a vote is for: only loops and echoes of
        # the task are left out of the tally
        self.dialogue.echo_of_answers = False

    def run(self) -> StrategyRun:
        last = yield from self.parallel_rounds()
        return tally(list(last.values()))


__all__ = ["Vote", "tally"]
