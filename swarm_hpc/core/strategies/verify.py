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


def checked(reply: Reply) -> str | None:
    """The answer a reply's Calc line computes (as the vote's key), or None without one that evaluates."""
    c = calc(reply.public)
    return format_number(c.value) if c is not None else None


def checked_tally(replies: list[Reply]) -> Final:
    """The vote over checked answers (see the module's docstring)."""
    voters = [r for r in replies if r.votes]
    keys = {r.expert: checked(r) for r in voters}
    computed = [r for r in voters if keys[r.expert] is not None]
    if not computed:
        return tally(replies)
    key = {r.expert: keys[r.expert] or answer_key(r.public) for r in voters}
    counts = Counter(key[r.expert] for r in voters)
    confirmed = {key[r.expert] for r in computed if answer_key(r.public) == keys[r.expert]}
    order = [key[r.expert] for r in voters]
    computed_keys = {keys[r.expert] for r in computed}
    best = max(counts, key=lambda k: (counts[k], k in confirmed, k in computed_keys, -order.index(k)))
    who = next(r for r in voters if key[r.expert] == best)
    c = calc(who.public)
    how = f"{counts[best]} of {len(voters)} checked answers agree"
    if c is not None and keys[who.expert] == best:
        return Final(f"Calc: {c.expression} = {best}\nAnswer: {best}", "vote", how)
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
