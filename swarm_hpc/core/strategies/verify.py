"""verify: every expert answers once and writes its arithmetic as a `Calc:` line; a checker (swarm_hpc/core/calc.py,
no model) computes each line, and the vote is over the checked answers. Verify-and-select for number answers.

An expert's checked answer is its Calc line's value when that evaluates, else its stated answer. The final answer
is the checked answer most experts reach (a plurality; a tie goes to the value that an expert also stated,
since a setup and a result that agree are the likelier right; then to a computed one over one only stated;
then to the first expert's). Without any Calc line
that evaluates, this is a plain vote (swarm_hpc/core/strategies/tally.py). `swarm-hpc eval` showed why: small
models set arithmetic up right more often than they carry it out right.
"""

from __future__ import annotations

from collections import Counter

from swarm_hpc.core.answers import answer_key, format_number
from swarm_hpc.core.calc import calc
from swarm_hpc.core.dialogue import Final, Reply
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.core.strategies.base import CHECK, Strategy, StrategyRun
from swarm_hpc.core.strategies.tally import tally

CALC = ("write one line 'Calc: <expression>': a single arithmetic expression, from the numbers in the task, that "
        "computes the final answer (numbers, + - * / and parentheses only)")
CALC_INSTRUCTION = f"After your reasoning and before the answer line, {CALC}."
ANSWER_INSTRUCTION = (f"Think it through step by step in a few short lines. Then {CALC}. End with a line "
                      "'Answer: <number>'.")

def checked_tally(replies: list[Reply]) -> Final:
    """The vote over checked answers (see the module's docstring)."""
    voters = [r for r in replies if r.votes]
    calcs = {r.expert: c for r in voters if (c := calc(r.public)) is not None}
    if not calcs:
        return tally(replies)
    computed = {e: format_number(c.value) for e, c in calcs.items()}
    key = {r.expert: computed.get(r.expert) or answer_key(r.public) for r in voters}
    counts = Counter(key.values())
    confirmed = {computed[r.expert] for r in voters if r.expert in computed and answer_key(r.public) == computed[r.expert]}
    order = list(key.values())
    best = max(counts, key=lambda k: (counts[k], k in confirmed, k in computed.values(), -order.index(k)))
    who = next(e for e in key if key[e] == best)
    how = f"{counts[best]} of {len(voters)} checked answers agree"
    if computed.get(who) == best:
        return Final(f"Calc: {calcs[who].expression} = {best}\nAnswer: {best}", "vote", how)
    return Final(f"Answer: {best}", "vote", how)


class Verify(Strategy):
    name = "verify"
    own_instruction = ANSWER_INSTRUCTION

    def __init__(self, spec: SwarmSpec):
        super().__init__(spec)
        self.dialogue.echo_of_answers = False   # as in a vote: agreeing with a peer is a position

    @property
    def instruction(self) -> str:
        """The spec's instruction with the Calc line asked for, else the strategy's own."""
        return f"{self.spec.instruction} {CALC_INSTRUCTION}" if self.spec.instruction else ANSWER_INSTRUCTION

    @property
    def revise(self) -> str:
        return f"{CHECK} {self.instruction}"

    def run(self) -> StrategyRun:
        last = yield from self.parallel_rounds()
        return checked_tally(list(last.values()))
