"""The strategy interface."""

from __future__ import annotations

import re
from collections.abc import Generator

from swarm_hpc.core.dialogue import Dialogue, Final, Reply, Step
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.core.strategies.tally import tally

StrategyRun = Generator[Step, dict[str, Reply], Final]

ANSWER = "Answer in two or three sentences."
# after seeing the peers: small models agree too easily, so the prompt asks them to check, not to merge
CHECK = "Check their answers against yours step by step. If someone made a mistake (you too), correct it."
REVISE = "Consider their points and give your improved answer in two or three sentences."


class Strategy:
    name = "base"
    own_instruction = ANSWER   # how this strategy asks for an answer when the spec sets no `instruction`

    def __init__(self, spec: SwarmSpec):
        self.spec = spec
        self.dialogue = Dialogue(spec)

    @property
    def instruction(self) -> str:
        """The line that asks each expert for its answer: the spec's `instruction`, else the strategy's own."""
        return self.spec.instruction or self.own_instruction

    @property
    def revise(self) -> str:
        """The line that asks for a revised answer after the peers' answers."""
        return f"{CHECK} {self.spec.instruction}" if self.spec.instruction else REVISE

    def run(self) -> StrategyRun:
        raise NotImplementedError

    # shared building blocks ----------------------------------------------------------------------------------

    def parallel_rounds(self) -> Generator[Step, dict[str, Reply], dict[str, Reply]]:
        """`rounds` rounds in which every expert answers at once and then sees its peers' answers. Returns each
        expert's standing answer: its last reply, but where that only repeated without stating an answer (a loop,
        an echo of the task), its newest answer of an earlier round, so that one degenerate round does not erase
        an expert's position. An echo that states an answer is a position (Reply.votes)."""
        d = self.dialogue
        last: dict[str, Reply] = {}
        standing: dict[str, Reply] = {}
        for rnd in range(1, self.spec.rounds + 1):
            if rnd == 1:
                turns = [d.opening(n, self.instruction) for n in d.names]
            else:
                peers = list(last.values())
                turns = [d.after_round(n, peers, self.revise) for n in d.names]
            last = yield Step(rnd, f"round {rnd}", turns)
            d.record(last)
            standing = {n: standing[n] if r.flagged and not r.votes and n in standing and standing[n].votes else r
                        for n, r in last.items()}
        return standing

    def conclude(self, replies: dict[str, Reply], what: str) -> Generator[Step, dict[str, Reply], Final]:
        """The final answer from the last answers, as the spec's `final` says: a synthesis, or a vote."""
        if self.spec.final == "vote":
            return tally(list(replies.values()))
        return (yield from self.synthesis(replies, what))

    def synthesis(self, replies: dict[str, Reply], what: str) -> Generator[Step, dict[str, Reply], Final]:
        """The synthesizer combines the last answers into the final one."""
        d = self.dialogue
        who = self.spec.synthesizer_name
        listing, saw = d.listing(list(replies.values()))
        prompt = (f"Task: {self.spec.task}\n\n{what}:\n{listing or '(no answers arrived)'}\n\n"
                  "Write the swarm's final answer: combine the best points"
                  + (f". {self.spec.instruction}" if self.spec.instruction else " in two or three sentences."))
        out = yield Step(self.spec.rounds + 1, "final", [d.fresh(who, prompt, saw)])
        r = out[who]
        if r.answered:
            return Final(unwrap(r.public or r.content), who, f"synthesis by {who}")
        # the synthesizer failed: fall back to the longest answer of the last round, and say so
        best = max((x for x in replies.values() if x.answered), key=lambda x: len(x.public), default=None)
        if best is None:
            return Final("", "none", "no expert answered")
        return Final(best.public, best.expert, f"synthesizer {who} gave no answer ({r.status}); longest last answer")


# "[swarm] ... [/swarm]": the answers it combined are listed as "[name] text", and small models wrap theirs alike
WRAPPED = re.compile(r"\A\[([\w -]{1,40})\]\s*(.+?)\s*\[/\1\]\Z", re.DOTALL)


def unwrap(text: str) -> str:
    """A final answer without the tag pair a synthesizer may have put around all of it."""
    m = WRAPPED.match(text.strip())
    return m.group(2) if m else text
