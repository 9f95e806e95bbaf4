"""chat: a person talks to the swarm. Each message starts a round in which every expert answers it, seeing
what its peers said in the round before. Used by `swarm-hpc chat` (not chosen in a spec)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from swarm_hpc.core.dialogue import Final, Reply, Step
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.core.strategies.base import Strategy, StrategyRun

QUIT = {"", "/quit", "/exit"}


def read_stdin() -> str | None:
    """The next message from standard input (rank 0's, under mpiexec or srun --pty); None at the end."""
    print("\nyou> ", end="", flush=True)
    line = sys.stdin.readline()
    text = line.strip()
    return None if not line or text in QUIT else text


class Chat(Strategy):
    name = "chat"

    def __init__(self, spec: SwarmSpec, ask: Callable[[], str | None]):
        super().__init__(spec)
        self.ask = ask

    def run(self) -> StrategyRun:
        d = self.dialogue
        last: dict[str, Reply] = {}
        rnd = 0
        while (text := self.ask()) is not None:
            rnd += 1
            instruction = f"The user says: {text}\n\nAnswer the user in two or three sentences."
            turns = [d.after_round(n, list(last.values()), instruction) for n in d.names]
            last = yield Step(rnd, f"round {rnd}", turns, user=text)
            d.record(last)
        answered = [r for r in last.values() if r.answered and r.public]
        if not answered:
            return Final("", "none", "chat ended")
        return Final(answered[0].public, answered[0].expert, f"chat ended after {rnd} round(s); last answer of {answered[0].expert}")
