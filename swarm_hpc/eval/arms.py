"""An eval's arms: the ways of answering that it compares, all on the same questions and the same experts.

    single:<expert>   that expert alone, greedy, one answer (all experts answer at once, in one run directory
                      `single`, since their answers are independent: the single arms cost one step together)
    sc:<expert>       that expert alone, self-consistency: as many sampled answers as the swarm has experts (the
                      same token budget as `vote`), then a vote: the fair single-machine baseline
    vote              every expert answers once; the vote decides
    debate            `rounds` debate rounds (at least 2), then a vote over the last round
    debate-synth      the same debate, then the synthesizer writes the final answer
    moa               mixture of agents (`rounds` layers), then the aggregator (the synthesizer)
    round-robin       one expert at a time, `rounds` times round; the last answer
    verify            every expert answers once with its arithmetic as a `Calc:` line; the checker computes the
                      lines and the vote is over the checked answers (swarm_hpc/core/strategies/verify.py)
    calc:<expert>     that expert alone with the checker: its own answer in the `verify` run, checked (the same
                      run, so these arms cost nothing more; they show how much of verify's gain is the checker's)
    program           every expert answers once with a short program; the checker runs the programs and the
                      vote is over what they compute (swarm_hpc/core/strategies/program.py)
    code:<expert>     that expert alone with a program: its own program in the `program` run, run by the checker

`single`, `sc`, `calc` and `code` alone mean one arm per expert. Each arm is a strategy on a copy of the spec whose task is
the question; the experts' models and personas are the spec's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from swarm_hpc.core.dialogue import Reply, Step
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.core.strategies import Strategy, get_strategy
from swarm_hpc.core.strategies.base import StrategyRun
from swarm_hpc.core.strategies.tally import tally
from swarm_hpc.core.turns import Sampling
from swarm_hpc.errors import UserError

# what every arm asks, unless the spec has its own `instruction`: the format swarm_hpc/core/answers.py reads
INSTRUCTION = ("Think it through step by step in a few short lines, then end with a line "
               "'Answer: <your answer>' (just the number or the few words of the answer).")
DEFAULT_ARMS = "single,sc,vote,debate"
SWARM_ARMS = ("vote", "debate", "debate-synth", "moa", "round-robin", "verify", "program")
PER_EXPERT = ("single", "sc", "calc", "code")
SHARED_RUN = {"single": "single", "calc": "verify", "code": "program"}   # per-expert arms read their expert's reply in this run
CHECKED = ("calc", "verify", "code", "program")
GREEDY = Sampling(0.0, 1)   # how a single:<expert> arm answers


@dataclass(frozen=True)
class Arm:
    name: str                 # as written in results.json: single:alice, sc:alice, vote, debate, ...
    kind: str                 # single, sc, calc, code, or one of SWARM_ARMS
    expert: str | None = None

    @property
    def slug(self) -> str:
        """A folder name for the arm's run directories (the single arms share one; calc and code arms read verify's
        and program's)."""
        return SHARED_RUN.get(self.kind) or re.sub(r"[^A-Za-z0-9._-]", "-", self.name)

    @property
    def checked(self) -> bool:
        """Its answers are graded as the checker computes them (swarm_hpc/core/strategies/verify.py)."""
        return self.kind in CHECKED

    @property
    def own_reply(self) -> str | None:
        """The expert whose own reply in the shared run is this arm's answer (single, calc and code arms)."""
        return self.expert if self.kind in SHARED_RUN else None

    def spec(self, base: SwarmSpec, task: str) -> SwarmSpec:
        """The spec this arm runs for one question."""
        update: dict[str, object] = {"task": task, "instruction": base.instruction or INSTRUCTION, "routes": []}
        if self.kind == "sc" and self.expert is not None:
            update |= {"experts": [base.expert(self.expert)], "synthesizer": None}
        if self.kind == "single":
            update |= {"strategy": "vote", "rounds": 1}
        elif self.kind == "sc":
            update |= {"strategy": "self-consistency", "rounds": len(base.experts)}
        elif self.kind == "vote":
            update |= {"strategy": "vote", "rounds": 1}
        elif self.kind in ("verify", "calc", "program", "code"):
            update |= {"strategy": SHARED_RUN.get(self.kind, self.kind), "rounds": 1}
        elif self.kind in ("debate", "debate-synth"):
            update |= {"strategy": "debate", "rounds": max(2, base.rounds),
                       "final": "vote" if self.kind == "debate" else "synthesis"}
        elif self.kind == "moa":   # the aggregator ends it, whatever the spec's own `final` is
            update |= {"strategy": "moa", "final": "synthesis"}
        else:
            update |= {"strategy": self.kind}
        return base.model_copy(update=update)

    def strategy(self, spec: SwarmSpec) -> Strategy:
        return Single(spec) if self.kind == "single" else get_strategy(spec.strategy)(spec)


class Single(Strategy):
    """Every expert alone: one greedy answer each, all at once; each single:<expert> arm reads its own."""

    name = "single"

    def run(self) -> StrategyRun:
        d = self.dialogue
        turns = [d.fresh(n, f"Task: {self.spec.task}\n\n{self.instruction}", [], GREEDY) for n in d.names]
        out: dict[str, Reply] = yield Step(1, "answer", turns)
        return tally(list(out.values()))


def parse_arms(text: str, spec: SwarmSpec, where: str = "--arms") -> list[Arm]:
    """`--arms` as Arms; an unknown arm or expert is one line with the fix."""
    names = spec.expert_names
    arms: list[Arm] = []
    for item in (t.strip() for t in text.split(",")):
        kind, _, expert = item.partition(":")
        if kind in PER_EXPERT:
            for e in ([expert] if expert else names[:1] if kind == "sc" else names):
                if e not in names:
                    raise UserError(where, f"arm {item!r}: no expert named {e!r}", f"the experts are {', '.join(names)}")
                arms.append(Arm(f"{kind}:{e}", kind, e))
        elif kind in SWARM_ARMS and not expert:
            arms.append(Arm(kind, kind))
        else:
            raise UserError(where, f"unknown arm {item!r}",
                            "use single[:EXPERT], sc[:EXPERT], calc[:EXPERT], code[:EXPERT], " + ", ".join(SWARM_ARMS) + f" (default {DEFAULT_ARMS})")
    unique = list(dict.fromkeys(arms))
    if not unique:
        raise UserError(where, "no arms given", f"e.g. --arms {DEFAULT_ARMS}")
    return unique
