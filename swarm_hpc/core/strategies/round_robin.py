"""round-robin: one expert at a time, each seeing the whole conversation so far (AutoGen GroupChat's way);
the last message is the final answer. The sequential baseline of the benchmarks."""

from __future__ import annotations

from swarm_hpc.core.dialogue import Final, Reply, Step
from swarm_hpc.core.strategies.base import Strategy, StrategyRun


class RoundRobin(Strategy):
    name = "round-robin"

    def run(self) -> StrategyRun:
        d = self.dialogue
        spoken: list[Reply] = []
        for rnd in range(1, self.spec.rounds + 1):
            for name in d.names:
                mine = max((i for i, r in enumerate(spoken) if r.expert == name), default=-1)
                since = spoken[mine + 1:]  # everything said since this expert last spoke
                turn = d.opening(name, self.instruction, since) if mine < 0 else d.after_round(name, since, self.revise)
                out = yield Step(rnd, f"round {rnd}: {name}", [turn])
                d.record(out)
                spoken.append(out[name])
        last = next((r for r in reversed(spoken) if r.answered), None)
        if last is None:
            return Final("", "none", "no expert answered")
        return Final(last.public, last.expert, f"last message (by {last.expert})")
