"""The strategy interface."""

from __future__ import annotations

from collections.abc import Generator

from swarm_hpc.core.dialogue import Dialogue, Final, Reply, Step
from swarm_hpc.core.spec import SwarmSpec

StrategyRun = Generator[Step, dict[str, Reply], Final]

ANSWER = "Answer in two or three sentences."
REVISE = "Consider their points and give your improved answer in two or three sentences."


class Strategy:
    name = "base"

    def __init__(self, spec: SwarmSpec):
        self.spec = spec
        self.dialogue = Dialogue(spec)

    def run(self) -> StrategyRun:
        raise NotImplementedError

    # shared building blocks ----------------------------------------------------------------------------------

    def parallel_rounds(self, first_instruction: str = ANSWER) -> Generator[Step, dict[str, Reply], dict[str, Reply]]:
        """`rounds` rounds in which every expert answers at once and then sees its peers' answers. Returns each
        expert's standing answer: its last reply, but where that only repeated (an echo or a loop), its newest
        real answer of an earlier round, so that one degenerate round does not erase an expert's position."""
        d = self.dialogue
        last: dict[str, Reply] = {}
        standing: dict[str, Reply] = {}
        for rnd in range(1, self.spec.rounds + 1):
            if rnd == 1:
                turns = [d.opening(n, first_instruction) for n in d.names]
            else:
                peers = list(last.values())
                turns = [d.after_round(n, peers, REVISE) for n in d.names]
            last = yield Step(rnd, f"round {rnd}", turns)
            d.record(last)
            standing = {n: standing[n] if r.flagged and n in standing and standing[n].answered else r
                        for n, r in last.items()}
        return standing

    def synthesis(self, replies: dict[str, Reply], what: str) -> Generator[Step, dict[str, Reply], Final]:
        """The synthesizer combines the last answers into the final one."""
        d = self.dialogue
        who = self.spec.synthesizer_name
        listing, saw = d.listing(list(replies.values()))
        prompt = (f"Task: {self.spec.task}\n\n{what}:\n{listing or '(no answers arrived)'}\n\n"
                  "Write the swarm's final answer: combine the best points in two or three sentences.")
        out = yield Step(self.spec.rounds + 1, "final", [d.fresh(who, prompt, saw)])
        r = out[who]
        if r.answered:
            return Final(r.public or r.content, who, f"synthesis by {who}")
        # the synthesizer failed: fall back to the longest answer of the last round, and say so
        best = max((x for x in replies.values() if x.answered), key=lambda x: len(x.public), default=None)
        if best is None:
            return Final("", "none", "no expert answered")
        return Final(best.public, best.expert, f"synthesizer {who} gave no answer ({r.status}); longest last answer")
