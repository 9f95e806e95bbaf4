"""moa (mixture of agents): layers of proposers, each seeing all answers of the layer before; an aggregator
(the spec's synthesizer) writes the final answer from the last layer."""

from __future__ import annotations

from swarm_hpc.core.dialogue import Reply, Step
from swarm_hpc.core.strategies.base import Strategy, StrategyRun


class MixtureOfAgents(Strategy):
    name = "moa"

    def run(self) -> StrategyRun:
        d = self.dialogue
        last: dict[str, Reply] = {}
        for layer in range(1, self.spec.rounds + 1):
            if layer == 1:
                turns = [d.fresh(n, f"Task: {self.spec.task}\n\n{self.instruction}", []) for n in d.names]
            else:
                listing, saw = d.listing(list(last.values()))
                prompt = (f"Task: {self.spec.task}\n\nResponses from the previous layer:\n{listing}\n\n"
                          "Critically combine them into one better answer"
                          + (f". {self.spec.instruction}" if self.spec.instruction else " in two or three sentences."))
                turns = [d.fresh(n, prompt, saw) for n in d.names]
            last = yield Step(layer, f"layer {layer}", turns)
            d.record(last, in_history=False)
        return (yield from self.conclude(last, "Responses from the last layer"))
